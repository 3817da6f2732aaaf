"""The core library: shards, models, the training engine, the model families and their evaluation."""
