"""The job report: its JSON contract and its summary."""

import json

from pixlake.platform.pipeline.report import JobReport

CONTRACT = {"run_id", "model", "source", "embedded", "skipped", "rejected", "rejections", "seconds", "images_per_s"}


def _report(**kw):
    base = dict(run_id="r1", model="m:1", source="/data", db="./x.db", backend="milvus-lite", collection="images",
                index_type="HNSW", index_note="why")
    return JobReport(**{**base, **kw})


def test_written_json_has_the_contract_keys(tmp_path):
    report = _report(embedded=3, rejected=1, rejections=[{"source": "/data/a.jpg", "reason": "truncated: x"}])
    report.write(tmp_path / "deep" / "r.json")
    saved = json.loads((tmp_path / "deep" / "r.json").read_text())
    assert CONTRACT <= saved.keys()
    assert saved["rejections"] == [{"source": "/data/a.jpg", "reason": "truncated: x"}]


def test_summary_groups_rejections_by_reason_code():
    report = _report(rejected=3, rejections=[{"source": s, "reason": r} for s, r in
                                             [("a", "truncated: x"), ("b", "truncated: y"), ("c", "empty: zero-byte input")]])
    text = report.summary()
    assert "truncated" in text and "empty" in text
    line = next(l for l in text.splitlines() if "truncated" in l)
    assert line.split()[-1] == "2"
    assert len(text.splitlines()) < 25  # one screen
