"""Governance: searchable vector encryption, sealed sources, per-subject keys, the erasure
ledger and the audit log (docs/architecture.md "Governance").

It never imports the store. Key material is handled here and, for erasure, export and
re-keying (which need the store too), in :mod:`pixlake.platform.compliance` above it.
"""
