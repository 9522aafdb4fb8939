"""`make demo`'s main job at a reduced size, and the bundled demo model's search quality
through the whole stack (embed job, milvus-lite, the store's query path)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pixlake.platform.corpus import write_corpus
from pixlake.platform.evaluation import evaluate
from pixlake.platform.settings import load_settings
from tests.conftest import subprocess_env

DEMO = ("pixlake-demo", "bundled")


def test_demo_runs_every_piece_and_shuts_down(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pixlake.jobs.demo", "--data", str(tmp_path / "data"), "--out", str(out),
         "--db", str(tmp_path / "p.db"), "--n", "150"],
        capture_output=True, text=True, timeout=600, env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for section in ("== 1. corpus", "== 2. Ray embed job", "== 3. evaluation", "== 4. Ray Serve", "== 5. GDPR erasure",
                    "== 6. done"):
        assert section in text
    assert "embedded    150" in text and "protection  vectors encrypted" in text
    # 3 text, 1 image, 1 text+image, the image again after the erasure; the bad key
    assert text.count("[HTTP 200]") == 6 and "[HTTP 401]" in text and "[HTTP 202]" in text
    before = text.split("-- image -> image:")[1].split("\n--")[0]
    assert "1. 1.000  00000.png" in before  # the uploaded image finds itself first
    assert "receipt: completed, verified True" in text
    after = text.split("-- image -> image again:")[1].split("==")[0].split("\n", 1)[1]
    assert "1." in after and "00000.png" not in after  # erased: its own image no longer finds it
    metrics = json.loads((out / "evaluation.json").read_text())
    assert set(metrics) == {"text_to_image", "image_to_image"}
    assert (out / "embed-report.json").exists() and (out / "evaluation.md").exists()


@pytest.mark.usefixtures("ray_session")
def test_demo_model_meets_the_quality_targets_on_unseen_images(tmp_path):
    write_corpus(tmp_path / "c", 1000, seed=3, holdout=1.0)  # the model trained on seed 0; ~21 images per label
    settings = load_settings(overrides={"store": {"db": str(tmp_path / "p.db"), "collection": "evaluation"},
                                        "encoder": {"model": DEMO[0], "pretrained": DEMO[1]}})
    result = evaluate(str(tmp_path / "c" / "manifest.parquet"), settings)
    assert result["rows"] == 1000
    assert result["text_to_image"]["recall@5"] >= 0.9, result
    assert result["image_to_image"]["precision@5"] >= 0.9, result
