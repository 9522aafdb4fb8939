"""Tests for pixlake.serve.metrics: private registry, observations, exposition, merging."""

from __future__ import annotations

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pixlake.serve.metrics import Metrics


def _samples(body: bytes) -> dict:
    """(sample name, sorted labels) -> value, parsed strictly by prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def _families(body: bytes) -> list[str]:
    return [line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")]


def test_uses_private_registry():
    a, b = Metrics(), Metrics()  # a second instance would clash in a shared registry
    assert a.registry is not prometheus_client.REGISTRY
    assert a.registry is not b.registry
    a.observe_request("/private-registry-probe", "GET", 200, 0.01)
    assert b"/private-registry-probe" in a.render()[0]
    assert b"/private-registry-probe" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    assert b"/private-registry-probe" not in b.render()[0]


def test_render_after_requests():
    m = Metrics()
    m.observe_request("/v1/search", "post", 200, 0.004)
    m.observe_request("/v1/search", "POST", 200, 0.2)
    m.observe_request("/v1/search", "POST", 429, 0.0005)
    m.observe_request("/v1/embed", "POST", 401, 12.0)
    body, content_type = m.render()
    text = body.decode()
    assert "pixlake_requests_total" in text
    assert "pixlake_request_latency_seconds" in text
    assert "pixlake_encoder_batch_size" in text
    s = _samples(body)
    assert s[("pixlake_requests_total", (("method", "POST"), ("route", "/v1/search"), ("status", "200")))] == 2
    assert s[("pixlake_requests_total", (("method", "POST"), ("route", "/v1/search"), ("status", "429")))] == 1
    assert s[("pixlake_requests_total", (("method", "POST"), ("route", "/v1/embed"), ("status", "401")))] == 1
    assert s[("pixlake_request_latency_seconds_count", (("route", "/v1/search"),))] == 3
    assert s[("pixlake_request_latency_seconds_bucket", (("le", "0.001"), ("route", "/v1/search")))] == 1
    assert s[("pixlake_request_latency_seconds_bucket", (("le", "0.005"), ("route", "/v1/search")))] == 2
    assert s[("pixlake_request_latency_seconds_bucket", (("le", "10.0"), ("route", "/v1/embed")))] == 0
    assert s[("pixlake_request_latency_seconds_bucket", (("le", "+Inf"), ("route", "/v1/embed")))] == 1
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")


def test_latency_buckets_span_1ms_to_10s():
    m = Metrics()
    m.observe_request("/r", "GET", 200, 0.5)
    les = sorted(
        float(dict(labels)["le"])
        for (name, labels) in _samples(m.render()[0])
        if name == "pixlake_request_latency_seconds_bucket"
    )
    assert les[0] == 0.001
    assert les[-2] == 10.0 and les[-1] == float("inf")


def test_render_after_batches():
    m = Metrics()
    for size in (1, 3, 64, 100):
        m.observe_batch("image", size)
    m.observe_batch("text", 8)
    s = _samples(m.render()[0])
    assert s[("pixlake_encoder_batch_size_count", (("kind", "image"),))] == 4
    assert s[("pixlake_encoder_batch_size_sum", (("kind", "image"),))] == 168
    assert s[("pixlake_encoder_batch_size_bucket", (("kind", "image"), ("le", "4.0")))] == 2
    assert s[("pixlake_encoder_batch_size_bucket", (("kind", "image"), ("le", "64.0")))] == 3
    assert s[("pixlake_encoder_batch_size_bucket", (("kind", "image"), ("le", "+Inf")))] == 4
    assert s[("pixlake_encoder_batch_size_count", (("kind", "text"),))] == 1
    les = {dict(labels)["le"] for (name, labels) in s if name == "pixlake_encoder_batch_size_bucket"}
    assert les == {"1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "+Inf"}


def test_observe_batch_rejects_unknown_kind():
    with pytest.raises(ValueError):
        Metrics().observe_batch("audio", 4)


def test_render_with_merges_encoder_metrics():
    ingress, encoder = Metrics(), Metrics(ingest=False)  # as the app makes them
    ingress.observe_request("/v1/search", "POST", 200, 0.03)
    encoder.observe_batch("text", 5)
    body, content_type = ingress.render_with(encoder.render()[0])
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    s = _samples(body)  # strict parse: each family declared once, no duplicate series
    assert s[("pixlake_requests_total", (("method", "POST"), ("route", "/v1/search"), ("status", "200")))] == 1
    assert s[("pixlake_encoder_batch_size_count", (("kind", "text"),))] == 1
    families = _families(body)
    assert len(families) == len(set(families))


def test_render_with_includes_arbitrary_extra_text():
    m = Metrics()
    extra = b"# HELP other_up Another process.\n# TYPE other_up gauge\nother_up 1.0\n"
    body, _ = m.render_with(extra)
    assert body.startswith(m.render()[0].split(b"\n")[0])
    assert b"# TYPE other_up gauge\nother_up 1.0\n" in body
    assert _samples(body)[("other_up", ())] == 1


def test_render_with_empty_extra_is_render():
    m = Metrics()
    m.observe_request("/r", "GET", 200, 0.1)
    assert _samples(m.render_with(b"")[0]) == _samples(m.render()[0])


def test_thumbnail_cache_is_read_at_scrape_time_and_a_new_cache_replaces_the_old():
    from pixlake.platform.thumbnails import ThumbnailCache

    m, cache = Metrics(), ThumbnailCache(max_bytes=1000)
    m.watch_thumbnail_cache(cache)
    assert cache.get(("h", 32)) is None
    cache.put(("h", 32), b"x" * 300)
    assert cache.get(("h", 32)) == b"x" * 300
    assert cache.get(("h", 32)) is not None
    s = _samples(m.render()[0])
    assert s[("pixlake_thumbnail_cache_lookups_total", (("result", "hit"),))] == 2
    assert s[("pixlake_thumbnail_cache_lookups_total", (("result", "miss"),))] == 1
    assert s[("pixlake_thumbnail_cache_bytes", ())] == 300 and s[("pixlake_thumbnail_cache_entries", ())] == 1
    m.watch_thumbnail_cache(ThumbnailCache())  # e.g. a replica built again in this process
    s = _samples(m.render()[0])
    assert s[("pixlake_thumbnail_cache_lookups_total", (("result", "hit"),))] == 0
    assert s[("pixlake_thumbnail_cache_bytes", ())] == 0
