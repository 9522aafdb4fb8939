"""Skip stage: rows of erased subjects (the deny-list, consulted at read time) and rows
this model already embedded (same id, same fingerprint) go no further, which keeps erased
subjects out and makes re-runs cheap and resumed runs exact."""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from pixlake.platform.pipeline.rows import ERASED, OK, SKIPPED, table


class SkipExisting:
    """Callable stage: marks denied rows, rows already in the store and repeats within a block as skipped.

    Args:
        store: a :class:`~pixlake.platform.pipeline.store_actor.StoreProxy`.
        model: encoder fingerprint of this job.
        governance: the governance actor proxy (deny-list).
    """

    def __init__(self, store, model: str, governance):
        self.store = store
        self.model = model
        self.governance = governance

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        subjects: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            if r["status"] == OK:
                subjects[r["tenant"]].add(r["subject"])
        denied = {(t, s) for t, subs in subjects.items() for s in self.governance.denied(t, sorted(subs))}
        ok_ids = [r["id"] for r in rows if r["status"] == OK]
        existing = self.store.existing_ids(ok_ids, self.model) if ok_ids else set()
        seen: set[str] = set()
        for r in rows:
            if r["status"] != OK:
                continue
            if (r["tenant"], r["subject"]) in denied:
                r["status"], r["reason"], r["image"] = SKIPPED, ERASED, b""
            elif r["id"] in existing:
                r["status"], r["reason"], r["image"] = SKIPPED, "already embedded", b""
            elif r["id"] in seen:
                r["status"], r["reason"], r["image"] = SKIPPED, "duplicate in source", b""
            seen.add(r["id"])
        return table(rows, [("image", pa.binary())])
