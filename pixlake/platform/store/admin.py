"""The database around one store's collection: its other pixlake collections, aliases
(the live name of a collection with versions, :mod:`pixlake.platform.lifecycle`),
compaction and index builds.

:class:`CollectionAdmin` is a base of :class:`~pixlake.platform.store.client.MilvusStore`
and works through its client (``_client``, ``collection``, ``backend``, ``describe``).
"""

from __future__ import annotations

import time
from typing import Iterator, Optional, Sequence

from pixlake.platform.settings import LITE
from pixlake.platform.store import local_index
from pixlake.platform.store.retry import store_call
from pixlake.platform.store.schema import is_pixlake_collection


class CollectionAdmin:
    """Operations on the store's database beyond its own rows."""

    @store_call
    def collections(self) -> list[str]:
        """Every pixlake collection in this database (those with the record schema)."""
        return sorted(name for name in self._client.list_collections() if is_pixlake_collection(self._client, name))

    def compact(self, collections: Optional[Sequence[str]] = None, timeout: float = 120.0) -> dict[str, str]:
        """Flush and compact ``collections`` of this database (default: this one), so deleted
        rows leave the sealed segments; returns each collection's outcome: ``done``, or
        ``scheduled`` when still running at the timeout (the server finishes it on its own).

        A server compacts in the background and each job takes 10-20 s here however small
        it is, so every job is started first and all are awaited together: compacting N
        collections costs one wait, not N.

        Raises:
            StoreError: as any store call, after retrying a server that is away; an erasure
                then stops at its compact step and resumes there when run again.
        """
        names = [self.collection] if collections is None else list(collections)
        jobs = {name: self._start_compaction(name) for name in names}
        done, deadline = [], time.monotonic() + timeout
        while jobs and time.monotonic() < deadline:
            for name, job in list(jobs.items()):
                if self._compaction_completed(job):
                    done.append(name)
                    del jobs[name]
            if jobs:
                time.sleep(0.5)
        return {**{name: "done" for name in done}, **{name: "scheduled" for name in jobs}}

    @store_call
    def _start_compaction(self, name: str) -> int:
        self._client.flush(name)
        return self._client.compact(name)

    @store_call
    def _compaction_completed(self, job: int) -> bool:
        return str(self._client.get_compaction_state(job)).lower().endswith("completed")

    @store_call
    def wait_for_index(self, timeout: float = 300.0) -> dict:
        """Flush, then wait until a server's index covers every row (milvus-lite: at once).

        Returns:
            :meth:`describe` once ``pending_index_rows`` is 0 (or at the timeout).
        """
        if self.backend == LITE:
            return self.describe()
        self._client.flush(self.collection)
        deadline = time.monotonic() + timeout
        while True:
            d = self.describe()
            # describe_index says "Finished" while rows are still pending; count instead
            if d.get("pending_index_rows", 0) == 0 and d.get("indexed_rows", 0) >= d["rows"] or time.monotonic() > deadline:
                return d
            time.sleep(0.5)

    def for_collection(self, collection: str) -> "MilvusStore":
        """Another collection of the same database (a new store; close it when done)."""
        return type(self)(self.uri, collection, self.index_plan, self.retry_deadline_s, self.search_consistency)

    def each_collection(self) -> Iterator["MilvusStore"]:
        """A store for every pixlake collection of this database, this one included; the
        others are closed as the iteration moves on (erasure, export and re-key reach them all)."""
        for name in self.collections():
            other = self if name == self.collection else self.for_collection(name)
            try:
                yield other
            finally:
                if other is not self:
                    other.close()

    # --- aliases (the live name of a collection with versions: pixlake.platform.lifecycle) ---

    @store_call
    def alias_target(self, name: str) -> Optional[str]:
        """The collection the alias ``name`` points at, or None when ``name`` is no alias."""
        try:
            return self._client.describe_alias(name)["collection_name"]
        except Exception as e:
            # milvus-lite: code 100 "alias ... does not exist"; a 2.3 server: 1600 "alias not found"
            if getattr(e, "code", None) in (100, 1600):
                return None
            raise

    @store_call
    def point_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one atomic step (creating the alias if new)."""
        if self.alias_target(alias) is None:
            self._client.create_alias(collection, alias)
        else:
            self._client.alter_alias(collection, alias)

    @store_call
    def rename(self, old: str, new: str) -> None:
        """Rename a collection of this database (its rows, index and id stay)."""
        self._client.rename_collection(old, new)
        local_index.dropped(self.uri, old)  # its rows now live under another name

