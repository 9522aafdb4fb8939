"""Compose the stages into one Ray Data pipeline and run it.

read → load → skip (deny-list, already embedded, repeats) → decode (CPU tasks) → embed
(actor pool) → protect (encrypt, seal) → write (datasink; deny-list again) → report

The store is reached through one owner actor on milvus-lite and from the tasks themselves on
a Milvus server (:mod:`.job_store`), where claims (:mod:`.claims`) give each id one writer.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Optional

from pixlake.platform.images.device import DECODE_CPU_TASKS, decode_placement
from pixlake.platform.drift import EmbeddingStats, StatsHistory, drift, withheld_reason
from pixlake.platform.encoder import check_model, load_encoder
from pixlake.platform.errors import PixlakeError
from pixlake.platform.governance.service import prepare as prepare_governance
from pixlake.platform.pipeline.claims import shard_count, start_claims
from pixlake.platform.pipeline.decode import DecodeImages
from pixlake.platform.pipeline.embed import EmbedImages
from pixlake.platform.pipeline.job_store import start_job_store, writes_in_tasks
from pixlake.platform.pipeline.load import LoadItems
from pixlake.platform.pipeline.near import KEEP, NearDuplicates
from pixlake.platform.pipeline.protect import ProtectRows
from pixlake.platform.pipeline.report import JobReport
from pixlake.platform.pipeline.run_metrics import Progress, RunMetrics, reporting_progress, timed, write_metrics_file
from pixlake.platform.pipeline.sink import MilvusDatasink
from pixlake.platform.pipeline.skip import SkipExisting
from pixlake.platform.pipeline.startup import start_concurrently
from pixlake.platform.sources.items import ResolvedSource, read_items, resolve_source
from pixlake.platform.ray_runtime import init_ray
from pixlake.platform.settings import Settings
from pixlake.platform.store import backend_of, check_db_location
from pixlake.platform.pipeline.store_actor import start_governance_actor, start_stats

log = logging.getLogger(__name__)
STAGE_BATCH = 128  # rows per call of the CPU stages (load, skip, decode)
FOOTERS_READ = 256  # Parquet files whose footers the progress display reads for a total


def protection(settings: Settings) -> str:
    """One line on how the rows are protected (the report's ``protection``)."""
    g = settings.governance
    if not g.encryption:
        return "NONE: vectors and sources stored in plaintext (--no-encryption)"
    return (f"vectors encrypted (scale-and-perturb, beta {g.beta}, re-rank x{g.rerank_factor}); sources sealed "
            "(AES-256-GCM, per-subject keys)")


def run_embed_job(source: str, settings: Settings, progress: Optional[Progress] = None) -> JobReport:
    """Embed every image of ``source`` into the configured collection.

    Args:
        source: folder, glob, Parquet file/dataset or WebDataset shards (local or URI).
        settings: store, encoder and job settings.
        progress: called about once a second while the pipeline runs, and once at its end,
            with the items done and the total (None when the source does not say).

    Returns:
        The job report (also written to ``settings.job.report`` when set).

    Raises:
        SourceError, ModelError, StoreError, ConfigError: before any work starts, with a
            one-line message.
    """
    import ray.data

    started, started_wall = time.monotonic(), time.time()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    startup: dict[str, float] = {}

    def mark(phase: str) -> None:
        startup[phase] = round(time.monotonic() - started, 2)

    # Check the store location, the source and the model name before starting Ray: a bad
    # flag fails in a second. The model is loaded (the driver needs its fingerprint and
    # preprocessing) while Ray and the job's parts start: both take seconds.
    check_db_location(settings.store.db)
    resolved = resolve_source(source)
    dim = check_model(settings.encoder.model, settings.encoder.pretrained)
    key_dir = prepare_governance(settings)  # after the checks: a bad flag creates no key
    tasks = {"resources": settings.job.task_resources} if settings.job.task_resources else {}
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load_encoder, settings.encoder.model, settings.encoder.pretrained, "cpu")
        init_ray()
        mark("ray")
        cpus = int(ray.cluster_resources().get("CPU", 1))
        claimed = writes_in_tasks(settings)  # on a server the tasks write, and claim ids first
        # Where the tasks write, no one actor may hear of every batch: the metrics are sharded
        # like the claims. Through a store actor that actor bounds the job anyway.
        shards = shard_count(cpus) if claimed else 1
        parts = start_concurrently({
            "governance": lambda: start_governance_actor(settings),  # first: its error (no key source) wins
            "store": lambda: start_job_store(settings),
            "stats": lambda: start_stats(dim, shards),
            "claims": lambda: start_claims(shards) if claimed else None,
            "dataset": lambda: read_items(resolved, tasks),
        })
        governance, store, stats, claims, dataset = (parts[k] for k in ("governance", "store", "stats", "claims", "dataset"))
        mark("owners")
        try:
            encoder = loading.result()
        except BaseException:
            for part in (claims, stats, store, governance):
                if part is not None:
                    part.shutdown()
            raise
        mark("encoder")
    fingerprint, preprocess = encoder.fingerprint, encoder.preprocess
    del encoder, loading  # the driver needs only these; the actors load their own copy
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = settings.job.concurrency or max(gpus, 1)
        index = store.ensure_collection(dim, fingerprint)
        decode = decode_placement(settings.job.gpu_decode, gpus, preprocess)
        # The tasks that write report their store retries to the stats shards.
        stage_store = store.with_metrics(stats) if claimed else store
        pipeline = (
            # Bounded batches keep a task's memory flat however large its input block.
            dataset.map_batches(timed("load", LoadItems(settings.job.tenant, settings.job.decode.max_bytes, governance,
                                                     settings.job.allow_manifest_tenants),
                                           stats), batch_format="pyarrow", batch_size=STAGE_BATCH, **tasks)
            .map_batches(timed("skip", SkipExisting(stage_store, fingerprint, governance, claims), stats), batch_format="pyarrow",
                         batch_size=STAGE_BATCH, **tasks)
            .map_batches(timed("decode", DecodeImages(preprocess, settings.job.decode,
                                                           device_jpeg=decode != DECODE_CPU_TASKS), stats),
                         batch_format="pyarrow", batch_size=STAGE_BATCH, **tasks)
            .map_batches(
                EmbedImages,
                fn_constructor_kwargs={
                    "model": settings.encoder.model,
                    "pretrained": settings.encoder.pretrained,
                    "fingerprint": fingerprint,
                    "threads": max(1, cpus // actors),
                    "device": settings.encoder.device,
                    "limits": settings.job.decode,
                    "stats": stats,
                },
                batch_size=settings.job.batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=actors),  # `concurrency=` is deprecated since Ray 2.51
                num_gpus=1 if gpus else 0,
                # On CPU the actor's torch threads use the cores regardless of its
                # reservation; a fractional one also keeps Ray from fusing decode into the
                # actor, so decode tasks overlap the forward pass as on a GPU cluster.
                num_cpus=1 if gpus else 0.5,
                **({"resources": settings.job.encoder_resources} if settings.job.encoder_resources else {}),
            )
        )
        if settings.job.near_duplicates != KEEP:
            # One actor sees every new row in one order: two new near-copies are handled as a
            # new image against a stored one (pipeline/near.py).
            pipeline = pipeline.map_batches(
                NearDuplicates, fn_constructor_kwargs={
                    "settings": settings, "store": stage_store, "mode": settings.job.near_duplicates,
                    "threshold": settings.job.near_threshold,
                    "candidates": max(settings.governance.rerank_factor, index.rerank_factor or 0)},
                batch_size=settings.job.write_batch_rows, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.1, **tasks)
        # One write batch per protect call: the governance actor is asked once per write batch
        # and tenant, not once per encoder batch.
        pipeline = pipeline.map_batches(timed("protect", ProtectRows(governance, dim), stats), batch_format="pyarrow",
                                        batch_size=settings.job.write_batch_rows, **tasks)
        sink = MilvusDatasink(stage_store, fingerprint, settings.job.max_rejections_listed, governance, stats,
                              settings.job.write_batch_rows)
        mark("pipeline")
        try:
            with reporting_progress(stats, lambda: known_total(resolved), progress):
                pipeline.write_datasink(sink, ray_remote_args=tasks)
        except Exception as e:
            cause = pixlake_cause(e)  # a store that stayed down: its own message, not a Ray trace
            if cause is None or cause is e:
                raise
            raise cause from e
        store.flush()  # the report's counts are durable: a kill after success loses nothing
        count = store.count()
        run_metrics: RunMetrics = stats.get()
        store_retries = store.retry_count() + run_metrics.store_retries
    finally:
        for part in (claims, stats, store, governance):
            if part is not None:
                part.shutdown()
    seconds = time.monotonic() - started
    totals = sink.totals
    report = JobReport(
        run_id=uuid.uuid4().hex[:12],
        model=fingerprint,
        source=source,
        db=settings.store.db,
        backend=backend_of(settings.store.db),
        collection=settings.store.collection,
        index_type=index.index_type,
        index_note=index.reason,
        embedded=totals.get("embedded", 0),
        skipped=totals.get("skipped", 0),
        erased=totals.get("erased", 0),
        rejected=totals.get("rejected", 0),
        rejections=totals.get("rejections", []),
        near_duplicates=totals.get("near_duplicates", 0),
        near_duplicate_rows=totals.get("near_duplicate_rows", []),
        seconds=round(seconds, 3),
        images_per_s=round(totals.get("embedded", 0) / seconds, 2) if seconds else 0.0,
        collection_count=count,
        started_at=started_at,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device="cuda" if gpus else "cpu",
        decode=decode,
        protection=protection(settings),
        store_retries=store_retries,
        startup={**startup, **({"first_embedded": round(run_metrics.first_done["embed"] - started_wall, 2)}
                               if "embed" in run_metrics.first_done else {})},
    )
    record_drift(report, run_metrics.embedding, StatsHistory(key_dir), settings.governance.drift_min_rows)
    if settings.job.report is not None:
        report.write(settings.job.report)
    if settings.job.metrics_file is not None:
        write_metrics_file(settings.job.metrics_file, report, run_metrics)
    return report


