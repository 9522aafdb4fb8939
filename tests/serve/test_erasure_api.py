"""POST /v1/erasures and GET /v1/erasures/{id} against the real app: scope, tenant,
receipt, and the subject gone from search while an identical image of another subject stays."""

from __future__ import annotations

import base64
import time

import requests

X = {"Authorization": "Bearer kx"}  # initech: search + erase
Y = {"Authorization": "Bearer ky"}  # initech: search only
A = {"Authorization": "Bearer ka"}  # acme: search + embed


def _search_initech(served, path) -> list[dict]:
    body = {"image": base64.b64encode(path.read_bytes()).decode(), "k": 10}
    resp = requests.post(served["url"] + "/v1/search", json=body, headers=X, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def _thumbnail(served, item_id) -> int:
    return requests.get(f"{served['url']}/v1/items/{item_id}/thumbnail", headers=X, timeout=30).status_code


def _receipt(served, erasure_id, headers=X):
    return requests.get(f"{served['url']}/v1/erasures/{erasure_id}", headers=headers, timeout=30)


def test_erasure_needs_the_erase_scope_and_a_subject(served):
    for headers, status in ((Y, 403), (A, 403), ({}, 401)):
        resp = requests.post(served["url"] + "/v1/erasures", json={"subject": "erase-me"}, headers=headers, timeout=30)
        assert resp.status_code == status and resp.json()["error"], resp.text
    resp = requests.post(served["url"] + "/v1/erasures", json={"subject": ""}, headers=X, timeout=30)
    assert resp.status_code == 422 and "subject" in resp.text
    assert _receipt(served, "er_0000000000000000").status_code == 404


def test_erasure_over_http_removes_the_subject_and_keeps_the_identical_image_of_another(served):
    kept, erased_only = served["initech"]  # kept: also held by keep-me (identical bytes)
    before = _search_initech(served, kept)
    assert len(before) == 3 and before[0]["score"] > 0.999 and before[1]["score"] > 0.999  # both copies
    thumbnails = {h["id"]: _thumbnail(served, h["id"]) for h in before}
    assert set(thumbnails.values()) == {200}, thumbnails

    resp = requests.post(served["url"] + "/v1/erasures", json={"subject": "erase-me"}, headers=X, timeout=30)
    assert resp.status_code == 202, resp.text
    erasure_id = resp.json()["erasure_id"]
    deadline = time.monotonic() + 120
    while (receipt := _receipt(served, erasure_id).json())["status"] == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert receipt["status"] == "completed" and receipt["verified"] is True, receipt
    steps = {s["name"]: s for s in receipt["steps"]}
    assert list(steps) == ["near_copies", "deny", "shred", "delete", "verify", "compact", "purge_sources"]
    assert steps["delete"]["count"] == 2 and steps["shred"]["count"] == 1 and steps["verify"]["count"] == 0
    assert receipt["near_copies"] == steps["near_copies"]["count"] == 1  # keep-me's identical image, left in place
    assert "erase-me" not in str(receipt)  # a pseudonym, never the raw id
    # a key without the scope is refused; another tenant's erase key does not see it
    assert _receipt(served, erasure_id, headers=Y).status_code == 403
    assert _receipt(served, erasure_id, headers={"Authorization": "Bearer kz"}).status_code == 404

    after = _search_initech(served, kept)
    assert len(after) == 1 and after[0]["score"] > 0.999  # keep-me's identical image, still found first
    # the erased rows' thumbnails are gone too (they were fetched, so cached, before); keep-me's stays
    assert {i: _thumbnail(served, i) for i in thumbnails} == {i: 200 if i == after[0]["id"] else 404 for i in thumbnails}
    assert not any(h["score"] > 0.999 for h in _search_initech(served, erased_only))  # nothing of erase-me left
    # "more like this" of an erased item is the 404 of an unknown one; keep-me's item still answers
    for item_id in thumbnails:
        resp = requests.post(served["url"] + "/v1/search", json={"item_id": item_id, "k": 3}, headers=X, timeout=60)
        assert resp.status_code == (200 if item_id == after[0]["id"] else 404), resp.text
