"""``pixlake embed --near-duplicates skip|link``: a new image near a stored one, or near an
earlier one of the same run, is skipped or linked (real Ray, real milvus-lite, the demo model,
encrypted rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pixlake.platform.collection import open_collection
from pixlake.platform.corpus import write_corpus
from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.settings import load_settings

DEMO = ("pixlake-demo", "bundled")  # distinct corpus images stay well below 0.95 (the tiny model's do not)


def _settings(db: str, keys: Path, collection: str = "images", **job):
    load_master_key(keys, create=True)  # an operator-provided key (a server never creates one)
    return load_settings(overrides={"store": {"db": db, "collection": collection},
                                    "encoder": {"model": DEMO[0], "pretrained": DEMO[1]},
                                    "job": {"batch_size": 16, **job}, "governance": {"key_dir": str(keys)}})


def _copy(original: Path, out: Path, n: int) -> Path:
    """The same pixels in other bytes (a PNG text chunk): another content hash, so another row."""
    info = PngImagePlugin.PngInfo()
    info.add_text("copy", str(n))
    target = out / f"{original.stem}-copy{n}.png"
    with Image.open(original) as img:
        img.save(target, pnginfo=info)
    return target


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """10 distinct images; a first run stores 0-7. The second run's folder: copies of 0 and 1
    (near stored rows), new images 8 and 9, and two copies of 8 (near a row of the same run)."""
    from pixlake.platform.encoder import load_encoder

    root = tmp_path_factory.mktemp("near")
    originals = write_corpus(root / "all", 10, seed=11)
    vectors = load_encoder(*DEMO, device="cpu").embed_images([Image.open(p).convert("RGB") for p in originals])
    near = vectors @ vectors.T - np.eye(len(originals))
    assert near.max() < 0.9  # the premise: no two originals are near-duplicates of each other
    first, second = root / "first", root / "second"
    first.mkdir()
    second.mkdir()
    for p in originals[:8]:
        (first / p.name).write_bytes(p.read_bytes())
    for p in originals[8:]:
        (second / p.name).write_bytes(p.read_bytes())
    copies = {"0": _copy(originals[0], second, 1), "1": _copy(originals[1], second, 1),
              "8a": _copy(originals[8], second, 1), "8b": _copy(originals[8], second, 2)}
    return {"first": first, "second": second, "originals": originals, "copies": copies}


def _rows(settings) -> dict[str, dict]:
    """Stored rows by source file name, decrypted."""
    with open_collection(settings) as c:
        return {Path(r["source"]).name: r for r in c.read("default")}


@pytest.mark.parametrize("backend, mode", [("lite", "skip"), ("lite", "link"), ("server", "skip")])
def test_near_copies_of_stored_and_of_this_runs_images(ray_session, request, corpus, tmp_path, backend, mode):
    # on a server the tasks write and the near-duplicate stage opens its own client
    db = str(tmp_path / "p.db") if backend == "lite" else request.getfixturevalue("milvus_server")
    settings = _settings(db, tmp_path / "keys", f"near_{mode}_{tmp_path.name[-8:].replace('-', '_')}")
    assert run_embed_job(str(corpus["first"]), settings).embedded == 8
    before = _rows(settings)
    report = run_embed_job(str(corpus["second"]), settings.model_copy(
        update={"job": settings.job.model_copy(update={"near_duplicates": mode})}))
    after = _rows(settings)
    names = {k: p.name for k, p in corpus["copies"].items()}
    o = {i: corpus["originals"][i].name for i in range(10)}
    group8 = {o[8], names["8a"], names["8b"]}  # identical pixels: whichever the run met first is the one kept
    kept8 = group8 & set(after)
    assert len(kept8) == (1 if mode == "skip" else 3) and o[9] in after
    first8 = kept8.pop() if mode == "skip" else next(n for n in group8 if "near_duplicate_of" not in after[n]["meta"])
    expected = {names["0"]: before[o[0]]["id"], names["1"]: before[o[1]]["id"],
                **{n: after[first8]["id"] for n in group8 - {first8}}}
    listed = {r["near_duplicate_of"]: r for r in report.near_duplicate_rows}
    assert report.near_duplicates == 4 and len(report.near_duplicate_rows) == 4
    if mode == "skip":
        assert set(after) == set(before) | {first8, o[9]} and report.embedded == 2 and report.skipped == 4
        assert sorted((Path(r["source"]).name, r["near_duplicate_of"]) for r in report.near_duplicate_rows) == sorted(expected.items())
        assert not any(r["stored"] for r in report.near_duplicate_rows)
    else:
        assert report.embedded == 6 and report.skipped == 0
        assert {n: after[n]["meta"].get("near_duplicate_of") for n in expected} == expected
        assert {r["id"]: r["near_duplicate_of"] for r in report.near_duplicate_rows} == {after[n]["id"]: m for n, m in expected.items()}
        assert all(r["stored"] and "source" not in r for r in report.near_duplicate_rows)
        assert "near_duplicate_of" not in after[o[9]]["meta"] and "near_duplicate_of" not in after[first8]["meta"]
    assert set(listed) == set(expected.values())
    assert "near-dups   4" in report.summary()


def test_keep_is_the_default_and_stores_every_copy(ray_session, corpus, tmp_path):
    settings = _settings(str(tmp_path / "p.db"), tmp_path / "keys")
    run_embed_job(str(corpus["first"]), settings)
    report = run_embed_job(str(corpus["second"]), settings)
    assert (report.embedded, report.near_duplicates, report.near_duplicate_rows) == (6, 0, [])
    assert not any("near_duplicate_of" in r["meta"] for r in _rows(settings).values())
