"""GET /v1/items/{id}/thumbnail and the page's own files, against the real Serve app."""

from __future__ import annotations

import base64
import io

import requests
from PIL import Image

A = {"Authorization": "Bearer ka"}  # acme: search + embed
B = {"Authorization": "Bearer kb"}  # globex: search
EMBED_ONLY = {"Authorization": "Bearer ke"}  # acme: embed only


def _hits(served, path, headers=A) -> list[dict]:
    body = {"image": base64.b64encode(path.read_bytes()).decode(), "k": 3}
    resp = requests.post(served["url"] + "/v1/search", json=body, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def _thumb(served, item_id, headers=A, **params):
    return requests.get(f"{served['url']}/v1/items/{item_id}/thumbnail", headers=headers, params=params, timeout=30)


def _cache_lookups(served) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    body = requests.get(served["url"] + "/metrics", timeout=30).text
    family = next(f for f in text_string_to_metric_families(body) if f.name == "pixlake_thumbnail_cache_lookups")
    return {s.labels["result"]: s.value for s in family.samples}


def test_thumbnail_is_a_small_jpeg_of_the_source(served):
    path = next(p for p, t in zip(served["images"], served["tenants"]) if t == "acme")
    top = _hits(served, path)[0]
    before = _cache_lookups(served)
    assert top["source"].endswith(path.name)
    resp = _thumb(served, top["id"], size=64)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/jpeg" and "no-cache" in resp.headers["cache-control"]
    thumb = Image.open(io.BytesIO(resp.content))
    assert thumb.format == "JPEG" and max(thumb.size) == 64
    source = Image.open(path).convert("RGB").resize(thumb.size, Image.Resampling.LANCZOS)
    diff = sum(abs(a - b) for a, b in zip(source.tobytes(), thumb.convert("RGB").tobytes())) / len(source.tobytes())
    assert diff < 12, f"the thumbnail does not look like its source (mean abs diff {diff:.1f})"
    # unchanged: the ETag revalidates to a 304 with no body
    again = _thumb(served, top["id"], headers={**A, "If-None-Match": resp.headers["etag"]}, size=64)
    assert again.status_code == 304 and again.content == b""
    assert _thumb(served, top["id"], headers={**A, "If-None-Match": '"other"'}, size=32).status_code == 200
    # two draws (a 304 draws nothing), the second from the replica's cache: /metrics says so
    after = _cache_lookups(served)
    assert sum(after.values()) - sum(before.values()) == 2 and after["hit"] > before["hit"], (before, after)


def test_thumbnail_is_scoped_to_the_keys_tenant(served):
    acme = next(p for p, t in zip(served["images"], served["tenants"]) if t == "acme")
    item = _hits(served, acme)[0]["id"]
    other = _thumb(served, item, headers=B)  # globex's key: as if the item did not exist
    unknown = _thumb(served, "0" * 32, headers=B)
    assert other.status_code == unknown.status_code == 404
    assert other.json()["error"] == unknown.json()["error"] == "not_found"
    for odd in ('x" or tenant != "', item.upper(), item + "0", "ü" * 32, "%00"):  # not an id: no row, never a 5xx
        resp = _thumb(served, odd)
        assert resp.status_code == 404 and resp.json()["error"] == "not_found", (odd, resp.text)


def test_thumbnail_errors_are_4xx_json(served):
    item = _hits(served, served["images"][0])[0]["id"]
    for headers, status, code in (({}, 401, "unauthorized"), ({"Authorization": "Bearer nope"}, 401, "unauthorized"),
                                  (EMBED_ONLY, 403, "forbidden")):
        resp = _thumb(served, item, headers=headers)
        assert resp.status_code == status and resp.json()["error"] == code, resp.text
    for size in (0, 15, 1025, "big"):
        resp = _thumb(served, item, size=size)
        assert resp.status_code == 422 and resp.json()["error"] == "invalid_request" and "size" in resp.json()["message"]


def test_the_page_and_its_files(served):
    page = requests.get(served["url"] + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': no inline script runs
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/page/app.js"' in page.text and 'name="viewport"' in page.text
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        resp = requests.get(f"{served['url']}/page/{name}", timeout=30)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(kind) and resp.content
    for name in ("index.html", "..%2Fapp.py", "missing.js"):
        resp = requests.get(f"{served['url']}/page/{name}", timeout=30)
        assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    spec = requests.get(served["url"] + "/openapi.json", timeout=30).json()
    assert "/v1/items/{item_id}/thumbnail" in spec["paths"] and "/" not in spec["paths"]
