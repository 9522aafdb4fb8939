"""The API refuses before it reads: attacks on the ingress guard, against the real Serve app.

A hostile client sends bodies without a key, streams hundreds of MB with no declared
length, sends filters Milvus would choke on, and draws thumbnails at every size.
"""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlparse

import psutil
import pytest
import requests

from tests.serve.test_http_api import _assert_error

A = {"Authorization": "Bearer ka"}  # acme: search + embed
EMBED_ONLY = {"Authorization": "Bearer ke"}  # acme: embed only
MB = 1024 * 1024


# --- authentication before the body --------------------------------------------------------

ROUTES = [  # (method, path, a body FastAPI would refuse with 422, needed scope)
    ("POST", "/v1/search", {"json": {"bogus": 1, "k": "many"}}, "search"),
    ("POST", "/v1/search/image", {"data": b"not multipart", "headers": {"Content-Type": "multipart/form-data"}}, "search"),
    ("POST", "/v1/embed", {"json": {}}, "embed"),
    ("POST", "/v1/erasures", {"json": {"subject": ""}}, "erase"),
    ("GET", "/v1/items/x/thumbnail?size=99999", {}, "search"),
    ("GET", "/v1/erasures/x", {}, "erase"),
    ("GET", "/v1/collections", {}, "search"),
    ("POST", "/v1/items", {"json": {"image": ""}}, "ingest"),
    ("GET", "/v1/items/x", {}, "search"),
    ("DELETE", "/v1/items/x", {}, "delete"),
]


