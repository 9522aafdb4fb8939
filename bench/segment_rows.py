"""How many pixlake rows a sealed Milvus segment holds: measured, for the index plan's model.

Milvus seals a segment when its *estimated* size reaches ``dataCoord.segment.maxSize``
(512 MB on the embedded 2.3 server), and builds IVF_PQ per sealed segment; the index plan
(``pixlake plan-index --segment-rows``) measures recall one segment at a time, so it needs
the rows per segment. This inserts 512-d pixlake records (the store's own schema, short
strings) into the embedded server with ``sealProportion`` 1.0 and prints the sealed segments'
row counts, beside the same for a bare (int64 id, vector) collection, and the bytes/row
Milvus must be estimating for each.

Run: ``python bench/segment_rows.py [--rows 300000] [--uri URI]`` (~3 min on 2 cores; ``--uri`` uses a
running server, whose segment settings are its own, instead of starting the embedded one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from embedded_milvus import milvus_uri  # noqa: E402

DIM, BATCH, MAX_MB = 512, 5_000, 512


def sealed_rows(client, name: str) -> list[int]:
    """Rows of each sealed (flushed) segment."""
    return sorted(s.num_rows for s in client.list_persistent_segments(name))


def main(argv: Optional[list[str]] = None) -> None:
    from pymilvus import DataType, MilvusClient

    from pixlake.platform import records as R
    from pixlake.platform.store import MilvusStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--uri", help="a running Milvus server instead of starting the embedded one")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((BATCH, DIM)).astype(np.float32).tolist()
    work = Path(tempfile.mkdtemp(prefix="pixlake-segrows-"))
    with milvus_uri(args.uri, work / "milvus", {"dataCoord.segment.sealProportion": 1.0}) as (uri, _):
        store = MilvusStore(uri, "pixlake_rows")
        store.ensure_collection(DIM, "m")
        client = MilvusClient(uri)
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        client.create_collection("bare", schema=schema)
        t0 = time.perf_counter()
        for start in range(0, args.rows, BATCH):
            batch = vectors[:args.rows - start]
            rows = [{R.ID: f"{start + i:032x}", R.TENANT: "default", R.SUBJECT: f"{start + i:032x}",
                     R.CONTENT_HASH: f"{start + i:064x}", R.SOURCE: f"v1.{start + i:060x}", R.MODEL: "m",
                     R.META: {"label": "cat"}, R.NONCE: f"{i:024x}", R.KEY_ID: "k1", R.VECTOR: v}
                    for i, v in enumerate(batch)]
            client.insert("pixlake_rows", rows)
            client.insert("bare", [{"id": start + i, "vector": v} for i, v in enumerate(batch)])
        for name in ("pixlake_rows", "bare"):
            client.flush(name)
        print(f"inserted {args.rows:,} rows into each in {time.perf_counter() - t0:.0f} s")
        for name in ("pixlake_rows", "bare"):
            sizes = sealed_rows(client, name)
            full = max(sizes)
            print(f"{name}: sealed segments {sizes}; a full one holds {full:,} rows, so Milvus estimates "
                  f"~{MAX_MB * 2**20 / full:,.0f} bytes/row (the vector alone is {4 * DIM:,})")
        for name in ("pixlake_rows", "bare"):  # a server given by --uri outlives this run
            client.drop_collection(name)
        store.close()


if __name__ == "__main__":
    main()
