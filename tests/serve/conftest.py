"""A running Serve app on loopback over a small two-tenant collection (real Ray, real milvus-lite)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import SERVED_MAX_BODY_BYTES, TINY, TINY_BETA, free_port, tiny_settings

KEYS = "ka:acme:search+embed,kf:acme:search+embed,kb:globex:search,ke:acme:embed,kr:acme:search,kx:initech:search+erase,ky:initech:search,kz:globex:erase"
# Live uploads (tests/serve/test_items_api.py) go to tenants no other test reads.
KEYS += (",ki:umbrella:search+ingest+delete+erase,kn:umbrella:search,kj:acme:ingest+search,kq:quota:ingest+search"
         ",kc:crash:ingest+search")
ITEMS_QUOTA = 30  # serve.max_rows_per_tenant
MAX_PENDING_UPLOADS = 4
LOAD_KEYS = [f"kl{i}" for i in range(6)]  # test_replica_faults.py's steady load: its own rate-limit buckets
KEYS += "".join(f",{k}:{'acme' if i % 2 else 'globex'}:search" for i, k in enumerate(LOAD_KEYS))
ERASABLE = 3  # tenant initech: subject "erase-me" owns 2 of these images, "keep-me" 1 (identical to one of the 2)


@pytest.fixture(scope="session")
def served(ray_session, tmp_path_factory):
    """Base URL plus the images of each tenant."""
    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.corpus import write_corpus
    from pixlake.serve import run
    from pixlake.serve.auth import parse_api_keys
    from pixlake.serve.config import ServeSettings

    root = tmp_path_factory.mktemp("serve")
    images = write_corpus(root / "images", 40, seed=7)
    tenants = ["acme" if i % 2 == 0 else "globex" for i in range(len(images))]
    extra = write_corpus(root / "initech", 2, seed=99)
    n = len(images)
    pq.write_table(
        pa.table({"path": [str(p) for p in [*images, *extra, extra[0]]], "tenant": [*tenants, *["initech"] * ERASABLE],
                  "label": [f"l{i % 4}" for i in range(n + ERASABLE)],
                  "subject": [None] * n + ["erase-me", "erase-me", "keep-me"]}),
        root / "rows.parquet",
    )
    db = root / "p.db"
    run_embed_job(str(root / "rows.parquet"), tiny_settings(db, allow_manifest_tenants=True))  # the manifest names tenants
    settings = ServeSettings(
        db=str(db), collection="images", model=TINY[0], pretrained=TINY[1], keys=parse_api_keys(KEYS),
        rate_per_s=0.5, rate_burst=150, max_body_bytes=SERVED_MAX_BODY_BYTES, max_image_bytes=1_000_000, max_image_pixels=4_000_000,
        governance={"beta": TINY_BETA}, max_rows_per_tenant=ITEMS_QUOTA, max_pending_uploads=MAX_PENDING_UPLOADS,
    )
    url = run.start(settings, "127.0.0.1", free_port())
    from pixlake.platform.governance.service import governance_dir

    yield {"url": url, "images": images, "tenants": tenants, "initech": extra,
           "governance_dir": governance_dir(settings.platform_settings())}
    run.stop()
