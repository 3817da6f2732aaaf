"""Outside files, read with errors that name them: typed YAML configs and LUS clips of any container."""
