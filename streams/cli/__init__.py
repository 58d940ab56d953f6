"""The `streamscore` command line, one module per command group, plus the demo and the benchmark."""
