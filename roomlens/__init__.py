"""The `roomlens` command line: thin subcommands over the `search`, `indexer` and `api` packages."""
