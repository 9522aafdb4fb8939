"""Governance: searchable vector encryption, sealed sources, per-subject keys, GDPR erasure.

See DESIGN.md "Governance". Nothing outside this package touches key material directly.
"""
