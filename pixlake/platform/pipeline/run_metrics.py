"""One embed run's metrics: stage latencies and embedding statistics, accumulated in a few
actors (:class:`MetricsShards`), written at the end as a Prometheus text file.

A batch job ends before a scraper comes by, so the job writes its metrics as a file
(``job.metrics_file``, ``--metrics-file``) in Prometheus's text format: node_exporter's
textfile collector picks it up where the job ran, or ``curl --data-binary @file`` pushes it
to a Pushgateway. The Serve app exposes its own metrics on ``/metrics``
(:mod:`pixlake.serve.metrics`); ``docs/grafana-dashboard.json`` charts both.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pixlake.platform.drift import EmbeddingStats

# 1 ms .. 60 s per batch: a decode batch of small images at the bottom, a CPU ViT-L batch near the top.
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGES = ("load", "skip", "decode", "embed", "protect", "write")


class RunMetrics:
    """What the stages report during a run (each shard's actor owns one; see :class:`MetricsShards`).

    Attributes:
        embedding: the run's :class:`~pixlake.platform.drift.EmbeddingStats`.
        stages: stage -> {"buckets": counts per :data:`STAGE_BUCKETS` bound (+Inf last),
            "sum": seconds, "count": batches, "rows": rows}.
        store_retries: store calls the tasks retried while a Milvus server was away.
        first_done: stage -> wall-clock time (``time.time()``) its first batch was reported.
    """

    def __init__(self, dim: int):
        self.embedding = EmbeddingStats(dim)
        self.stages: dict[str, dict] = {}
        self.store_retries = 0
        self.first_done: dict[str, float] = {}

    def count_store_retries(self, n: int) -> None:
        """Add ``n`` store calls a task retried (told only when there were some)."""
        self.store_retries += n

    def observe_stage(self, stage: str, seconds: float, rows: int, embedding: Optional[EmbeddingStats] = None) -> None:
        """Record one batch of ``rows`` that took ``seconds`` in ``stage`` (and, from the embed
        stage, the batch's embedding statistics: one actor call per batch, not two)."""
        self.first_done.setdefault(stage, time.time())
        if embedding is not None:
            self.embedding.add(embedding)
        s = self.stages.setdefault(stage, {"buckets": [0] * (len(STAGE_BUCKETS) + 1), "sum": 0.0, "count": 0, "rows": 0})
        s["buckets"][next((i for i, b in enumerate(STAGE_BUCKETS) if seconds <= b), len(STAGE_BUCKETS))] += 1
        s["sum"] += seconds
        s["count"] += 1
        s["rows"] += rows

    def rows(self, stage: str) -> int:
        """Rows through ``stage`` so far."""
        return self.stages.get(stage, {}).get("rows", 0)

    def merge(self, other: "RunMetrics") -> "RunMetrics":
        """Add ``other``'s observations to this one's (another shard's); returns this one."""
        self.embedding.add(other.embedding)
        self.store_retries += other.store_retries
        for stage, at in other.first_done.items():
            self.first_done[stage] = min(at, self.first_done.get(stage, at))
        for stage, o in other.stages.items():
            s = self.stages.setdefault(stage, {"buckets": [0] * (len(STAGE_BUCKETS) + 1), "sum": 0.0, "count": 0, "rows": 0})
            s["buckets"] = [a + b for a, b in zip(s["buckets"], o["buckets"])]
            for key in ("sum", "count", "rows"):
                s[key] += o[key]
        return self

    def get(self) -> "RunMetrics":
        """This object (what the driver fetches from the actor)."""
        return self

    def close(self) -> None:
        """Nothing to release (the actor's shutdown calls it)."""


class MetricsShards:
    """The run's metrics over one or more actors, so that no one actor need be told of every
    batch of every stage: where the tasks write, as many as the claim shards (one per 16
    cluster CPUs, at least 2); one on milvus-lite and through a store actor. Each
    observation goes to a shard picked at random; reads merge them. Picklable: the stages
    carry it.

    Args:
        shards: proxies of actors that each own a :class:`RunMetrics`.
    """

    def __init__(self, shards: list[Any]):
        self.shards = list(shards)

    def observe_stage(self, stage: str, seconds: float, rows: int, embedding: Optional[EmbeddingStats] = None) -> None:
        """:meth:`RunMetrics.observe_stage` on one shard."""
        random.choice(self.shards).observe_stage(stage, seconds, rows, embedding)

    def count_store_retries(self, n: int) -> None:
        """:meth:`RunMetrics.count_store_retries` on one shard."""
        random.choice(self.shards).count_store_retries(n)

    def rows(self, stage: str) -> int:
        """Rows through ``stage`` so far, over all shards."""
        return sum(shard.rows(stage) for shard in self.shards)

    def get(self) -> RunMetrics:
        """All shards' observations merged (into a new one: what Ray hands back is read-only)."""
        parts = [shard.get() for shard in self.shards]
        return functools.reduce(RunMetrics.merge, parts, RunMetrics(parts[0].embedding.dim))

    def shutdown(self) -> None:
        """End every shard's actor."""
        for shard in self.shards:
            shard.shutdown()


class _Timed:
    def __init__(self, stage: str, fn: Callable[[Any], Any], metrics: Any):
        self.stage, self.fn, self.metrics = stage, fn, metrics

    def __call__(self, batch: Any) -> Any:
        started = time.perf_counter()
        out = self.fn(batch)
        self.metrics.observe_stage(self.stage, time.perf_counter() - started, batch.num_rows)
        return out


def timed(stage: str, fn: Callable[[Any], Any], metrics: Any) -> Callable[[Any], Any]:
    """``fn`` (a task stage's callable), reporting each batch's wall time as ``stage`` to the
    run's metrics actor. The wrapper keeps ``fn``'s class name, which Ray Data names the
    operator (``MapBatches(LoadItems)``) and its worker processes after."""
    return type(type(fn).__name__, (_Timed,), {})(stage, fn, metrics)


# A row is done once it went through the last stage before the write (the sink counts a whole
# write task at once, too late for a progress display).
DONE_STAGE = "protect"
PROGRESS_EVERY_S = 1.0

Progress = Callable[[int, Optional[int]], None]  # (items done, total items or None when unknown)


@contextlib.contextmanager
def reporting_progress(metrics: Any, total: Callable[[], Optional[int]], progress: Optional[Progress]) -> Iterator[None]:
    """While the body runs, call ``progress(done, total)`` every :data:`PROGRESS_EVERY_S` from a
    thread, reading the rows done from the run's metrics actor (``metrics.rows``), and once
    more when the body succeeded. ``total()`` runs in that thread, so a slow count never
    delays the job."""
    if progress is None:
        yield
        return
    stop, known = threading.Event(), []

    def poll() -> None:
        known.append(total())
        while not stop.wait(PROGRESS_EVERY_S):
            progress(metrics.rows(DONE_STAGE), known[0])

    watcher = threading.Thread(target=poll, name="pixlake-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
    progress(metrics.rows(DONE_STAGE), known[0] if known else None)


def write_metrics_file(path: Path, report: Any, metrics: RunMetrics) -> None:
    """Write the run's metrics in Prometheus's text format (atomically: a collector never
    reads half a file).

    Args:
        report: the :class:`~pixlake.platform.pipeline.report.JobReport` (counts, rejections, drift).
        metrics: the run's accumulated :class:`RunMetrics`.
    """
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    labels = {"collection": report.collection, "model": report.model}

    class _Run:
        def collect(self):
            rows = CounterMetricFamily("pixlake_embed_rows", "Rows of the last run, by outcome", labels=[*labels, "status"])
            for status in ("embedded", "skipped", "rejected", "erased"):
                rows.add_metric([*labels.values(), status], getattr(report, status))
            yield rows
            rejected = CounterMetricFamily("pixlake_embed_rejected", "Rejected rows of the last run, by reason code",
                                           labels=[*labels, "reason"])
            listed = Counter(r["reason"].split(":", 1)[0] for r in report.rejections)
            unlisted = report.rejected - sum(listed.values())  # beyond job.max_rejections_listed
            for code, n in sorted((listed + Counter({"unlisted": unlisted} if unlisted else {})).items()):
                rejected.add_metric([*labels.values(), code], n)
            yield rejected
            latency = HistogramMetricFamily("pixlake_embed_stage_batch_seconds", "Wall time of one batch, by stage",
                                            labels=[*labels, "stage"])
            stage_rows = CounterMetricFamily("pixlake_embed_stage_rows", "Rows through each stage", labels=[*labels, "stage"])
            for stage, s in sorted(metrics.stages.items()):
                cumulative, buckets = 0, []
                for bound, n in zip([*map(str, STAGE_BUCKETS), "+Inf"], s["buckets"]):
                    cumulative += n
                    buckets.append((bound, cumulative))
                latency.add_metric([*labels.values(), stage], buckets, s["sum"])
                stage_rows.add_metric([*labels.values(), stage], s["rows"])
            yield latency
            yield stage_rows
            for name, doc, value in (
                ("pixlake_embed_run_seconds", "Wall time of the last run", report.seconds),
                ("pixlake_embed_images_per_second", "Embedded images per second in the last run", report.images_per_s),
                ("pixlake_embed_nonfinite", "Embeddings rejected as NaN/Inf in the last run", metrics.embedding.nonfinite),
                ("pixlake_embed_store_retries", "Store calls retried in the last run while the Milvus server was away",
                 report.store_retries),
                ("pixlake_embed_drift_score", "Drift from the previous run of the collection and model (0 on a first run)",
                 (report.drift or {}).get("score", 0.0)),
                ("pixlake_embed_last_success_timestamp_seconds", "When the last run finished", time.time()),
            ):
                gauge = GaugeMetricFamily(name, doc, labels=list(labels))
                gauge.add_metric(list(labels.values()), value)
                yield gauge

    registry = CollectorRegistry()
    registry.register(_Run())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
