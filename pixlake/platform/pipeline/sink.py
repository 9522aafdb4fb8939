"""Write stage: a Ray Data datasink that upserts embedded rows into Milvus in batches
and returns, per write task, what it wrote, skipped and rejected."""

from __future__ import annotations

import json
from typing import Any, Iterable

from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from pixlake.platform import records as R
from pixlake.platform.pipeline.rows import OK, REJECTED, SKIPPED

WRITE_BATCH_ROWS = 512


def to_record(row: dict, model: str) -> dict:
    """Turn a pipeline row into a store record (DESIGN.md "Records")."""
    return {
        R.ID: row["id"],
        R.TENANT: row["tenant"],
        R.SUBJECT: row["subject"],
        R.CONTENT_HASH: row["content_hash"],
        R.SOURCE: row["source"],
        R.MODEL: model,
        R.META: json.loads(row["meta"] or "{}"),
        R.NONCE: "",  # set by vector encryption once governance lands
        R.KEY_ID: "",
        R.VECTOR: [float(x) for x in row["vector"]],
    }


class MilvusDatasink(Datasink):
    """Idempotent writes through the store actor; totals land in :attr:`totals` on the driver.

    Args:
        store: a :class:`~pixlake.platform.store_actor.StoreProxy`.
        model: encoder fingerprint written into every row.
        max_rejections_listed: rejections kept one by one (counts stay exact).
    """

    def __init__(self, store, model: str, max_rejections_listed: int):
        self.store = store
        self.model = model
        self.max_rejections_listed = max_rejections_listed
        self.totals: dict[str, Any] = {}

    @property
    def min_rows_per_write(self) -> int:
        return WRITE_BATCH_ROWS

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        result = {"embedded": 0, "skipped": 0, "rejected": 0, "rejections": []}
        pending: list[dict] = []
        for block in blocks:
            for row in BlockAccessor.for_block(block).to_arrow().to_pylist():
                if row["status"] == OK:
                    pending.append(to_record(row, self.model))
                elif row["status"] == SKIPPED:
                    result["skipped"] += 1
                elif row["status"] == REJECTED:
                    result["rejected"] += 1
                    if len(result["rejections"]) < self.max_rejections_listed:
                        result["rejections"].append({"source": row["source"], "reason": row["reason"]})
                if len(pending) >= WRITE_BATCH_ROWS:
                    self._flush(pending, result)
                    pending = []
        self._flush(pending, result)
        return result

    def _flush(self, records: list[dict], result: dict) -> None:
        # Identical images in different blocks share an id; only the first counts as embedded.
        written = self.store.insert_missing(records, self.model) if records else 0
        result["embedded"] += written
        result["skipped"] += len(records) - written

    def on_write_complete(self, write_result) -> None:
        totals = {"embedded": 0, "skipped": 0, "rejected": 0, "rejections": []}
        for r in write_result.write_returns:
            for key in ("embedded", "skipped", "rejected"):
                totals[key] += r[key]
            totals["rejections"].extend(r["rejections"])
        totals["rejections"] = totals["rejections"][: self.max_rejections_listed]
        self.totals = totals
