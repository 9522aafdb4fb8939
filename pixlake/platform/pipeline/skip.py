"""Skip stage: rows this model already embedded (same id, same fingerprint) are not
decoded or embedded again, which makes re-runs cheap and resumed runs exact."""

from __future__ import annotations

import pyarrow as pa

from pixlake.platform.pipeline.rows import OK, SKIPPED, table


class SkipExisting:
    """Callable stage: marks rows already in the store, and repeats within a block, as skipped.

    Args:
        store: a :class:`~pixlake.platform.store_actor.StoreProxy`.
        model: encoder fingerprint of this job.
    """

    def __init__(self, store, model: str):
        self.store = store
        self.model = model

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        ok_ids = [r["id"] for r in rows if r["status"] == OK]
        existing = self.store.existing_ids(ok_ids, self.model) if ok_ids else set()
        seen: set[str] = set()
        for r in rows:
            if r["status"] != OK:
                continue
            if r["id"] in existing:
                r["status"], r["reason"], r["image"] = SKIPPED, "already embedded", b""
            elif r["id"] in seen:
                r["status"], r["reason"], r["image"] = SKIPPED, "duplicate in source", b""
            seen.add(r["id"])
        return table(rows, [("image", pa.binary())])
