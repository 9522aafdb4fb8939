"""The HTTP API against the real Serve app on loopback: every endpoint and error path."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from pixlake.platform.query import combine

A = {"Authorization": "Bearer ka"}  # acme: search + embed
B = {"Authorization": "Bearer kb"}  # globex: search
EMBED_ONLY = {"Authorization": "Bearer ke"}


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _post(served, path, json=None, headers=A, **kw):
    return requests.post(served["url"] + path, json=json, headers=headers, timeout=60, **kw)


def _assert_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"error", "message"} and body["message"]
    if code:
        assert body["error"] == code, body


def _of(served, tenant):
    return [p for p, t in zip(served["images"], served["tenants"]) if t == tenant]


def test_image_search_finds_itself_within_the_keys_tenant(served):
    for path in _of(served, "acme")[:3]:
        resp = _post(served, "/v1/search", {"image": _b64(path), "k": 5})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"results", "model", "took_ms"} and body["model"].startswith("pixlake-tiny:")
        assert body["results"][0]["source"] == str(path) and body["results"][0]["score"] > 0.999
        assert set(body["results"][0]) == {"id", "source", "score", "meta", "copies"}
        assert body["results"][0]["copies"] is None  # counted only when collapsing


def test_tenant_isolation_whatever_the_request_says(served):
    acme = set(map(str, _of(served, "acme")))
    query = _of(served, "acme")[0]
    # globex's key, querying with an acme image and asking for every row: only globex rows come back.
    resp = _post(served, "/v1/search", {"image": _b64(query), "k": 1000}, headers=B)
    sources = {h["source"] for h in resp.json()["results"]}
    assert resp.status_code == 200 and sources and not (sources & acme)
    assert len(sources) == len(_of(served, "globex"))


def test_text_and_combined_search_and_filters(served, tiny_encoder):
    resp = _post(served, "/v1/search", {"text": "a red circle", "k": 3})
    assert resp.status_code == 200 and len(resp.json()["results"]) == 3
    acme = _of(served, "acme")
    image = acme[1]
    both = _post(served, "/v1/search", {"text": "a red circle", "image": _b64(image), "weights": {"text": 0.1, "image": 0.9}, "k": 1})
    # the expected winner, by exact search with the weighted, re-normalised query computed here
    vectors = tiny_encoder.embed_images([Image.open(p).convert("RGB") for p in acme])
    query = combine([tiny_encoder.embed_texts(["a red circle"])[0], vectors[1]], [0.1, 0.9])
    assert both.status_code == 200 and both.json()["results"][0]["source"] == str(acme[int(np.argmax(vectors @ query))])
    filtered = _post(served, "/v1/search", {"text": "a shape", "k": 50, "filter": {"label": "l2"}})
    assert filtered.status_code == 200
    assert {h["meta"]["label"] for h in filtered.json()["results"]} == {"l2"}
    membership = _post(served, "/v1/search", {"text": "a shape", "k": 50, "filter": {"label": ["l0", "l2"]}})
    assert {h["meta"]["label"] for h in membership.json()["results"]} == {"l0", "l2"}


def test_multipart_image_search(served):
    path = _of(served, "acme")[2]
    with open(path, "rb") as f:
        resp = requests.post(served["url"] + "/v1/search/image", files={"file": ("q.png", f, "image/png")},
                             data={"k": "2"}, headers=A, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["source"] == str(path) and len(resp.json()["results"]) == 2


def test_embed_matches_the_stored_vector_space(served, tiny_encoder):
    resp = _post(served, "/v1/embed", {"text": "a red circle"}, headers=EMBED_ONLY)
    assert resp.status_code == 200
    vector = resp.json()["vector"]
    expected = tiny_encoder.embed_texts(["a red circle"])[0]
    assert len(vector) == 32 and sum(a * b for a, b in zip(vector, expected)) > 0.999
    image = _post(served, "/v1/embed", {"image": _b64(_of(served, "acme")[0])}, headers=EMBED_ONLY)
    assert image.status_code == 200 and len(image.json()["vector"]) == 32


def test_collections_health_ready_metrics(served):
    resp = requests.get(served["url"] + "/v1/collections", headers=A, timeout=30)
    assert resp.status_code == 200
    (info,) = resp.json()["collections"]
    # rows of the key's own tenant only: acme holds half of the 40 shared-corpus images
    assert info["name"] == "images" and info["rows"] == served["tenants"].count("acme") and info["index_type"] == "HNSW"
    initech = _post(served, "/v1/search", {"text": "a shape", "k": 1000}, headers={"Authorization": "Bearer ky"})
    other = requests.get(served["url"] + "/v1/collections", headers={"Authorization": "Bearer ky"}, timeout=30)
    # initech's rows (an erasure test may have removed some), however many acme and globex hold
    assert other.json()["collections"][0]["rows"] == len(initech.json()["results"])
    assert info["encryption"] is True
    assert info["model"].startswith("pixlake-tiny:")
    assert requests.get(served["url"] + "/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(served["url"] + "/readyz", timeout=30).status_code == 200
    _post(served, "/v1/search", {"text": "x"})
    metrics = requests.get(served["url"] + "/metrics", timeout=30)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'route="/v1/search"' in text and "encoder_batch_size" in text and "request_latency_seconds" in text


@pytest.mark.parametrize(
    "headers, status, code",
    [({}, 401, "unauthorized"), ({"Authorization": "Bearer nope"}, 401, "unauthorized"),
     ({"Authorization": "Basic a2E6"}, 401, "unauthorized"), (EMBED_ONLY, 403, "forbidden")],
)
def test_auth_errors(served, headers, status, code):
    _assert_error(_post(served, "/v1/search", {"text": "x"}, headers=headers), status, code)


def test_missing_scope_for_embed(served):
    _assert_error(_post(served, "/v1/embed", {"text": "x"}, headers=B), 403, "forbidden")


@pytest.mark.parametrize(
    "body, field",
    [({}, "text"), ({"text": "x", "k": 0}, "k"), ({"text": "x", "k": 1001}, "k"), ({"text": "x", "extra": 1}, "extra"),
     ({"image": "###"}, "image"), ({"text": "x", "filter": {"bad key!": "v"}}, "filter"),
     ({"text": "x", "weights": {"text": 0, "image": 0}}, "weights"), ({"text": "x", "collection": "other"}, None),
     ({"text": "x", "item_id": "a" * 64}, "item_id"), ({"text": "x", "min_score": 1.01}, "min_score"),
     ({"text": "x", "min_score": -2}, "min_score"), ({"item_id": ""}, "item_id"), ({"item_id": "a" * 129}, "item_id"),
     ({"text": "x", "collapse_duplicates": "maybe"}, "collapse_duplicates")],
)
def test_invalid_requests_get_4xx_json(served, body, field):
    resp = _post(served, "/v1/search", body)
    assert resp.status_code in (404, 422), resp.text
    _assert_error(resp, resp.status_code)
    if field:
        assert field in resp.json()["message"]


# Every must-reject file of tests/badinputs.py and the (status, error) a search with it gets:
# not a decodable image format 415, too many pixels 413, broken data 422.
BAD_IMAGE_ANSWERS = {
    "truncated.jpg": (422, "undecodable_image"),
    "empty.jpg": (422, "invalid_request"),  # an empty "image" fails the request schema
    "text.jpg": (415, "unsupported_media_type"),
    "page.png": (415, "unsupported_media_type"),
    "portable_pixmap.jpg": (415, "unsupported_media_type"),
    "junk_header.jpg": (422, "undecodable_image"),
    "bomb.png": (413, "payload_too_large"),
    "bomb_huge.png": (413, "payload_too_large"),
}


def test_bad_images(served, tmp_path):
    from tests.badinputs import write_bad_input_corpus

    _, reject = write_bad_input_corpus(tmp_path)
    assert set(BAD_IMAGE_ANSWERS) == set(reject), "every bad input has exactly one expected answer"
    answers = {}
    for name, path in reject.items():
        resp = _post(served, "/v1/search", {"image": _b64(path)})
        _assert_error(resp, resp.status_code)
        answers[name] = (resp.status_code, resp.json()["error"])
    assert answers == BAD_IMAGE_ANSWERS
    big = io.BytesIO()
    Image.effect_noise((800, 800), 64).convert("RGB").save(big, "PNG")  # ~ >1 MB of noise
    resp = _post(served, "/v1/search", {"image": base64.b64encode(big.getvalue()).decode()})
    _assert_error(resp, 413, "payload_too_large")


def test_body_over_the_cap_is_413(served):
    resp = _post(served, "/v1/search", {"text": "x", "image": "A" * 2_100_000})
    _assert_error(resp, 413, "payload_too_large")


def test_rate_limit_answers_429_with_retry_after(served):
    headers = {"Authorization": "Bearer kr"}
    statuses = [requests.get(served["url"] + "/v1/collections", headers=headers, timeout=30) for _ in range(155)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
    _assert_error(limited[0], 429, "rate_limited")
    # Another key is not affected.
    assert requests.get(served["url"] + "/v1/collections", headers=A, timeout=30).status_code == 200


def test_concurrent_clients_get_their_own_answers(served):
    paths = _of(served, "acme") + _of(served, "acme")

    def one(path):
        resp = _post(served, "/v1/search", {"image": _b64(path), "k": 1})
        return path, resp.status_code, resp.json()["results"][0]["source"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, paths))
    assert all(status == 200 and source == str(path) for path, status, source in answers)


def test_server_keeps_serving_after_bad_input(served):
    requests.post(served["url"] + "/v1/search", data=b"{not json", headers={**A, "Content-Type": "application/json"}, timeout=30)
    assert _post(served, "/v1/search", {"text": "still here"}).status_code == 200


def test_serving_a_lite_collection_past_the_crossover_prints_how_to_move_it(tmp_path, monkeypatch, capsys):
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.store import MilvusStore
    from pixlake.serve.config import ServeSettings
    from pixlake.serve.run import check_model_matches

    fingerprint = load_encoder("pixlake-tiny", "none", device="cpu").fingerprint
    db = str(tmp_path / "m.db")
    with MilvusStore(db, "images") as store:
        store.ensure_collection(32, fingerprint)
        store.upsert([{"id": f"r{i}", "tenant": "t", "subject": "s", "content_hash": "h", "source": "x", "model": fingerprint,
                       "meta": {}, "nonce": "", "key_id": "", "vector": [1.0] + [0.0] * 31} for i in range(3)])
    settings = ServeSettings(db=db, collection="images", model="pixlake-tiny", pretrained="none")
    check_model_matches(settings)
    assert "hint" not in capsys.readouterr().err  # 3 rows: below the crossover
    monkeypatch.setattr("pixlake.platform.collection.LITE_CROSSOVER_ROWS", 3)
    check_model_matches(settings)
    err = capsys.readouterr().err
    assert err.startswith("pixlake: hint: images holds 3 rows on milvus-lite") and str(tmp_path / "m.governance") in err


def test_serving_with_another_encoder_is_refused(tmp_path):
    """The query encoder must have the collection's fingerprint (checked before deploying)."""
    from pixlake.platform.errors import StoreError
    from pixlake.platform.store import MilvusStore
    from pixlake.serve.config import ServeSettings
    from pixlake.serve.run import check_model_matches

    db = str(tmp_path / "m.db")
    store = MilvusStore(db, "images")
    store.ensure_collection(32, "other-model:0123456789abcdef")
    store.upsert([{"id": "a", "tenant": "t", "subject": "s", "content_hash": "h", "source": "x", "model": "other-model:0123456789abcdef",
                   "meta": {}, "nonce": "", "key_id": "", "vector": [1.0] + [0.0] * 31}])
    store.close()
    settings = ServeSettings(db=db, collection="images", model="pixlake-tiny", pretrained="none")
    with pytest.raises(StoreError, match="holds embeddings of other-model"):
        check_model_matches(settings)
    with pytest.raises(StoreError, match="no collection"):
        check_model_matches(settings.model_copy(update={"collection": "missing"}))


