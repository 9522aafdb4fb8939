"""The row shape that flows between stages after the load stage."""

from __future__ import annotations

import pyarrow as pa

OK, SKIPPED, REJECTED = "ok", "skipped", "rejected"
ERASED = "erased subject"  # the skip reason of rows whose subject is on the deny-list

# Columns every stage after load passes on; each stage adds its payload column
# (image → pixels → vector) and drops the previous one, so blocks stay small.
BASE_FIELDS = [
    ("source", pa.string()),
    ("id", pa.string()),
    ("tenant", pa.string()),
    ("subject", pa.string()),
    ("content_hash", pa.string()),
    ("meta", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
]


def table(rows: list[dict], payload: list[tuple[str, pa.DataType]]) -> pa.Table:
    """Build a stage's output block from row dicts with the base columns plus ``payload``."""
    return pa.Table.from_pylist(rows, schema=pa.schema(BASE_FIELDS + payload))


def rejected(row: dict, reason: str) -> dict:
    """Mark a row rejected with a reason (the row keeps flowing so the report can count it)."""
    row["status"], row["reason"] = REJECTED, reason
    return row
