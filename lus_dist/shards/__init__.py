"""The HDF5 shard dataset: its format, manifest, split assignment, reader, sampler and partition."""
