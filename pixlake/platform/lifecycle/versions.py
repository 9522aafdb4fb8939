"""Model lifecycle: versions of a collection behind one live name, switched atomically.

The live name (``images``) is a Milvus alias; its versions are collections ``images_v1``,
``images_v2``... :func:`reindex` builds the next version (re-embedding with a new encoder,
or rebuilding from the decrypted rows when only the index plan or the encryption's beta
changes), evaluates the current and the candidate configuration on a labelled holdout, and
promotes the candidate by pointing the alias at it, only if quality holds.
:func:`rollback` points it back. Old versions stay (rollback needs them) and erasure
reaches them like any collection.

A collection made before it had versions is a plain collection named like the live name;
the first promotion adopts it: renames it to ``<name>_v1`` and creates the alias over it
(two metadata calls; :class:`LiveCollection` readers ride over the gap).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Optional

from pixlake.platform import records as R
from pixlake.platform.errors import ConfigError, StoreError
from pixlake.platform.store import MilvusStore

log = logging.getLogger(__name__)

FOLLOW_S = 1.0  # how often a serving reader looks where the live name points
_GAP_WAIT_S = 5.0  # how long a reader waits for a live name being adopted to come back


def resolve(store: MilvusStore, live: str) -> Optional[str]:
    """The collection ``live`` names now: the alias's target, ``live`` itself when it is a
    plain collection, or None."""
    target = store.alias_target(live)
    if target is not None:
        return target
    return live if store.exists(live) else None  # one cheap call: serving replicas ask every second


def versions(store: MilvusStore, live: str) -> list[str]:
    """The versions of ``live`` (``<live>_v<N>``), oldest first."""
    pattern = re.compile(rf"^{re.escape(live)}_v(\d+)$")
    found = [(int(m.group(1)), name) for name in store.collections() if (m := pattern.match(name))]
    return [name for _, name in sorted(found)]


def _number(live: str, name: str) -> int:
    m = re.match(rf"^{re.escape(live)}_v(\d+)$", name)
    return int(m.group(1)) if m else 0


def next_version(store: MilvusStore, live: str) -> str:
    """The name of the next version of ``live`` (``_v2`` after a plain collection, which becomes ``_v1``)."""
    numbers = [_number(live, v) for v in versions(store, live)]
    return f"{live}_v{max(numbers, default=1) + 1}"


def promote(store: MilvusStore, live: str, target: str) -> dict:
    """Point the live name at ``target`` in one atomic alias switch (adopting a plain
    collection named ``live`` as ``<live>_v1`` first).

    Returns:
        ``{"collection": live, "from": previous target or None, "to": target}``.

    Raises:
        StoreError: ``target`` is not a pixlake collection of this database.
    """
    if target not in store.collections():
        raise StoreError(f"cannot promote {target}: no such pixlake collection in {store.uri}")
    previous = resolve(store, live)
    if previous == live:  # a plain collection: adopt it as version 1, then switch
        first = f"{live}_v1"
        if first in store.collections():
            raise StoreError(f"cannot adopt {live} as {first}: a collection of that name exists")
        store.rename(live, first)
        store.point_alias(live, first)
        previous = first
    store.point_alias(live, target)
    log.info("%s now serves %s (was %s)", live, target, previous)
    return {"collection": live, "from": previous, "to": target}


def rollback(store: MilvusStore, live: str, to: Optional[str] = None) -> dict:
    """Point the live name back: at ``to``, or at the newest version older than the current one.

    Raises:
        StoreError: ``live`` is not an alias, or there is no older version.
    """
    current = store.alias_target(live)
    if current is None:
        raise StoreError(f"{live} has no versions to roll back to (it is not a live alias)")
    if to is None:
        older = [v for v in versions(store, live) if _number(live, v) < _number(live, current)]
        if not older:
            raise StoreError(f"{live} serves {current}, its oldest version: nothing to roll back to")
        to = older[-1]
    return promote(store, live, to)


class LiveCollection:
    """A serving reader of a live name that follows its switches without failing a query.

    It holds the collection the live name pointed at when it opened (a physical name), and
    at most every :data:`FOLLOW_S` looks again: a new target embedded by the same encoder is
    followed; one of another encoder is not (this replica's query encoder cannot search it:
    ``stale`` says so until Serve is redeployed with the new model). A query that finds its
    collection gone (the adoption's rename) waits for the live name to resolve and retries.

    Args:
        opened: a :class:`~pixlake.platform.query.QueryCollection` over the live name.
    """

    def __init__(self, opened: Any):
        self.live = opened.store.collection
        self.governance = opened.governance
        self._lock = threading.Lock()
        target = resolve(opened.store, self.live) or self.live
        self.current = opened if target == self.live else self._reader(opened.store, target, opened.governance)
        if self.current is not opened:
            opened.store.close()
        self.model = self.current.store.model()
        self.stale: Optional[str] = None  # the newer target this reader cannot follow
        self._looked = time.monotonic()
        self._retired: list = []  # readers switched away from (in-flight queries may still use them)

    @staticmethod
    def _reader(store: MilvusStore, collection: str, governance: Any):
        from pixlake.platform.query import QueryCollection

        reader = store.for_collection(collection)
        if store.local_index_min_rows is not None:  # the version followed is searched alike
            reader.keep_local_index(store.local_index_min_rows)
        return QueryCollection(reader, governance)

    def follow(self, force: bool = False) -> None:
        """Look where the live name points (at most every FOLLOW_S unless ``force``) and switch to it when it can."""
        now = time.monotonic()
        if not force and now - self._looked < FOLLOW_S:
            return
        with self._lock:
            self._looked = now
            store = self.current.store
            target = resolve(store, self.live)
            if target is None or target in (store.collection, self.live, self.stale):
                return
            reader = self._reader(store, target, self.governance)
            model = reader.store.model()
            if model not in (None, self.model):
                reader.store.close()
                self.stale = target
                log.warning("%s now points at %s, embedded by %s; this replica's encoder makes %s and keeps "
                            "serving %s: redeploy Serve with the new model", self.live, target, model, self.model,
                            store.collection)
                return
            self._retired.append(self.current)
            self.current, self.stale = reader, None
            log.info("%s: following the switch to %s", self.live, target)

    def search(self, *args: Any, **kwargs: Any) -> list[dict]:
        """:meth:`QueryCollection.search` on the live collection."""
        return self._read("search", *args, **kwargs)

    def similar(self, *args: Any, **kwargs: Any) -> Optional[list[dict]]:
        """:meth:`QueryCollection.similar` on the live collection."""
        return self._read("similar", *args, **kwargs)

    def item(self, tenant: str, item_id: str) -> Optional[dict]:
        """:meth:`QueryCollection.item` on the live collection."""
        return self._read("item", tenant, item_id)

    def _read(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.follow()
        try:
            return getattr(self.current, method)(*args, **kwargs)
        except StoreError:
            pass  # the collection may have been renamed under us (an adoption): look, then once more
        deadline = time.monotonic() + _GAP_WAIT_S
        while resolve(self.current.store, self.live) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.follow(force=True)
        return getattr(self.current, method)(*args, **kwargs)

    def describe(self) -> dict:
        """The live name, the version served, and (when behind) the version it cannot follow."""
        self.follow()
        return {**self.current.describe(), "collection": self.live, "version": self.current.store.collection,
                "stale_behind": self.stale}

    @property
    def store(self) -> MilvusStore:
        """The store of the version served now."""
        return self.current.store

    def close(self) -> None:
        """Close every reader, then the governance."""
        for reader in [*self._retired, self.current]:
            reader.store.close()
        self.governance.close()


def tenants(store: MilvusStore) -> list[str]:
    """Every tenant with rows in the collection (a scan of one short field)."""
    return sorted({r[R.TENANT] for page in store.pages("", (R.TENANT,)) for r in page})


def check_live_name(live: str) -> None:
    """Refuse a live name that is itself a version name (``images_v2``): versions are not renamed."""
    if re.search(r"_v\d+$", live):
        raise ConfigError(f"{live} names a version; reindex and roll back its live name ({live.rsplit('_v', 1)[0]})")
