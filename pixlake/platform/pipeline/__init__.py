"""The bulk embedding pipeline, one module per stage (DESIGN.md "Data flow"):

read (sources) → load → skip → decode → embed → write (sink) → report; ``job`` composes them.
"""
