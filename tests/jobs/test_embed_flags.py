"""`pixlake embed` refuses bad flags with one error line and exit code 2, before any work
(no Ray start, no master key). In-process: the console script returns the same code."""

from __future__ import annotations

import pytest

from tests.conftest import TINY, run_cli

TINY_FLAGS = ["--model", TINY[0], "--pretrained", TINY[1]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/folder", "--db", "{tmp}/p.db", *TINY_FLAGS], "source not found"),
        (["s3://bucket/x?endpoint_override=127.0.0.1:9", "--db", "{tmp}/p.db", *TINY_FLAGS], "refused: s3:// URIs carry no"),
        (["{corpus}", "--db", "{tmp}/p.db", "--model", "no-such-model", "--pretrained", "none"], "unknown model"),
        (["{corpus}", "--db", "{file}/under-a-file.db", *TINY_FLAGS], "cannot create the directory"),
        (["{corpus}", "--db", "{tmp}/not-a-db.txt", *TINY_FLAGS], "expected a milvus-lite path"),
        (["{corpus}", "--db", "{tmp}/p.db", "--model", "ViT-B-32", "--pretrained", "{tmp}/missing.pt"], "checkpoint not found"),
        (["{corpus}", "--db", "{tmp}/p.db", *TINY_FLAGS, "--near-duplicates", "skip", "--near-threshold", "0"],
         "near_threshold"),
        (["{corpus}", "--db", "{tmp}/p.db", *TINY_FLAGS, "--near-threshold", "1.5"], "near_threshold"),
    ],
)
def test_bad_invocations_fail_with_one_line_and_nonzero_exit(args, message, corpus_dir, tmp_path, capsys):
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    code = run_cli("embed", *[a.format(corpus=corpus_dir, file=a_file, tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("pixlake: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("*.governance")), "a bad flag must fail before a master key is created"
