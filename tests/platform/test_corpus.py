"""The captioned synthetic corpus: deterministic, labelled, and phrased so that the
evaluation's query templates never occur in training captions."""

from __future__ import annotations

import pyarrow.parquet as pq

from pixlake.platform.corpus import (COLOURS, HOLDOUT_TEMPLATES, MANIFEST, PLURALS, SHAPES, TRAIN_TEMPLATES, noun_phrase,
                                     query_text, write_corpus)


def _manifest(out):
    return pq.read_table(out / MANIFEST).to_pylist()


def test_same_seed_same_corpus_other_seed_other_corpus(tmp_path):
    a = write_corpus(tmp_path / "a", 30, seed=5)
    b = write_corpus(tmp_path / "b", 30, seed=5)
    c = write_corpus(tmp_path / "c", 30, seed=6)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert _manifest(tmp_path / "a") == _manifest(tmp_path / "b")
    assert _manifest(tmp_path / "a") != _manifest(tmp_path / "c")
    assert sum(x.read_bytes() == y.read_bytes() for x, y in zip(a, c)) == 0


def test_manifest_rows_name_their_image_and_labels_match_captions(tmp_path):
    paths = write_corpus(tmp_path, 200, seed=3, holdout=0.25)
    rows = _manifest(tmp_path)
    assert [tmp_path / r["path"] for r in rows] == paths and all(p.is_file() for p in paths)
    assert set(rows[0]) == {"path", "caption", "shape", "colour", "size", "count", "position", "background", "texture",
                            "label", "subject", "split"}
    for r in rows:
        noun = r["shape"] if r["count"] == 1 else PLURALS.get(r["shape"], r["shape"] + "s")
        assert f"{r['colour']} {noun}" in r["caption"], r
        assert r["label"] == f"{r['colour']} {r['shape']}"
        assert r["subject"].startswith("person-")
    assert {r["shape"] for r in rows} == set(SHAPES) and {r["colour"] for r in rows} == set(COLOURS)
    holdout = sum(r["split"] == "holdout" for r in rows)
    assert 25 <= holdout <= 75  # ~25% of 200
    assert len({r["subject"] for r in rows}) < len(rows)  # subjects own several images


def test_holdout_phrasings_never_appear_in_training_captions(tmp_path):
    write_corpus(tmp_path, 300, seed=4)
    captions = [r["caption"] for r in _manifest(tmp_path)]
    for template in HOLDOUT_TEMPLATES:
        frame = template.replace("{}", "").strip()
        assert not any(frame in c for c in captions), template
    assert not set(HOLDOUT_TEMPLATES) & set(TRAIN_TEMPLATES)


def test_phrases():
    assert noun_phrase("red", "star") == "a red star"
    assert noun_phrase("orange", "cross", 2, ("small",)) == "two small orange crosses"
    assert noun_phrase("orange", "circle") == "an orange circle"
    assert query_text("orange circle", "find {}") == "find an orange circle"
