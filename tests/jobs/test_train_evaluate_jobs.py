"""The train and evaluate jobs: training as users start it (its own process, JSON on
stdout), then its checkpoint evaluated; argument errors checked in-process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pixlake.platform.evaluation import KS, QUERY_TYPES
from tests.conftest import TINY_ENV, run_cli, subprocess_env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    assert run_cli("corpus", "--out", str(out), "--n", "60", "--seed", "9", "--holdout", "0.4") == 0
    return out


@pytest.mark.slow
def test_train_job_then_evaluate_job(corpus, tmp_path, ray_session, monkeypatch, capsys):
    train = ["-m", "pixlake.jobs.train", str(corpus / "manifest.parquet"), "--out", str(tmp_path / "m"),
             "--model", "pixlake-tiny", "--epochs", "2", "--batch-size", "8", "--json"]
    proc = subprocess.run([sys.executable, *train], capture_output=True, text=True, timeout=400, env=subprocess_env(**TINY_ENV))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["steps"] == report["total_steps"] > 0 and report["resumed_from"] == 0 and report["device"] == "cpu"
    assert run_cli("train", *train[2:]) == 0  # already complete: resumes at the end, trains nothing
    again = json.loads(capsys.readouterr().out)
    assert again["resumed_from"] == report["steps"] and again["fingerprint"] == report["fingerprint"]

    for k, v in TINY_ENV.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "eval.json"
    code = run_cli("evaluate", str(corpus / "manifest.parquet"), "--db", str(tmp_path / "p.db"),
                   "--model", "pixlake-tiny", "--pretrained", report["checkpoint"], "--json", str(out),
                   "--markdown", str(tmp_path / "eval.md"))
    assert code == 0, capsys.readouterr().err[-3000:]
    metrics = json.loads(out.read_text())
    keys = {f"{m}@{k}" for m in ("recall", "precision") for k in KS}
    assert set(metrics) == set(QUERY_TYPES) and all(set(metrics[t]) == keys for t in QUERY_TYPES)
    assert all(0 <= v <= 1 for t in QUERY_TYPES for v in metrics[t].values())
    assert "| text to image |" in capsys.readouterr().out and (tmp_path / "eval.md").read_text().startswith("| query type |")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{tmp}/missing.parquet", "--out", "{tmp}/o"], "manifest not found"),
        (["train", "{corpus}/manifest.parquet", "--out", "{tmp}/o", "--model", "pixlake-tiny", "--lr", "-1"], "invalid lr"),
        (["evaluate", "{tmp}/missing.parquet", "--db", "{tmp}/p.db"], "manifest not found"),
        (["corpus", "--out", "{tmp}/c", "--n", "0"], "--n must be at least 1"),
    ],
)
def test_bad_invocations_fail_with_one_line(args, message, corpus, tmp_path, capsys):
    code = run_cli(*[a.format(tmp=tmp_path, corpus=corpus) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
