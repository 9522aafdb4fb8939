"""The store as an embed job's stages reach it, chosen by the backend.

- milvus-lite: one owner actor (:func:`~.store_actor.start_store_actor`), because its file
  lock admits one process; every lookup and write goes through it, one at a time, which also
  makes ``insert_missing``'s check-and-write atomic.
- A Milvus server: no actor on the per-row path. A :class:`TaskStore` travels with the stages
  and each Ray worker process opens its own client on first use, reused by every batch it
  runs; the job's claims (:mod:`.claims`) give each id one writer, which keeps the report's
  counts exact without serialising the writes.

Both answer the same calls (``existing_ids``, ``insert_missing``, ``delete``, and on the
driver ``ensure_collection``, ``flush``, ``count``, ``retry_count``, ``shutdown``).
"""

from __future__ import annotations

from typing import Any, Optional

from pixlake.platform.store import LITE, MilvusStore, backend_of

_open: dict[str, MilvusStore] = {}  # this process's clients, by the settings they were opened with


def writes_in_tasks(settings: Any) -> bool:
    """Whether the job's tasks look up and write rows themselves (a server, unless
    ``job.store_actor``) or through the store actor (milvus-lite)."""
    return backend_of(settings.store.db) != LITE and not settings.job.store_actor


class TaskStore:
    """A picklable handle whose calls run on this process's own client of the configured store.

    Args:
        settings: the job's :class:`~pixlake.platform.settings.StoreSettings`.
        metrics: the run's metrics actor, told of calls retried while the server was away
            (the report's ``store_retries``), or None.
    """

    def __init__(self, settings: Any, metrics: Optional[Any] = None):
        self.settings = settings
        self.metrics = metrics
        self._key = settings.model_dump_json()  # which of this process's clients it uses

    def with_metrics(self, metrics: Any) -> "TaskStore":
        """This handle, reporting its retries to ``metrics``."""
        return TaskStore(self.settings, metrics)

    def _store(self) -> MilvusStore:
        if self._key not in _open:
            _open[self._key] = MilvusStore.configured(self.settings)
        return _open[self._key]

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            store = self._store()
            before = store.retries
            try:
                return getattr(store, method)(*args, **kwargs)
            finally:
                if self.metrics is not None and store.retries > before:
                    self.metrics.count_store_retries(store.retries - before)

        return call

    def shutdown(self) -> None:
        """Close this process's client (the driver's, at the job's end)."""
        store = _open.pop(self._key, None)
        if store is not None:
            store.close()


def start_job_store(settings: Any):
    """The job's store handle: the owner actor on milvus-lite (or with ``job.store_actor``),
    a :class:`TaskStore` on a server.

    Raises:
        StoreError: the store cannot be opened.
    """
    from pixlake.platform.pipeline.store_actor import start_store_actor

    if not writes_in_tasks(settings):
        return start_store_actor(settings.store)
    store = TaskStore(settings.store)
    store.exists()  # opens the driver's client now: an unreachable server fails before the job starts
    return store
