"""Re-index a live collection into its next version, gate it on quality, promote it.

Two ways to build the candidate (:mod:`pixlake.platform.lifecycle` names and switches it):
- **re-embed** when the encoder changes: the embed job runs over the source with the new
  encoder into the new version;
- **rebuild** when only the index plan or the encryption's beta changes: the rows are read
  back, decrypted and re-encrypted into the new version, without touching an image.

The gate runs the evaluation job (:func:`~pixlake.platform.evaluation.evaluate`) for the
current and the candidate configuration on the same labelled holdout, each into a scratch
collection dropped afterwards (a rebuild's candidate scratch is rebuilt from the current
one), and promotes only if no query type's recall@10 falls by more than ``max_recall_drop``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from pixlake.platform import lifecycle
from pixlake.platform.collection import QueryCollection, open_collection
from pixlake.platform.errors import ConfigError, StoreError
from pixlake.platform.settings import Settings
from pixlake.platform.store import MilvusStore

log = logging.getLogger(__name__)

GATE_METRIC = "recall@10"


def _with(settings: Settings, collection: str, candidate: Optional[Settings] = None) -> Settings:
    """``settings`` (or the candidate's encoder, index plan and governance) writing into ``collection``."""
    base = candidate or settings
    return base.model_copy(update={"store": base.store.model_copy(update={"collection": collection})})


def gate(current: dict, candidate: dict, max_drop: float) -> dict:
    """Compare two evaluation results: ``{"passed", "max_recall_drop", "by_query_type": {type:
    {"current", "candidate", "change"}}}``; passed when no type drops more than ``max_drop``."""
    from pixlake.platform.evaluation import QUERY_TYPES

    by_type = {}
    for kind in QUERY_TYPES:
        a, b = current[kind][GATE_METRIC], candidate[kind][GATE_METRIC]
        by_type[kind] = {"current": a, "candidate": b, "change": round(b - a, 4)}
    passed = all(v["change"] >= -max_drop for v in by_type.values())
    return {"passed": passed, "metric": GATE_METRIC, "max_recall_drop": max_drop, "by_query_type": by_type}


def _evaluate_both(manifest: str, settings: Settings, candidate: Settings, mode: str, target: str) -> dict:
    """The gate's evaluations of the current and the candidate configuration, each through a
    scratch collection dropped afterwards. A rebuild's candidate scratch is rebuilt from the
    current one, as the version itself is: the holdout is embedded once, and the gate
    measures what a rebuild makes."""
    from pixlake.platform.evaluation import evaluate, evaluate_stored

    current, proposed = _with(settings, f"{target}_eval_current"), _with(settings, f"{target}_eval_candidate", candidate)
    try:
        result = {"current": evaluate(manifest, current)}
        if mode == "rebuild":
            with MilvusStore.configured(current.store) as source_store, open_collection(proposed) as target:
                rebuild(source_store, target)
            result["candidate"] = evaluate_stored(manifest, proposed)
        else:
            result["candidate"] = evaluate(manifest, proposed)
        return result
    finally:
        for scratch in (current, proposed):
            with MilvusStore.configured(scratch.store) as store:
                store.drop()


def rebuild(source: MilvusStore, target: QueryCollection) -> int:
    """Copy every row of ``source`` into ``target`` re-encrypted under the target's
    governance settings (the candidate's beta), decrypting them first: no image is read.
    Returns rows written."""
    from pixlake.platform.compliance.portability import reencrypt

    written = sum(reencrypt(source, target.store, target.governance, tenant) for tenant in lifecycle.tenants(source))
    target.store.flush()
    return written


def reindex(settings: Settings, candidate: Settings, source: Optional[str] = None,
            eval_manifest: Optional[str] = None, max_recall_drop: float = 0.01, promote: bool = True) -> dict:
    """Build the next version of ``settings.store.collection`` with the ``candidate``
    settings, evaluate it against the current configuration, and promote it if the gate passes.

    Args:
        settings: the current configuration (its encoder must be the one the live collection holds).
        candidate: the same with the new encoder, index plan or governance beta.
        source: the corpus to re-embed (needed when the encoder changes).
        eval_manifest: labelled holdout manifest for the gate (required to promote).
        max_recall_drop: the largest fall in recall@10 the gate accepts, per query type.
        promote: switch the live name when the gate passes.

    Returns:
        The reindex report: ``{"collection", "mode", "from", "to", "model_from", "model_to",
        "rows", "evaluation", "gate", "promoted", "switch"}``.

    Raises:
        ConfigError: nothing changes, or a re-embed without a source, or a promotion without a gate.
        StoreError: the live collection is missing, or holds another encoder than configured.
    """
    from pixlake.platform.encoder import load_encoder

    live = settings.store.collection
    lifecycle.check_live_name(live)
    if promote and not eval_manifest:
        raise ConfigError("promotion needs the quality gate: give --eval MANIFEST (or --no-promote)")
    configured = load_encoder(settings.encoder.model, settings.encoder.pretrained, "cpu").fingerprint
    new_model = load_encoder(candidate.encoder.model, candidate.encoder.pretrained, "cpu").fingerprint
    mode = "rebuild" if new_model == configured else "re-embed"
    if mode == "rebuild" and candidate.store.index_plan == settings.store.index_plan and \
            candidate.governance.beta == settings.governance.beta:
        raise ConfigError("nothing changes: give a new --model/--pretrained, --index-plan or --beta")
    if mode == "re-embed" and not source:
        raise ConfigError("a new encoder re-embeds the corpus: give its SOURCE")
    # The store is opened only between jobs: milvus-lite admits one process, and the jobs'
    # store actors are other processes.
    with MilvusStore.configured(settings.store) as store:
        current = lifecycle.resolve(store, live)
        if current is None:
            raise StoreError(f"no collection {live} in {settings.store.db}; run `pixlake embed` first")
        held = store.model()
        if held is not None and held != configured:
            raise StoreError(f"{live} holds embeddings of {held}, not of the configured encoder {configured}: "
                             "configure the current encoder (--config/PIXLAKE_ENCODER__*) and pass the new one as flags")
        target = lifecycle.next_version(store, live)
        log.info("%s: building %s by %s from %s", live, target, mode, current)
        if mode == "rebuild":
            with open_collection(_with(settings, target, candidate)) as target_collection, \
                    MilvusStore.configured(_with(settings, current).store) as source_store:
                rows = rebuild(source_store, target_collection)
    if mode == "re-embed":
        from pixlake.platform.pipeline.job import run_embed_job

        rows = run_embed_job(source, _with(settings, target, candidate)).collection_count
    result: dict[str, Any] = {"collection": live, "mode": mode, "from": current, "to": target,
                              "model_from": configured, "model_to": new_model, "rows": rows,
                              "evaluation": None, "gate": None, "promoted": False, "switch": None}
    if eval_manifest:
        result["evaluation"] = _evaluate_both(eval_manifest, settings, candidate, mode, target)
        result["gate"] = gate(result["evaluation"]["current"], result["evaluation"]["candidate"], max_recall_drop)
    if promote and result["gate"]["passed"] and rows:
        with MilvusStore.configured(settings.store) as store:
            result["switch"] = lifecycle.promote(store, live, target)
        result["promoted"] = True
    return result