def known_total(resolved: ResolvedSource) -> Optional[int]:
    """The items of a source when it says so cheaply: its image files, or the rows its
    Parquet footers declare (up to :data:`FOOTERS_READ` files); None for WebDataset shards."""
    if resolved.kind == "images":
        return len(resolved.files)
    if resolved.kind == "parquet" and len(resolved.files) <= FOOTERS_READ:
        import pyarrow.parquet as pq

        try:
            return sum(pq.read_metadata(f, filesystem=resolved.filesystem).num_rows for f in resolved.files)
        except OSError:  # the read stage reports an unreadable file, not the progress display
            return None
    return None


def pixlake_cause(error: BaseException) -> Optional[PixlakeError]:
    """The :class:`PixlakeError` a stage raised, found inside the exceptions Ray wraps it in."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None)  # a RayTaskError's original exception
        if isinstance(inner, BaseException):
            error = inner
        elif isinstance(error, PixlakeError):
            return error
        else:
            error = error.__cause__ or error.__context__
    return None


def record_drift(report: JobReport, stats: EmbeddingStats, history: StatsHistory, min_rows: int) -> None:
    """Put the run's embedding statistics and its drift from the previous run of the same
    collection and encoder into ``report``, and record this run for the next one (its
    per-dimension moments only when :func:`~pixlake.platform.drift.withheld_reason` allows)."""
    report.embedding_stats = stats.summary()
    previous = history.last(report.db, report.collection, report.model)
    if previous is not None and stats.count:
        report.drift = {"previous_run": previous[0], **drift(previous[1], stats)}
    if stats.count:
        withheld = withheld_reason(stats, min_rows, history.path.parent, report.started_at)
        history.append(report.run_id, report.db, report.collection, report.model, report.finished_at, stats, withheld)
