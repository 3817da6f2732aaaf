"""Raw LUS data into HDF5 shards: ingest, the synthetic phantom, pack, finalize and validate."""