@pytest.mark.parametrize("method, path, body, scope", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_no_key_is_401_and_wrong_scope_403_whatever_the_body(served, method, path, body, scope):
    url = served["url"] + path
    headers = body.get("headers", {})
    kwargs = {k: v for k, v in body.items() if k != "headers"}
    _assert_error(requests.request(method, url, headers=headers, timeout=30, **kwargs), 401, "unauthorized")
    bad = {**headers, "Authorization": "Bearer nope"}
    _assert_error(requests.request(method, url, headers=bad, timeout=30, **kwargs), 401, "unauthorized")
    wrong = EMBED_ONLY if scope != "embed" else {"Authorization": "Bearer kb"}
    _assert_error(requests.request(method, url, headers={**headers, **wrong}, timeout=30, **kwargs), 403, "forbidden")


def test_a_valid_key_then_gets_the_validation_error(served):
    resp = requests.post(served["url"] + "/v1/search", json={"bogus": 1}, headers=A, timeout=30)
    _assert_error(resp, 422, "invalid_request")


# --- the body cap holds on the stream ---------------------------------------------------------

def serve_processes() -> list[psutil.Process]:
    """The Serve proxy and the ingress replica: the processes a request body reaches."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ProxyActor" in cmd or "Ingress" in cmd:
            found.append(p)
    return found


def stream_chunked(url: str, path: str, headers: dict, head: bytes, total: int, chunk: int = MB) -> tuple[int, int]:
    """POST a chunked body of ``total`` bytes (``head`` first, then zeros) with no declared
    length, stopping as soon as the server answers. Returns (status, bytes sent)."""
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    lines = [f"POST {path} HTTP/1.1", f"Host: {u.hostname}:{u.port}", "Transfer-Encoding: chunked"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    sent, answer, block = 0, b"", head + bytes(chunk - len(head))
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered (or closed): stop sending
            sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
            sent += len(block)
            block = bytes(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed on us after answering
    try:
        deadline = time.monotonic() + 60
        while b"\r\n" not in answer and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 "), f"no answer after {sent} bytes: {answer[:200]!r}"
    return int(answer.split()[1]), sent


def _rss(processes: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in processes)


CASES = {
    "json": ("/v1/search", {"Content-Type": "application/json"}, b'{"text": "x", "image": "'),
    "multipart": ("/v1/search/image", {"Content-Type": "multipart/form-data; boundary=b"},
                  b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                  b"Content-Type: image/png\r\n\r\n"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_streamed_bodies_are_cut_off_at_the_cap(served, kind):
    path, headers, head = CASES[kind]
    processes = serve_processes()
    assert processes, "found no Serve proxy or ingress process"
    before = _rss(processes)
    total = 300 * MB  # the fixture caps bodies at 2 MB
    status, sent = stream_chunked(served["url"], path, {**headers, **A}, head, total)
    assert status == 413, (status, sent)
    status_nokey, sent_nokey = stream_chunked(served["url"], path, headers, head, total)
    assert status_nokey == 401, (status_nokey, sent_nokey)
    # answered long before the client was done: neither request was read to its end
    assert sent < total and sent_nokey < total, (sent, sent_nokey)
    grown = _rss(processes) - before
    assert grown < 64 * MB, f"Serve processes grew {grown / MB:.0f} MiB over two {total // MB} MiB uploads"
    # the connection was refused, not the service: the next request is answered
    assert requests.get(served["url"] + "/v1/collections", headers=A, timeout=30).status_code == 200


# --- filters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw_filter", [
    '{"a\\u0000b": "v"}', '{"label\\n": "v"}', '{"label": NaN}', '{"label": Infinity}', '{"label": -Infinity}',
    '{"label": ["x", NaN]}', '{"label": "a\\u0000"}', '{"label": 1e400}', '{"label": 99999999999999999999999}',
    json.dumps({f"k{i}": 1 for i in range(17)}), json.dumps({"label": list(range(101))}),
    json.dumps({"label": "x" * 1025}),
], ids=["nul-key", "newline-key", "nan", "inf", "-inf", "nan-in-list", "nul-value", "overflow-float", "huge-int",
        "17-keys", "101-items", "long-string"])
def test_hostile_filters_are_422(served, raw_filter):
    body = '{"text": "a shape", "filter": ' + raw_filter + "}"
    resp = requests.post(served["url"] + "/v1/search", data=body, headers={**A, "Content-Type": "application/json"},
                         timeout=30)
    _assert_error(resp, 422, "invalid_request")


def test_filters_at_the_limits_still_work(served):
    body = {"text": "a shape", "k": 50, "filter": {"label": [f"l{i % 4}" for i in range(100)],
                                                    **{f"k{i}": f"v{i}" for i in range(15)}}}
    resp = requests.post(served["url"] + "/v1/search", json=body, headers=A, timeout=30)
    assert resp.status_code == 200, resp.text  # no row has k0..k14, so nothing matches
    assert resp.json()["results"] == []


# --- thumbnails ---------------------------------------------------------------------------------

def _acme_ids(served) -> list[str]:
    from tests.serve.test_thumbnail_api import _hits

    path = next(p for p, t in zip(served["images"], served["tenants"]) if t == "acme")
    body = {"text": "a shape", "k": 100}
    resp = requests.post(served["url"] + "/v1/search", json=body, headers=A, timeout=60)
    assert resp.status_code == 200
    ids = [h["id"] for h in resp.json()["results"]]
    assert _hits(served, path)[0]["id"] in ids
    return ids


def test_thumbnail_sizes_round_up_to_a_small_ladder(served):
    item = _acme_ids(served)[0]
    tags = set()
    for size in range(16, 1025, 7):  # 144 sizes
        resp = requests.get(f"{served['url']}/v1/items/{item}/thumbnail", params={"size": size}, headers=A, timeout=30)
        assert resp.status_code == 200, (size, resp.text)
        tags.add(resp.headers["etag"].rsplit("-", 1)[1].strip('"'))
    assert tags == {"64", "128", "256", "512", "1024"}


def test_an_erasure_anywhere_empties_every_replicas_thumbnail_cache(served, tmp_path):
    """An erasure recorded by another process (here, the test itself, as `pixlake erase`
    or another replica would) reaches this replica's cache through its poll of the deny-list."""
    from prometheus_client.parser import text_string_to_metric_families

    from pixlake.platform.governance.ledger import Ledger

    def entries() -> float:
        body = requests.get(served["url"] + "/metrics", timeout=30).text
        family = next(f for f in text_string_to_metric_families(body) if f.name == "pixlake_thumbnail_cache_entries")
        return sum(s.value for s in family.samples)

    item = _acme_ids(served)[0]
    assert requests.get(f"{served['url']}/v1/items/{item}/thumbnail", headers=A, timeout=30).status_code == 200
    assert entries() >= 1
    ledger = Ledger(served["governance_dir"] / "ledger.sqlite")
    ledger.deny("acme", "f" * 64, "guard-test")  # a pseudonym with no rows: the poll must react to any erasure
    deadline = time.monotonic() + 30
    while entries() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert entries() == 0
