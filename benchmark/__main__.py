from benchmark.cli import entry_point

entry_point()
