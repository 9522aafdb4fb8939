"""Search-quality evaluation through the store: recall@k and precision@k for text→image and
image→image queries over a labelled holdout.

The holdout is embedded by the same embed job users run, into a collection of its own, and
queried through the same query path (:mod:`pixlake.platform.query`), so whatever the store
does to vectors and rankings (encryption, PQ, re-ranking) is what gets measured.

Metrics follow the CLIP retrieval convention (clip_benchmark; COCO/Flickr "R@K"):
``recall@k`` is the share of queries with at least one relevant item in the top k;
``precision@k`` is the mean share of the top k that is relevant. An item is relevant when
its label equals the query's label; an image query never counts itself.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from pixlake.platform.errors import SourceError, StoreError
from pixlake.platform.settings import Settings

log = logging.getLogger(__name__)

KS = (1, 5, 10)
QUERY_TYPES = ("text_to_image", "image_to_image")


def score(relevance: Sequence[Sequence[bool]], ks: Sequence[int] = KS) -> dict[str, float]:
    """recall@k and precision@k of ranked result lists.

    Args:
        relevance: per query, whether each ranked hit is relevant, best first (at least
            ``max(ks)`` hits unless the collection is smaller).
        ks: cut-offs.

    Returns:
        ``{"recall@1": ..., ..., "precision@10": ...}`` rounded to 4 places.

    Raises:
        ValueError: no queries.
    """
    if not relevance:
        raise ValueError("no queries to score")
    result = {}
    for k in ks:
        result[f"recall@{k}"] = round(sum(any(r[:k]) for r in relevance) / len(relevance), 4)
    for k in ks:
        result[f"precision@{k}"] = round(sum(sum(r[:k]) / k for r in relevance) / len(relevance), 4)
    return result


def markdown(metrics: dict[str, dict[str, float]], queries: Optional[dict[str, int]] = None) -> str:
    """The evaluation as a markdown table, one row per query type."""
    keys = list(next(iter(metrics.values())))
    lines = ["| query type | queries | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for kind, values in metrics.items():
        count = str((queries or {}).get(kind, ""))
        lines.append(f"| {kind.replace('_', ' ')} | {count} | " + " | ".join(f"{values[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def save(result: dict, json_path: Optional[Path] = None, markdown_path: Optional[Path] = None) -> str:
    """Write an :func:`evaluate` result as the JSON contract and/or markdown; returns the table.

    The JSON holds exactly ``{"text_to_image": {...}, "image_to_image": {...}}``.
    """
    import json

    metrics = {kind: result[kind] for kind in QUERY_TYPES}
    table = markdown(metrics, result.get("queries"))
    for path, text in ((json_path, json.dumps(metrics, indent=2)), (markdown_path, table)):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
    return table


def _holdout_rows(manifest: str, split: Optional[str], label: str) -> list[dict]:
    import pyarrow.parquet as pq

    path = Path(manifest)
    if not path.is_file():
        raise SourceError(f"manifest not found: {manifest}")
    rows = pq.read_table(path).to_pylist()
    if rows and (label not in rows[0] or "path" not in rows[0]):
        raise SourceError(f"manifest {manifest} needs `path` and `{label}` columns")
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    if not rows:
        raise SourceError(f"manifest {manifest} has no rows with split {split!r}")
    for row in rows:
        row["path"] = str((path.parent / row["path"]).resolve())
    return rows


def _embed_holdout(rows: list[dict], settings: Settings) -> int:
    """Embed the rows with the embed job; returns how many the collection holds for them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pixlake.platform.pipeline.job import run_embed_job

    with tempfile.TemporaryDirectory(prefix="pixlake-eval-") as tmp:
        source = Path(tmp) / "holdout.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
        report = run_embed_job(str(source), settings)
    expected = report.embedded + report.skipped
    if report.collection_count != expected:
        raise StoreError(
            f"collection {settings.store.collection} holds {report.collection_count} rows but the evaluation set has "
            f"{expected}; evaluate into a collection of its own (--collection)"
        )
    return expected


def evaluate(
    manifest: str, settings: Settings, split: Optional[str] = "holdout", label: str = "label",
    templates: Optional[Sequence[str]] = None, k: int = max(KS),
) -> dict:
    """Embed a labelled holdout into the store and measure search quality through it.

    Args:
        manifest: Parquet manifest (``path`` relative to it, a label column, optional ``split``).
        settings: store, encoder and job settings; the collection must hold nothing else.
        split: rows of this split are the holdout; None uses every row.
        label: the column whose equality makes a hit relevant.
        templates: text-query phrasings, each with one ``{}`` for the label's noun phrase;
            default :data:`~pixlake.platform.corpus.HOLDOUT_TEMPLATES` (never used in training).
        k: hits fetched per query.

    Returns:
        ``{"text_to_image": {...}, "image_to_image": {...}, "queries": {type: count}, "rows": n}``.

    Raises:
        SourceError: unusable manifest. StoreError: the collection holds other rows, or
            another encoder's embeddings. ModelError: the encoder cannot be loaded.
    """
    rows = _holdout_rows(manifest, split, label)
    return _measure(rows, settings, _embed_holdout(rows, settings), label, templates, k)


def evaluate_stored(
    manifest: str, settings: Settings, split: Optional[str] = "holdout", label: str = "label",
    templates: Optional[Sequence[str]] = None, k: int = max(KS),
) -> dict:
    """:func:`evaluate` over a collection that already holds the holdout and nothing else
    (one rebuilt from a collection :func:`evaluate` filled): no image is embedded for it."""
    return _measure(_holdout_rows(manifest, split, label), settings, None, label, templates, k)


def _measure(rows: list[dict], settings: Settings, stored: Optional[int], label: str,
             templates: Optional[Sequence[str]], k: int) -> dict:
    """Text and image queries for the holdout ``rows`` against the configured collection;
    ``stored`` is how many rows the embed job left there (None: count and check them)."""
    from pixlake.platform.corpus import HOLDOUT_TEMPLATES, query_text
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.query import encode_query, open_collection, read_image_file

    encoder = load_encoder(settings.encoder.model, settings.encoder.pretrained, settings.encoder.device)
    collection = open_collection(settings, encoder.fingerprint)
    tenant = settings.job.tenant

    def relevance(hits: list[dict], want: str) -> list[bool]:
        return [str(h["meta"].get(label)) == want for h in hits]

    try:
        if stored is None:
            stored = collection.store.count()
            if not 0 < stored <= len(rows):  # fewer when the embed job rejected some images
                raise StoreError(f"collection {settings.store.collection} holds {stored} rows, not the evaluation "
                                 f"set's {len(rows)}")
        text = []
        for value in sorted({str(r[label]) for r in rows}):
            for template in templates or HOLDOUT_TEMPLATES:
                vector = encode_query(encoder, text=query_text(value, template))
                text.append(relevance(collection.search(vector, k, tenant), value))
        image = []
        for row in rows:
            vector = encode_query(encoder, image=read_image_file(Path(row["path"])), limits=settings.job.decode)
            hits = [h for h in collection.search(vector, k + 1, tenant) if os.path.realpath(h["source"]) != row["path"]][:k]
            image.append(relevance(hits, str(row[label])))
    finally:
        collection.close()
    log.info("evaluated %d text and %d image queries over %d rows", len(text), len(image), stored)
    return {"text_to_image": score(text), "image_to_image": score(image),
            "queries": {"text_to_image": len(text), "image_to_image": len(image)}, "rows": stored}
