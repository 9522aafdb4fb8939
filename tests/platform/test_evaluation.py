"""Evaluation metrics: hand-checked on fixed rankings, and through the real store and embed
job on a holdout whose answers follow from its construction."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixlake.platform.errors import StoreError
from pixlake.platform.evaluation import evaluate, markdown, score
from tests.conftest import tiny_settings


def test_score_by_hand():
    ranked = [
        [True, False, False, False, False, False, False, False, False, False],  # hit at 1
        [False, False, True, True, False, False, False, False, False, True],  # hits at 3, 4, 10
        [False] * 10,  # no hit
        [False] * 5 + [True] * 5,  # hits at 6..10
    ]
    assert score(ranked) == {
        "recall@1": 0.25, "recall@5": 0.5, "recall@10": 0.75,
        "precision@1": 0.25, "precision@5": round((1 / 5 + 2 / 5) / 4, 4), "precision@10": round((1 + 3 + 5) / 10 / 4, 4),
    }
    # fewer hits than k (a small collection): the missing ones count as not relevant
    assert score([[True, True]], ks=(1, 5)) == {"recall@1": 1.0, "recall@5": 1.0, "precision@1": 1.0, "precision@5": 0.4}
    with pytest.raises(ValueError):
        score([])


def test_markdown_table():
    table = markdown({"text_to_image": {"recall@1": 0.5, "precision@1": 0.25}}, {"text_to_image": 8})
    assert table.splitlines()[0] == "| query type | queries | recall@1 | precision@1 |"
    assert table.splitlines()[2] == "| text to image | 8 | 0.500 | 0.250 |"


def _holdout(root, corpus_dir, copies=3):
    """Two labels, each three byte-identical copies (different subjects): an image query's
    two copies tie at the top with score 1, the other label's rows follow."""
    firsts = sorted(corpus_dir.glob("*.png"))[:2]
    rows = []
    for label, src in zip(("red star", "blue square"), firsts):
        for i in range(copies):
            dst = root / f"{label.replace(' ', '-')}-{i}.png"
            shutil.copy(src, dst)
            rows.append({"path": dst.name, "label": label, "subject": f"s-{label}-{i}", "split": "holdout"})
    rows.append({"path": rows[0]["path"], "label": "red star", "subject": "trainee", "split": "train"})  # not evaluated
    pq.write_table(pa.Table.from_pylist(rows), root / "manifest.parquet")
    return root / "manifest.parquet"


def test_evaluate_through_the_store(ray_session, corpus_dir, tmp_path):
    manifest = _holdout(tmp_path, corpus_dir)
    result = evaluate(str(manifest), tiny_settings(tmp_path / "p.db"), templates=("find {}",))
    assert result["rows"] == 6 and result["queries"] == {"text_to_image": 2, "image_to_image": 6}
    # image→image: the two other copies rank first, then the other label's three rows
    assert result["image_to_image"] == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0,
                                        "precision@1": 1.0, "precision@5": 0.4, "precision@10": 0.2}
    # text→image with random weights: only what holds for any ranking of 6 rows, 3 relevant
    assert result["text_to_image"]["recall@10"] == 1.0 and result["text_to_image"]["precision@10"] == 0.3
    assert result["text_to_image"]["recall@5"] == 1.0  # top 5 of 6 always holds one of 3


def test_evaluate_refuses_a_collection_holding_other_rows(ray_session, corpus_dir, tmp_path):
    from pixlake.platform.pipeline.job import run_embed_job

    settings = tiny_settings(tmp_path / "p.db")
    run_embed_job(str(corpus_dir), settings)
    with pytest.raises(StoreError, match="collection of its own"):
        evaluate(str(_holdout(tmp_path, corpus_dir)), settings)
