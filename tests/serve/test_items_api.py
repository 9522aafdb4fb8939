"""Live ingest over HTTP against the real Serve app (real Ray, real milvus-lite, encrypted):
``POST /v1/items`` (multipart and JSON), ``GET`` and ``DELETE /v1/items/{id}``, every refusal,
quotas, overload and the freshness metric."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.badinputs import write_bad_input_corpus
from tests.serve.conftest import ITEMS_QUOTA
from tests.serve.test_http_api import BAD_IMAGE_ANSWERS

I = {"Authorization": "Bearer ki"}  # umbrella: search + ingest + delete + erase
N = {"Authorization": "Bearer kn"}  # umbrella: search only
J = {"Authorization": "Bearer kj"}  # acme: ingest + search
C = {"Authorization": "Bearer kc"}  # crash: ingest + search
Q = {"Authorization": "Bearer kq"}  # quota: ingest + search
A = {"Authorization": "Bearer ka"}  # acme: search + embed


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from pixlake.platform.corpus import write_corpus

    return write_corpus(tmp_path_factory.mktemp("uploads"), 10, seed=123)


def _multipart(url, path: Path, headers=I, subject=None, meta=None):
    data = {k: v for k, v in (("subject", subject), ("meta", json.dumps(meta) if meta is not None else None)) if v}
    return requests.post(f"{url}/v1/items", files={"file": (path.name, path.read_bytes())}, data=data,
                         headers=headers, timeout=60)


def _json(url, data: bytes, headers=I, **fields):
    return requests.post(f"{url}/v1/items", json={"image": base64.b64encode(data).decode(), **fields},
                         headers=headers, timeout=60)


def _search(url, path: Path, headers=I, k=5):
    r = requests.post(f"{url}/v1/search", json={"image": base64.b64encode(path.read_bytes()).decode(), "k": k},
                      headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _error(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and body["message"], body


def test_create_then_exists_then_get_then_delete(served, images):
    url = served["url"]
    created = _multipart(url, images[0], subject="ann", meta={"label": "first", "n": 1})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "status", "searchable_after_ms"} and body["status"] == "created"
    assert body["searchable_after_ms"] == 0  # milvus-lite: the replica's own search sees it at once
    hits = _search(url, images[0])  # searchable right after the answer
    assert hits[0]["id"] == body["id"] and hits[0]["score"] > 0.999 and hits[0]["meta"]["label"] == "first"

    again = _json(url, images[0].read_bytes(), subject="ann")  # JSON this time: the same row
    assert again.status_code == 200 and again.json()["id"] == body["id"] and again.json()["status"] == "exists"
    other = _json(url, images[0].read_bytes(), subject="bob")
    assert other.status_code == 201 and other.json()["id"] != body["id"]  # another subject: another row

    item = requests.get(f"{url}/v1/items/{body['id']}", headers=N, timeout=30)
    assert item.status_code == 200, item.text
    info = item.json()
    assert set(info) == {"id", "meta", "added_at"} and info["meta"] == {"label": "first", "n": 1}
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", info["added_at"])  # never the vector

    _error(requests.delete(f"{url}/v1/items/{body['id']}", headers=N, timeout=30), 403, "forbidden")  # no delete scope
    gone = requests.delete(f"{url}/v1/items/{body['id']}", headers=I, timeout=30)
    assert gone.status_code == 204 and gone.content == b""
    _error(requests.get(f"{url}/v1/items/{body['id']}", headers=N, timeout=30), 404, "not_found")
    _error(requests.delete(f"{url}/v1/items/{body['id']}", headers=I, timeout=30), 404, "not_found")
    assert body["id"] not in {h["id"] for h in _search(url, images[0])}


def test_the_same_row_id_as_the_batch_job_and_tenant_isolation(served):
    url = served["url"]
    acme_image = next(p for p, t in zip(served["images"], served["tenants"]) if t == "acme")
    stored = _search(url, acme_image, headers=A, k=1)[0]
    # acme's batch job embedded this image (no subject): uploading it again is that row
    same = _multipart(url, acme_image, headers=J)
    assert same.status_code == 200 and same.json() == {"id": stored["id"], "status": "exists", "searchable_after_ms": 0}
    # another tenant's id: the same 404 as an unknown one, for GET and DELETE
    for method in ("get", "delete"):
        _error(getattr(requests, method)(f"{url}/v1/items/{stored['id']}", headers=I, timeout=30), 404, "not_found")
    assert requests.get(f"{url}/v1/items/{stored['id']}", headers=A, timeout=30).status_code == 200


def test_refusals_are_json_4xx_naming_the_reason(served, images, tmp_path):
    url = served["url"]
    _error(requests.post(f"{url}/v1/items", files={"file": ("a.png", images[1].read_bytes())}, timeout=30), 401,
           "unauthorized")
    _error(_multipart(url, images[1], headers=N), 403, "forbidden")  # no ingest scope
    _error(_multipart(url, images[1], meta={"bad key!": 1}), 422, "invalid_meta")
    _error(_multipart(url, images[1], meta={"added_at": "x"}), 422, "invalid_meta")
    _error(requests.post(f"{url}/v1/items", files={"file": ("a.png", images[1].read_bytes())}, data={"meta": "{nope"},
                         headers=I, timeout=30), 422, "invalid_meta")
    _error(requests.post(f"{url}/v1/items", files={"other": ("a.png", b"x")}, headers=I, timeout=30), 422,
           "invalid_request")
    _error(requests.post(f"{url}/v1/items", data=b"raw", headers={**I, "Content-Type": "image/png"}, timeout=30), 415,
           "unsupported_media_type")
    _error(requests.post(f"{url}/v1/items", json={"image": "###"}, headers=I, timeout=30), 422, "invalid_request")
    _error(requests.post(f"{url}/v1/items", json={"image": "aGk=", "extra": 1}, headers=I, timeout=30), 422,
           "invalid_request")
    _error(requests.post(f"{url}/v1/items", data=b"{not json", headers={**I, "Content-Type": "application/json"},
                         timeout=30), 422, "invalid_request")
    _, reject = write_bad_input_corpus(tmp_path / "bad")
    assert set(reject) == set(BAD_IMAGE_ANSWERS)
    for name, path in reject.items():  # the search's answers: the same safe decoder
        _error(_json(url, path.read_bytes()), *BAD_IMAGE_ANSWERS[name])


def test_an_erased_subjects_upload_is_refused_and_the_subject_stays_erased(served, images):
    url = served["url"]
    first = _multipart(url, images[3], subject="gone")
    assert first.status_code == 201, first.text
    erasure = requests.post(f"{url}/v1/erasures", json={"subject": "gone"}, headers=I, timeout=30)
    assert erasure.status_code == 202, erasure.text
    erasure_id, deadline = erasure.json()["erasure_id"], time.monotonic() + 120
    while (receipt := requests.get(f"{url}/v1/erasures/{erasure_id}", headers=I, timeout=30).json())["status"] != "completed":
        assert time.monotonic() < deadline, receipt
        time.sleep(0.5)
    _error(_multipart(url, images[4], subject="gone"), 409, "erased_subject")
    _error(_json(url, images[3].read_bytes(), subject="gone"), 409, "erased_subject")
    _error(requests.get(f"{url}/v1/items/{first.json()['id']}", headers=I, timeout=30), 404, "not_found")
    assert first.json()["id"] not in {h["id"] for h in _search(url, images[3])}


def test_concurrent_uploads_of_one_image_make_one_row(served, images):
    url = served["url"]

    def upload(_):
        for _ in range(50):  # overload answers 503 with Retry-After: a client waits and retries
            r = _json(url, images[5].read_bytes(), subject="many")
            if r.status_code != 503:
                return r
            assert r.headers["Retry-After"]
            time.sleep(0.2)
        return r

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(upload, range(8)))
    assert {r.status_code for r in answers} <= {200, 201}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.json()["status"] == "created" for r in answers) == 1
    hits = _search(url, images[5], k=10)
    assert sum(h["id"] == answers[0].json()["id"] for h in hits) == 1


def _png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32 + i % 7, 32 + i // 7), ((i * 37) % 256, (i * 91) % 256, 40)).save(out, "PNG")
    return out.getvalue()


def test_quota_and_overload(served, images):
    url = served["url"]
    not_images = [_json(url, f"extra-{i}".encode() + _png(i), headers=Q) for i in range(2)]
    assert {r.status_code for r in not_images} == {415}  # refused by the decoder: they count nothing
    statuses = [_json(url, _png(i), headers=Q).status_code for i in range(ITEMS_QUOTA)]
    assert statuses == [201] * ITEMS_QUOTA
    _error(_json(url, _png(ITEMS_QUOTA), headers=Q), 403, "quota_exceeded")
    assert _json(url, _png(0), headers=Q).status_code == 200  # an image it holds is still "exists"

    burst = ThreadPoolExecutor(24)
    results = list(burst.map(lambda i: _json(url, images[6].read_bytes(), subject="burst"), range(24)))
    overloaded = [r for r in results if r.status_code == 503]
    assert overloaded, [r.status_code for r in results]  # 4 uploads in progress at most per replica
    assert all(r.json()["error"] == "overloaded" and r.headers["Retry-After"] == "1" for r in overloaded)
    assert {r.status_code for r in results} <= {200, 201, 503} and any(r.status_code == 201 for r in results)


def test_freshness_and_outcomes_are_exported(served, images):
    url = served["url"]
    assert _multipart(url, images[7], subject="fresh").status_code == 201
    deadline = time.monotonic() + 30
    while True:
        text = requests.get(f"{url}/metrics", timeout=30).text
        count = re.search(r"^pixlake_ingest_freshness_seconds_count (\S+)$", text, re.M)
        if count and float(count.group(1)) >= 1:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.2)
    assert re.search(r'^pixlake_ingest_requests_total\{status="created"\} [1-9]', text, re.M)
    assert re.search(r'^pixlake_ingest_freshness_seconds_bucket\{le="1.0"\} [1-9]', text, re.M)  # within a second


def test_a_searcher_killed_under_upload_load_loses_no_acknowledged_upload(served):
    """SIGKILL the Searcher replica (the writer) while uploads run: every 2xx is a whole row
    after, found by GET and by a search with its image; every other upload was refused
    cleanly, and a row it may have left is whole too."""
    import os
    import signal
    import threading

    from tests.serve.test_replica_faults import _replica_pids

    url = served["url"]
    before = _replica_pids("Searcher")
    assert len(before) == 1, before
    answers: dict[int, requests.Response | str] = {}

    def upload(i: int) -> None:
        try:
            answers[i] = _json(url, _png(1000 + i), headers=C)
        except requests.RequestException as e:
            answers[i] = type(e).__name__

    threads = []
    for i in range(ITEMS_QUOTA - 2):
        threads.append(threading.Thread(target=upload, args=(i,)))
        threads[-1].start()
        if i == 8:
            os.kill(before[0], signal.SIGKILL)
        time.sleep(0.1)
    for t in threads:
        t.join()
    acknowledged = {i: r.json()["id"] for i, r in answers.items() if not isinstance(r, str) and r.status_code in (200, 201)}
    refused = {i: r for i, r in answers.items() if i not in acknowledged}
    shown = {i: (r.status_code, r.json().get("error")) if not isinstance(r, str) else r for i, r in answers.items()}
    assert len(acknowledged) > 9, shown  # those before the kill, and some after it
    for r in refused.values():  # while the replica comes back: 503 (uploads wait for it, the rest are turned away)
        assert not isinstance(r, str) and r.status_code == 503 and r.json()["error"] in ("unavailable", "overloaded"), shown
        assert r.headers["Retry-After"]
    for i, item_id in acknowledged.items():
        assert requests.get(f"{url}/v1/items/{item_id}", headers=C, timeout=60).status_code == 200
        r = requests.post(f"{url}/v1/search", json={"image": base64.b64encode(_png(1000 + i)).decode(), "k": 1},
                          headers=C, timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["id"] == item_id
    assert [p for p in _replica_pids("Searcher") if p != before[0]]  # replaced, no restart by hand
