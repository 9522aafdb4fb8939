"""Data-subject rights and key rotation over the whole database: GDPR erasure
(:mod:`.erasure`), export, re-keying and re-encrypting copies (:mod:`.portability`).

These orchestrate the store, the governance and the sources together, so they sit above
both :mod:`pixlake.platform.store` and :mod:`pixlake.platform.governance` (which never
imports the store). :func:`open_governed_store` opens the pair they work on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from pixlake.platform.collection import open_collection
from pixlake.platform.governance.service import Governance
from pixlake.platform.settings import Settings

if TYPE_CHECKING:
    from pixlake.platform.store import MilvusStore


@contextmanager
def open_governed_store(settings: Settings) -> Iterator[tuple[MilvusStore, Governance]]:
    """The configured store with its governance, both closed on exit (erasure, export,
    re-key); whatever fails while opening closes what was already open."""
    with open_collection(settings) as collection:
        yield collection.store, collection.governance
