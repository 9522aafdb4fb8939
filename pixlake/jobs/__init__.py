"""Ray job entrypoints, each runnable as ``python -m pixlake.jobs.<name>``."""
