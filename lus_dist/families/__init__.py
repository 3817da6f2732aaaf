"""The built-in model families: plug-ins of the engine's Family contract, listed in engine/registry.py."""
