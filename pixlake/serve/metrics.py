"""Prometheus metrics for the Serve API, on a registry of their own.

Ray itself uses prometheus_client's global default registry, so each :class:`Metrics`
owns a private ``CollectorRegistry``: names never clash with Ray's, and several
instances (one per deployment replica, one per test) can live in one process.

Encoder batch sizes are observed in the encoder deployment's process, not the
ingress's. Rather than ship counts between processes, each process keeps its own
:class:`Metrics`; the encoder exposes ``render()`` as a Ray method and the ingress
serves ``render_with(encoder_text)`` on ``/metrics``, merging the two expositions.
"""

from __future__ import annotations

from typing import Any, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# 1 ms .. 10 s: cached health checks sit at the bottom, CPU image encodes near the top.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Freshness of a live upload, seconds from its 2xx to the first search that returns it.
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_KINDS = ("text", "image")


class Metrics:
    """The Serve API's metrics, in a dedicated registry.

    Attributes:
        registry: the private registry all metrics here are registered in.
        requests_total: Counter of requests, labels (route, method, status).
        request_latency_seconds: Histogram of request latency, label (route).
        encoder_batch_size: Histogram of encoder batch sizes, label (kind: text/image).
        replica_retries_total: Counter of calls retried because a replica was dead or restarting,
            label (deployment).
        Thumbnail cache families, once :meth:`watch_thumbnail_cache` is called:
            ``pixlake_thumbnail_cache_lookups_total`` (label result: hit/miss),
            ``pixlake_thumbnail_cache_bytes`` and ``pixlake_thumbnail_cache_entries``.
    """

    def __init__(self, ingest: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests_total = Counter(
            "pixlake_requests_total", "HTTP requests handled, by route template, method and status code",
            ("route", "method", "status"), registry=self.registry,
        )
        self.request_latency_seconds = Histogram(
            "pixlake_request_latency_seconds", "HTTP request latency in seconds, by route template",
            ("route",), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.encoder_batch_size = Histogram(
            "pixlake_encoder_batch_size", "Inputs per encoder forward pass, by input kind",
            ("kind",), buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.replica_retries_total = Counter(
            "pixlake_replica_retries_total", "Calls retried while a replica of the deployment was restarting",
            ("deployment",), registry=self.registry,
        )

        # The live-ingest families exist in the ingress only: the encoder's exposition is merged
        # into the ingress's, and an unlabelled family declared in both would show twice.
        self.ingest_requests_total = self.ingest_freshness_seconds = self.ingest_freshness_timeouts_total = None
        if ingest:
            self.ingest_requests_total = Counter(
                "pixlake_ingest_requests_total", "Live uploads (POST /v1/items) by outcome: created, exists, or the "
                "refusal's error code", ("status",), registry=self.registry,
            )
            self.ingest_freshness_seconds = Histogram(
                "pixlake_ingest_freshness_seconds", "Seconds from a created upload's answer to the first search that "
                "returns it (measured by searching for it)", buckets=FRESHNESS_BUCKETS, registry=self.registry,
            )
            self.ingest_freshness_timeouts_total = Counter(
                "pixlake_ingest_freshness_timeouts_total", "Created uploads no search returned within the probe's "
                "deadline", registry=self.registry,
            )
        self._thumbnail_cache: Optional[_ThumbnailCacheCollector] = None

    def watch_thumbnail_cache(self, cache: Any) -> None:
        """Export a :class:`pixlake.platform.thumbnails.ThumbnailCache`'s hits, misses and
        size, read from it at scrape time (it counts them itself). A later call watches the
        new cache instead, so a replica constructed again in one process never clashes."""
        if self._thumbnail_cache is not None:
            self.registry.unregister(self._thumbnail_cache)
        self._thumbnail_cache = _ThumbnailCacheCollector(cache)
        self.registry.register(self._thumbnail_cache)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one handled request.

        Args:
            route: the route template (e.g. ``/v1/search``), not the raw path, so ids in
                paths do not explode label cardinality.
            method: HTTP method.
            status: response status code.
            seconds: wall time spent handling the request.
        """
        self.requests_total.labels(route=route, method=method.upper(), status=str(int(status))).inc()
        self.request_latency_seconds.labels(route=route).observe(max(0.0, seconds))

    def observe_upload(self, outcome: str) -> None:
        """Record one live upload's outcome (``created``, ``exists`` or a refusal's code)."""
        self.ingest_requests_total.labels(status=outcome).inc()

    def observe_freshness(self, seconds: Optional[float]) -> None:
        """Record how long a created upload took to show in a search (None: never, within the deadline)."""
        if seconds is None:
            self.ingest_freshness_timeouts_total.inc()
        else:
            self.ingest_freshness_seconds.observe(max(0.0, seconds))

    def observe_replica_retry(self, deployment: str) -> None:
        """Record one call retried because the replica behind it died or was restarting."""
        self.replica_retries_total.labels(deployment=deployment).inc()

    def observe_batch(self, kind: str, size: int) -> None:
        """Record one encoder batch; call it in the process that runs the encoder.

        Args:
            kind: ``"text"`` or ``"image"``.
            size: number of inputs in the batch.

        Raises:
            ValueError: an unknown kind (a programming error).
        """
        if kind not in BATCH_KINDS:
            raise ValueError(f"unknown batch kind {kind!r}; expected one of {BATCH_KINDS}")
        self.encoder_batch_size.labels(kind=kind).observe(size)

    def render(self) -> tuple[bytes, str]:
        """This process's metrics in the Prometheus text format.

        Returns:
            (body, content type) for the ``/metrics`` response.
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def render_with(self, extra: bytes) -> tuple[bytes, str]:
        """This process's metrics merged with another process's exposition text.

        The ingress uses this to serve the encoder deployment's metrics (fetched with a
        Ray call to its ``render()``) on one endpoint. Both processes declare the same
        families, so plain concatenation would repeat ``# HELP``/``# TYPE`` lines, which
        scrapers reject; instead each family is written once, its header from this
        process, followed by this process's samples and then the other's. This relies on
        the two processes observing disjoint series (the ingress observes requests, the
        encoder observes batches); a series observed in both would appear twice.

        Args:
            extra: another process's ``render()`` body (may be empty).

        Returns:
            (body, content type) for the ``/metrics`` response.
        """
        body, content_type = self.render()
        if not extra.strip():
            return body, content_type
        return _merge_expositions(body, extra), content_type


class _ThumbnailCacheCollector:
    """Reads a thumbnail cache's own counters when Prometheus scrapes."""

    def __init__(self, cache: Any):
        self.cache = cache

    def collect(self):
        lookups = CounterMetricFamily("pixlake_thumbnail_cache_lookups",
                                      "Thumbnail cache lookups in this ingress replica, by result", labels=("result",))
        lookups.add_metric(("hit",), self.cache.hits)
        lookups.add_metric(("miss",), self.cache.misses)
        yield lookups
        yield GaugeMetricFamily("pixlake_thumbnail_cache_bytes", "Thumbnail bytes held by this ingress replica's cache",
                                value=self.cache.size_bytes)
        yield GaugeMetricFamily("pixlake_thumbnail_cache_entries", "Thumbnails held by this ingress replica's cache",
                                value=len(self.cache))


def _split_families(text: bytes) -> dict[str, tuple[list[bytes], list[bytes]]]:
    """Split an exposition into families, in order: name -> [header lines, sample lines].

    Samples belong to the family declared by the nearest preceding ``# HELP``/``# TYPE``
    line, which is how ``generate_latest`` lays them out. Lines before any header go
    under the name ``""``.
    """
    families: dict[str, tuple[list[bytes], list[bytes]]] = {}
    current = ""
    for line in text.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            line += b"\n"
        if line.startswith(b"# HELP ") or line.startswith(b"# TYPE "):
            parts = line.split()
            current = parts[2].decode("utf-8", "replace") if len(parts) >= 3 else ""
            headers, _ = families.setdefault(current, ([], []))
            if not any(h.split()[:3] == parts[:3] for h in headers):
                headers.append(line)
        elif line.strip():
            families.setdefault(current, ([], []))[1].append(line)
    return families


def _merge_expositions(first: bytes, second: bytes) -> bytes:
    """Merge two expositions family by family; headers come from whichever declares first."""
    merged = _split_families(first)
    for name, (headers, samples) in _split_families(second).items():
        own_headers, own_samples = merged.setdefault(name, ([], []))
        for h in headers:
            if not any(o.split()[:3] == h.split()[:3] for o in own_headers):
                own_headers.append(h)
        own_samples.extend(samples)
    return b"".join(b"".join(headers) + b"".join(samples) for headers, samples in merged.values())
