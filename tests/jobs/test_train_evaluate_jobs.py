"""The train and evaluate jobs as users start them: separate processes on a local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixlake.platform.corpus import write_corpus
from pixlake.platform.evaluation import KS, QUERY_TYPES
from tests.conftest import TINY_ENV

BIN = Path(sys.executable).parent


def _run(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **TINY_ENV}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    proc = _run(str(BIN / "pixlake"), "corpus", "--out", str(out), "--n", "60", "--seed", "9", "--holdout", "0.4")
    assert proc.returncode == 0 and "wrote 60 images" in proc.stdout, proc.stderr
    return out


def test_train_job_then_evaluate_job(corpus, tmp_path):
    train = [sys.executable, "-m", "pixlake.jobs.train", str(corpus / "manifest.parquet"), "--out", str(tmp_path / "m"),
             "--model", "pixlake-tiny", "--epochs", "2", "--batch-size", "8", "--json"]
    proc = _run(*train)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["steps"] == report["total_steps"] > 0 and report["resumed_from"] == 0 and report["device"] == "cpu"
    again = json.loads(_run(*train).stdout)  # already complete: resumes at the end, trains nothing
    assert again["resumed_from"] == report["steps"] and again["fingerprint"] == report["fingerprint"]

    out = tmp_path / "eval.json"
    proc = _run(str(BIN / "pixlake"), "evaluate", str(corpus / "manifest.parquet"), "--db", str(tmp_path / "p.db"),
                "--model", "pixlake-tiny", "--pretrained", report["checkpoint"], "--json", str(out),
                "--markdown", str(tmp_path / "eval.md"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out.read_text())
    keys = {f"{m}@{k}" for m in ("recall", "precision") for k in KS}
    assert set(metrics) == set(QUERY_TYPES) and all(set(metrics[t]) == keys for t in QUERY_TYPES)
    assert all(0 <= v <= 1 for t in QUERY_TYPES for v in metrics[t].values())
    assert "| text to image |" in proc.stdout and (tmp_path / "eval.md").read_text().startswith("| query type |")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{tmp}/missing.parquet", "--out", "{tmp}/o"], "manifest not found"),
        (["train", "{corpus}/manifest.parquet", "--out", "{tmp}/o", "--model", "pixlake-tiny", "--lr", "-1"], "invalid lr"),
        (["evaluate", "{tmp}/missing.parquet", "--db", "{tmp}/p.db"], "manifest not found"),
        (["corpus", "--out", "{tmp}/c", "--n", "0"], "--n must be at least 1"),
    ],
)
def test_bad_invocations_fail_with_one_line(args, message, corpus, tmp_path):
    proc = _run(str(BIN / "pixlake"), *[a.format(tmp=tmp_path, corpus=corpus) for a in args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
