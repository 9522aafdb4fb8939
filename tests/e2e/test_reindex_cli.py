"""`pixlake reindex` and `pixlake rollback` as users run them: separate processes, exit codes, JSON out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pixlake.platform.corpus import MANIFEST, write_corpus
from tests.conftest import TINY, TINY_ENV

BIN = Path(sys.executable).parent
# The current encoder is the configured one: here from the environment, as a deployment would.
ENV = {**os.environ, **TINY_ENV, "PIXLAKE_ENCODER__MODEL": TINY[0], "PIXLAKE_ENCODER__PRETRAINED": TINY[1]}
ENV.pop("RAY_ADDRESS", None)


def _pixlake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pixlake"), *args], capture_output=True, text=True, timeout=600, env=ENV)


def test_reindex_promotes_then_rollback_switches_back_and_refuses_past_the_oldest(tmp_path):
    write_corpus(tmp_path / "c", 24, seed=4, holdout=0.5)
    manifest, db = str(tmp_path / "c" / MANIFEST), str(tmp_path / "r.db")
    assert _pixlake("embed", manifest, "--db", db).returncode == 0
    refused = _pixlake("reindex", "--db", db, "--beta", "0.1")
    assert refused.returncode == 2 and "--eval" in refused.stderr.strip().splitlines()[-1]
    report = tmp_path / "reindex.json"
    done = _pixlake("reindex", "--db", db, "--beta", "0.1", "--eval", manifest, "--max-recall-drop", "1", "--report", str(report))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["promoted"] and result["mode"] == "rebuild" and result["rows"] == 24
    assert result["switch"] == {"collection": "images", "from": "images_v1", "to": "images_v2"}
    back = _pixlake("rollback", "--db", db)
    assert back.returncode == 0 and json.loads(back.stdout) == {"collection": "images", "from": "images_v2", "to": "images_v1"}
    past = _pixlake("rollback", "--db", db)
    assert past.returncode == 2 and "oldest version" in past.stderr
    gated = _pixlake("reindex", "--db", db, "--beta", "0.1", "--eval", manifest, "--max-recall-drop", "-1")
    assert gated.returncode == 1 and "quality gate refused" in gated.stderr
    assert json.loads(gated.stdout)["to"] == "images_v3" and not json.loads(gated.stdout)["promoted"]
