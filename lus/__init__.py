"""The `lus` command: dispatch to the subcommands, and the commands that compose the packages."""
