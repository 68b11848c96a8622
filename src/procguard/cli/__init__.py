"""The ``procguard`` command line: one module per group of subcommands."""
