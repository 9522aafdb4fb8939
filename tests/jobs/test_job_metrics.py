"""The embed job's Prometheus metrics file, and the Grafana dashboard that charts it and the
Serve API's metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.pipeline.run_metrics import STAGES
from tests.conftest import tiny_settings

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_the_job_writes_its_metrics_for_prometheus(ray_session, corpus_dir, tmp_path):
    (corpus_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    path = tmp_path / "metrics" / "pixlake.prom"
    report = run_embed_job(str(corpus_dir), tiny_settings(tmp_path / "m.db", metrics_file=str(path)))
    assert report.rejected == 1 and report.embedded == 48
    samples = _samples(path.read_text())
    rows = {s.labels["status"]: s.value for s in samples["pixlake_embed_rows_total"]}
    assert rows == {"embedded": 48, "skipped": 0, "rejected": 1, "erased": 0}
    (rejected,) = samples["pixlake_embed_rejected_total"]
    assert rejected.value == 1 and rejected.labels["reason"] == report.rejections[0]["reason"].split(":")[0]
    # every stage timed its batches; every input passed through load, every embedded row through write
    stage_rows = {s.labels["stage"]: s.value for s in samples["pixlake_embed_stage_rows_total"]}
    assert set(stage_rows) == set(STAGES) and stage_rows["load"] == 49 and stage_rows["write"] == 49
    counts = {s.labels["stage"]: s.value for s in samples["pixlake_embed_stage_batch_seconds_count"]}
    inf = {s.labels["stage"]: s.value for s in samples["pixlake_embed_stage_batch_seconds_bucket"] if s.labels["le"] == "+Inf"}
    assert counts == inf and all(n >= 1 for n in counts.values())
    assert all(s.value > 0 for s in samples["pixlake_embed_stage_batch_seconds_sum"])
    assert samples["pixlake_embed_run_seconds"][0].value == report.seconds
    assert {s.labels["collection"] for s in samples["pixlake_embed_rows_total"]} == {"images"}


def test_every_metric_the_dashboard_charts_is_one_pixlake_exposes(tmp_path):
    from pixlake.platform.pipeline.report import JobReport
    from pixlake.platform.pipeline.run_metrics import RunMetrics, write_metrics_file
    from pixlake.platform.thumbnails import ThumbnailCache
    from pixlake.serve.metrics import Metrics

    serve = Metrics()
    serve.observe_request("/v1/search", "POST", 200, 0.01)
    serve.encoder_batch_size.labels(kind="text").observe(4)
    serve.observe_replica_retry("Searcher")
    serve.observe_upload("created")
    serve.observe_freshness(0.2)
    serve.observe_freshness(None)
    serve.watch_thumbnail_cache(ThumbnailCache())
    run = RunMetrics(8)
    run.observe_stage("embed", 0.2, 16)
    report = JobReport("r", "m", "s", "db", "lite", "images", "HNSW", "", rejected=1,
                       rejections=[{"source": "x.png", "reason": "truncated: image file is truncated"}])
    write_metrics_file(tmp_path / "job.prom", report, run)
    exposed = set(_samples(serve.render()[0].decode()))
    exposed |= set(_samples((tmp_path / "job.prom").read_text()))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = {name for e in exprs for name in re.findall(r"\bpixlake_[a-z_]+", e)}
    assert used and used <= exposed, used - exposed
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))
