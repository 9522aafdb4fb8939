"""Skip stage: rows of erased subjects (the deny-list, consulted at read time), rows this
model already embedded (same id, same fingerprint) and repeats of an image within the run go
no further, which keeps erased subjects out, makes re-runs cheap and resumed runs exact, and
embeds each image once."""

from __future__ import annotations

import os
from collections import defaultdict

import pyarrow as pa

from pixlake.platform.pipeline.claims import token_of
from pixlake.platform.pipeline.rows import ERASED, OK, SKIPPED, table

DUPLICATE = "duplicate in source"
FAULT_ENV = "PIXLAKE_FAULT_AFTER_CLAIM"  # tests: a file path; the first task to create it dies after claiming


def _task_id() -> str:
    """The running Ray task's id ("" outside one): a retry or re-execution keeps it."""
    import ray

    return (ray.get_runtime_context().get_task_id() or "") if ray.is_initialized() else ""


class SkipExisting:
    """Callable stage: marks denied rows, rows already in the store and repeats as skipped.

    Args:
        store: the job's store handle (:func:`~pixlake.platform.pipeline.job_store.start_job_store`).
        model: encoder fingerprint of this job.
        governance: the governance actor proxy (deny-list).
        claims: the job's :class:`~pixlake.platform.pipeline.claims.Claims` when its tasks
            write concurrently (a server): a repeat in another block is skipped here. None on
            milvus-lite, whose one store actor counts such a repeat as skipped when it writes.
    """

    def __init__(self, store, model: str, governance, claims=None):
        self.store = store
        self.model = model
        self.governance = governance
        self.claims = claims
        self._task, self._batches = None, 0  # the Ray task running, and its batches so far

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        subjects: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            if r["status"] == OK:
                subjects[r["tenant"]].add(r["subject"])
        denied = {(t, s) for t, subs in subjects.items() for s in self.governance.denied(t, sorted(subs))}
        ok_ids = [r["id"] for r in rows if r["status"] == OK]
        # Bounded: a row written in the last seconds may be missed and embedded again, but the
        # write's own Strong check (insert_missing) still stores and counts it once; a Strong
        # read here waited ~380 ms per batch on a server.
        existing = self.store.existing_ids(ok_ids, self.model, consistency="Bounded") if ok_ids else set()
        seen: set[str] = set()
        for r in rows:
            if r["status"] != OK:
                continue
            if (r["tenant"], r["subject"]) in denied:
                r["status"], r["reason"], r["image"] = SKIPPED, ERASED, b""
            elif r["id"] in existing:
                r["status"], r["reason"], r["image"] = SKIPPED, "already embedded", b""
            elif r["id"] in seen:
                r["status"], r["reason"], r["image"] = SKIPPED, DUPLICATE, b""
            seen.add(r["id"])
        if self.claims is not None:
            self._claim(rows)
        return table(rows, [("image", pa.binary())])

    def _claim(self, rows: list[dict]) -> None:
        task = _task_id()
        if task != self._task:
            self._task, self._batches = task, 0
        self._batches += 1
        todo = [(n, r) for n, r in enumerate(rows) if r["status"] == OK]
        if not todo:
            return
        owned = self.claims.claim([r["id"] for _, r in todo], [token_of(task, self._batches, n) for n, _ in todo])
        _fault_after_claim()
        for _, r in todo:
            if r["id"] not in owned:
                r["status"], r["reason"], r["image"] = SKIPPED, DUPLICATE, b""


def _fault_after_claim() -> None:
    """Tests: die (a lost worker) right after a claim, once per :data:`FAULT_ENV` file."""
    path = os.environ.get(FAULT_ENV)
    if not path:
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(137)
