"""Write stage: a Ray Data datasink that upserts embedded rows into Milvus in batches
and returns, per write task, what it wrote, skipped and rejected.

The deny-list is consulted again around every write: rows of a subject denied before the
write are dropped, and rows of a subject denied while the write ran are deleted again.
An erasure adds its subject to the deny-list before it deletes, so either its delete sees
the row or this re-check sees the denial: a run in flight never brings a subject back.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any, Iterable

from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from pixlake.platform import records as R
from pixlake.platform.pipeline.near import matched_id
from pixlake.platform.pipeline.rows import ERASED, OK, REJECTED, SKIPPED


def to_record(row: dict, model: str) -> dict:
    """Turn a pipeline row into a store record (docs/architecture.md, "Records")."""
    return {
        R.ID: row["id"],
        R.TENANT: row["tenant"],
        R.SUBJECT: row["subject"],
        R.CONTENT_HASH: row["content_hash"],
        R.SOURCE: row["source"],
        R.MODEL: model,
        R.META: json.loads(row["meta"] or "{}"),
        R.NONCE: row["nonce"],
        R.KEY_ID: row["key_id"],
        R.VECTOR: [float(x) for x in row["vector"]],
    }


class MilvusDatasink(Datasink):
    """Idempotent writes (through the store actor on milvus-lite, from the write tasks
    themselves on a server); totals land in :attr:`totals` on the driver.

    Args:
        store: the job's store handle (:func:`~pixlake.platform.pipeline.job_store.start_job_store`).
        model: encoder fingerprint written into every row.
        max_rejections_listed: rejections kept one by one (counts stay exact).
        governance: the governance actor proxy (deny-list).
        metrics: the run's metrics actor (each write task's wall time), or None.
        batch_rows: rows per store write (``job.write_batch_rows``).
    """

    def __init__(self, store, model: str, max_rejections_listed: int, governance, metrics=None, batch_rows: int = 512):
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.store = store
        self.governance = governance
        self.model = model
        self.max_rejections_listed = max_rejections_listed
        self.totals: dict[str, Any] = {}

    @property
    def min_rows_per_write(self) -> int:
        return self.batch_rows

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        started, rows = time.perf_counter(), 0
        result = {"embedded": 0, "skipped": 0, "erased": 0, "rejected": 0, "rejections": [], "near_duplicates": 0,
                  "near_duplicate_rows": []}
        pending: list[dict] = []
        for block in blocks:
            for row in BlockAccessor.for_block(block).to_arrow().to_pylist():
                rows += 1
                near = matched_id(row["reason"])  # skipped or linked by the near-duplicate stage
                if near is not None:
                    self._near(result, row, near)
                if row["status"] == OK:
                    pending.append(to_record(row, self.model))
                elif row["status"] == SKIPPED:
                    result["skipped"] += 1
                    result["erased"] += row["reason"] == ERASED
                elif row["status"] == REJECTED:
                    result["rejected"] += 1
                    if len(result["rejections"]) < self.max_rejections_listed:
                        result["rejections"].append({"source": row["source"], "reason": row["reason"]})
                if len(pending) >= self.batch_rows:
                    self._flush(pending, result)
                    pending = []
        self._flush(pending, result)
        if self.metrics is not None:
            self.metrics.observe_stage("write", time.perf_counter() - started, rows)
        return result

    def _near(self, result: dict, row: dict, matched: str) -> None:
        result["near_duplicates"] += 1
        if len(result["near_duplicate_rows"]) < self.max_rejections_listed:
            # a stored (linked) row's source is sealed by now: it is listed by id only
            listed = {"id": row["id"], "near_duplicate_of": matched, "stored": row["status"] == OK}
            result["near_duplicate_rows"].append({**listed, **({} if listed["stored"] else {"source": row["source"]})})

    def _denied(self, records: list[dict]) -> set[tuple[str, str]]:
        subjects: dict[str, set[str]] = defaultdict(set)
        for r in records:
            subjects[r[R.TENANT]].add(r[R.SUBJECT])
        return {(t, s) for t, subs in subjects.items() for s in self.governance.denied(t, sorted(subs))}

    def _flush(self, records: list[dict], result: dict) -> None:
        if not records:
            return
        denied = self._denied(records)
        allowed = [r for r in records if (r[R.TENANT], r[R.SUBJECT]) not in denied]
        # Identical images in different blocks share an id; only the first counts as embedded.
        written = self.store.insert_missing(allowed, self.model) if allowed else 0
        late = self._denied(allowed)  # denied while we wrote: take those rows back out
        taken_back = self.store.delete(ids=[r[R.ID] for r in allowed if (r[R.TENANT], r[R.SUBJECT]) in late]) if late else 0
        written -= taken_back
        result["embedded"] += written
        result["skipped"] += len(records) - written
        result["erased"] += len(records) - len(allowed) + taken_back

    def on_write_complete(self, write_result) -> None:
        totals = {"embedded": 0, "skipped": 0, "erased": 0, "rejected": 0, "rejections": [], "near_duplicates": 0,
                  "near_duplicate_rows": []}
        for r in write_result.write_returns:
            for key in ("embedded", "skipped", "erased", "rejected", "near_duplicates"):
                totals[key] += r[key]
            totals["rejections"].extend(r["rejections"])
            totals["near_duplicate_rows"].extend(r["near_duplicate_rows"])
        for listed in ("rejections", "near_duplicate_rows"):
            totals[listed] = totals[listed][: self.max_rejections_listed]
        self.totals = totals
