"""``pixlake add``: images added one by one without Ray, on real milvus-lite (encrypted)."""

from __future__ import annotations

import json

import pytest

from pixlake.platform.collection import open_collection
from pixlake.platform.corpus import write_corpus
from tests.conftest import TINY, run_cli


@pytest.fixture
def env(tmp_path):
    (tmp_path / "cfg.yaml").write_text(f"governance:\n  key_dir: {tmp_path / 'keys'}\n  beta: 0.05\n")
    images = write_corpus(tmp_path / "img", 3, seed=5)
    return tmp_path, images


def _add(capsys, tmp_path, *args: str) -> tuple[int, str, str]:
    code = run_cli("add", *args, "--db", str(tmp_path / "a.db"), "--collection", "live", "--config",
                   str(tmp_path / "cfg.yaml"), "--model", TINY[0], "--pretrained", TINY[1], "--tenant", "acme")
    out = capsys.readouterr()
    return code, out.out, out.err


def test_add_creates_then_exists_and_rejects_what_is_not_an_image(env, capsys):
    tmp_path, images = env
    (tmp_path / "notes.png").write_text("not an image")
    code, out, err = _add(capsys, tmp_path, str(images[0]), str(images[1]), "--subject", "ann", "--meta",
                          '{"album": "a"}', "--json")
    assert code == 0, err
    first = json.loads(out)
    assert [r["status"] for r in first] == ["created", "created"] and len({r["id"] for r in first}) == 2
    code, out, err = _add(capsys, tmp_path, str(images[0]), str(tmp_path / "notes.png"), str(tmp_path / "missing.png"),
                          "--subject", "ann", "--json")
    again = json.loads(out)
    assert code == 1  # not every image was written
    assert again[0] == {"image": str(images[0]), "id": first[0]["id"], "status": "exists"}
    assert again[1]["status"] == "rejected" and again[1]["reason"].startswith(("not_an_image", "unsupported_format"))
    assert again[2]["status"] == "rejected" and "unreadable" in again[2]["reason"]
    from pixlake.platform.settings import load_settings

    settings = load_settings(tmp_path / "cfg.yaml", {"store": {"db": str(tmp_path / "a.db"), "collection": "live"}})
    with open_collection(settings) as c:
        rows = {r["id"]: r for r in c.read("acme")}
    assert set(rows) == {r["id"] for r in first}
    assert all(r["meta"]["album"] == "a" and r["meta"]["added_at"] for r in rows.values())
    assert {r["source"] for r in rows.values()} == {str(images[0].resolve()), str(images[1].resolve())}


def test_an_erased_subject_is_refused(env, capsys):
    tmp_path, images = env
    assert _add(capsys, tmp_path, str(images[2]), "--subject", "gone")[0] == 0
    code, out, err = run_cli("erase", "--subject", "gone", "--tenant", "acme", "--db", str(tmp_path / "a.db"),
                             "--collection", "live", "--config", str(tmp_path / "cfg.yaml")), *capsys.readouterr()
    assert code == 0, err
    code, out, err = _add(capsys, tmp_path, str(images[2]), "--subject", "gone")
    assert code == 1 and "refused" in out and "erased_subject" in out


@pytest.mark.parametrize("meta, message", [('{"added_at": "x"}', "set by pixlake"), ("[1]", "JSON object"),
                                           ("{nope", "not valid JSON")])
def test_bad_meta_fails_before_any_work(env, capsys, meta, message):
    tmp_path, images = env
    code, out, err = _add(capsys, tmp_path, str(images[0]), "--meta", meta)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "a.db").exists()