def _ids_by_source(served, headers=A):
    resp = _post(served, "/v1/search", {"text": "a photo", "k": 1000}, headers=headers)
    assert resp.status_code == 200, resp.text
    return {h["source"]: h["id"] for h in resp.json()["results"]}


def test_more_like_this_leaves_the_item_out_and_stays_in_the_tenant(served):
    acme = _ids_by_source(served)
    item = acme[str(_of(served, "acme")[0])]
    resp = _post(served, "/v1/search", {"item_id": item, "k": 1000})
    assert resp.status_code == 200, resp.text
    shown = {h["id"] for h in resp.json()["results"]}
    assert item not in shown and shown == set(acme.values()) - {item}  # every other acme row, no globex row
    by_image = _post(served, "/v1/search", {"image": _b64(_of(served, "acme")[0]), "k": 5}).json()["results"]
    like = resp.json()["results"][:4]
    assert [h["id"] for h in like] == [h["id"] for h in by_image if h["id"] != item][:4]  # same ranking as its image


def test_more_like_this_of_another_tenants_or_an_unknown_item_is_the_same_404(served):
    globex_item = next(iter(_ids_by_source(served, B).values()))
    answers = [_post(served, "/v1/search", {"item_id": i, "k": 3}) for i in (globex_item, "0" * 64, "not-an-id")]
    for resp in answers:
        _assert_error(resp, 404, "not_found")
    assert len({r.json()["message"].replace(i, "") for r, i in zip(answers, (globex_item, "0" * 64, "not-an-id"))}) == 1


def test_min_score_and_collapse_duplicates(served, tiny_encoder):
    query = {"image": _b64(_of(served, "acme")[1]), "k": 1000}
    everything = _post(served, "/v1/search", query).json()["results"]
    cut = everything[len(everything) // 2]["score"]
    above = _post(served, "/v1/search", {**query, "min_score": cut}).json()["results"]
    assert above == [h for h in everything if h["score"] >= cut] and len(above) < len(everything)
    collapsed = _post(served, "/v1/search", {**query, "collapse_duplicates": True}).json()["results"]
    # every candidate is fetched (k covers the tenant): each row is a hit or one of a hit's copies
    assert sum(1 + h["copies"] for h in collapsed) == len(everything)
    vectors = tiny_encoder.embed_images([Image.open(h["source"]).convert("RGB") for h in collapsed])
    near = vectors @ vectors.T - np.eye(len(collapsed))
    assert near.max() < 0.95 + 1e-3  # no two hits are near-duplicates (the margin: this decode vs the job's)
