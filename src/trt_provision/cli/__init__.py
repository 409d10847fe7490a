"""Command-line interface: one module per subcommand, each importing only downward."""
