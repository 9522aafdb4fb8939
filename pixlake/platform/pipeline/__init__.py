"""The bulk embedding pipeline, one module per stage (docs/architecture.md, "Data flow"):

read (:mod:`pixlake.platform.sources.items`) → load → skip → decode → embed → write (sink) → report; ``job`` composes them.
"""
