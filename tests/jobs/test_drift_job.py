"""Every embed run reports its embedding statistics and its drift from the previous run of
the same collection and encoder (real Ray job, milvus-lite), and nothing it writes outside
the encrypted rows gives back one subject's embedding."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from pixlake.platform.compliance import open_governed_store
from pixlake.platform.compliance.erasure import Eraser
from pixlake.platform.corpus import MANIFEST, write_corpus
from pixlake.platform.drift import HISTORY_FILE
from pixlake.platform.pipeline.job import run_embed_job
from tests.conftest import tiny_settings


def test_runs_report_statistics_and_drift_grows_with_a_shifted_input(ray_session, tmp_path):
    write_corpus(tmp_path / "a", 96, seed=2, holdout=1.0)
    write_corpus(tmp_path / "b", 96, seed=3, holdout=1.0)
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(96):  # a broken feed: static instead of pictures
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / f"{i}.png")
    db = tmp_path / "d.db"
    settings = tiny_settings(db, report=str(tmp_path / "report.json"))
    first = run_embed_job(str(tmp_path / "a" / MANIFEST), settings)
    assert first.drift is None and first.embedding_stats["count"] == 96 and first.embedding_stats["nonfinite"] == 0
    assert first.embedding_stats["norm_std"] > 0
    same = run_embed_job(str(tmp_path / "b" / MANIFEST), settings)
    shifted = run_embed_job(str(noise), settings)
    assert same.drift["previous_run"] == first.run_id and shifted.drift["previous_run"] == same.run_id
    assert shifted.drift["score"] > 2 * same.drift["score"], (same.drift, shifted.drift)
    assert shifted.drift["mean_cosine"] < same.drift["mean_cosine"]
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["drift"] == shifted.drift and written["embedding_stats"] == shifted.embedding_stats
    history = [json.loads(line) for line in (tmp_path / "d.governance" / HISTORY_FILE).read_text().splitlines()]
    assert [e["run_id"] for e in history] == [first.run_id, same.run_id, shifted.run_id]
    assert all("vec_sum" in e["stats"] and "moments_withheld" not in e for e in history)  # 96 vectors a run: kept


_NUMBER = re.compile(rb"-?\d+\.?\d*(?:[eE][-+]?\d+)?")


def _holds(values: np.ndarray, target: np.ndarray, min_cos: float = 0.99) -> bool:
    """Whether ``dim`` consecutive ``values`` point like ``target`` (cosine > ``min_cos``), at
    any scale: a sum of one vector, a mean, a rounded copy. Windows are first narrowed to
    those whose three largest components of ``target`` stand in the same ratios (within 10%)."""
    d, a = len(target), np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if len(a) < d:
        return False
    n, (j0, *others) = len(a) - d + 1, np.argsort(-np.abs(target))[:3]
    base = a[j0:j0 + n]
    with np.errstate(all="ignore"):
        ok = np.abs(base) > 1e-30
        for j in others:
            ratio = target[j] / target[j0]
            ok &= np.abs(a[j:j + n] / base - ratio) <= 0.1 * abs(ratio) + 1e-3
        windows, unit = sliding_window_view(a, d), target / np.linalg.norm(target)
        for chunk in np.array_split(np.nonzero(ok)[0], max(1, int(ok.sum()) // 4096)):
            w = windows[chunk]
            if ((w @ unit) / np.linalg.norm(w, axis=1) > min_cos).any():
                return True
    return False


def _files_holding(root: Path, vector: np.ndarray) -> list[str]:
    """Every file under ``root`` that holds ``vector`` (or its squares, a sum of squares'
    worth) as float32 or float64 bytes at any alignment, or as written-out numbers (JSON,
    JSON lines, Prometheus text: any text)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        streams = [np.frombuffer(data[off:len(data) - (len(data) - off) % size], dtype)
                   for dtype, size in ((np.float32, 4), (np.float64, 8)) for off in range(size) if len(data) > off]
        streams.append(np.array([float(m) for m in _NUMBER.findall(data)]))
        if any(_holds(s, t) for s in streams for t in (vector, vector * vector)):
            found.append(str(path.relative_to(root)))
    return found


def test_a_one_image_run_leaves_no_copy_of_its_embedding_outside_the_encrypted_rows(ray_session, tmp_path,
                                                                                      tiny_encoder):
    write_corpus(tmp_path / "c", 1, seed=5, holdout=1.0)
    image = next((tmp_path / "c").rglob("*.png"))
    pq.write_table(pa.table({"path": [str(image)], "subject": ["alice"]}), tmp_path / "one.parquet")
    plain = tiny_encoder.embed_images([Image.open(image).convert("RGB")])[0]
    probe = tmp_path / "probe"  # the scanner finds the vector however a file would hold it
    probe.mkdir()
    (probe / "f32").write_bytes(b"\x01" + (0.5 * plain).astype(np.float32).tobytes())
    (probe / "f64").write_bytes(b"\x02\x03" + (plain * plain * 7).astype(np.float64).tobytes())
    (probe / "j.json").write_text(json.dumps({"v": [round(float(x), 4) for x in plain]}))
    assert _files_holding(probe, plain) == ["f32", "f64", "j.json"]
    assert _files_holding(tmp_path / "c", plain) == []  # nor does it see one in the source image

    out = tmp_path / "out"  # everything pixlake writes: database, governance, report, metrics
    settings = tiny_settings(out / "d.db", report=str(out / "report.json"), metrics_file=str(out / "run.prom"))
    report = run_embed_job(str(tmp_path / "one.parquet"), settings)
    assert report.embedded == 1 and report.embedding_stats["count"] == 1
    assert (out / "d.governance" / HISTORY_FILE).is_file() and (out / "run.prom").is_file()
    assert _files_holding(out, plain) == []

    # An operator who keeps moments of every run (drift_min_rows 1), in a second collection:
    # the history holds the vector (the scan sees a real leak) until the subject is erased.
    keep = settings.model_copy(update={"store": settings.store.model_copy(update={"collection": "keep"}),
                                       "governance": settings.governance.model_copy(update={"drift_min_rows": 1})})
    assert run_embed_job(str(tmp_path / "one.parquet"), keep).embedded == 1
    assert _files_holding(out, plain) == [f"d.governance/{HISTORY_FILE}"]
    with open_governed_store(settings) as (store, governance):
        eraser = Eraser(store, governance)
        receipt = eraser.run(eraser.start("default", "alice")[0])
        events = governance.audit.events()
    assert receipt["verified"] and {s["name"]: s["count"] for s in receipt["steps"]}["delete"] == 2
    assert [(e["collection"], e["count"]) for e in events if e["event"] == "erasure.drift_moments_dropped"] == [
        ("keep", 1)]
    assert _files_holding(out, plain) == []
