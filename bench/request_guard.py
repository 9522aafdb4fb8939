"""The ingress under hostile load, in one run: does it refuse before it reads, and does a
burst of large images leave everyone else's requests alone?

* **Streamed bodies**: a 300 MiB (``--stream-mib``) chunked upload (no ``Content-Length``) to
  ``/v1/search`` and ``/v1/search/image``, with a valid key and without one: the status,
  how many bytes the client got to send before the answer, and how much the Serve proxy
  and ingress processes grew; with the ingress guard's cap alone, then with the proxy's
  cap (``ProxyBodyCap``) too, each on its own Ray.
* **Decode burst**: ``--burst`` clients upload a ``--megapixels`` photo-like JPEG to
  ``/v1/search`` over and over for ``--seconds``, while one client polls ``/healthz`` and
  another tenant's key runs text searches. Latencies during the burst against the same
  requests on the quiet service just before (ratios), plus the gate's peak of decodes at once.

Nothing is asserted: the script prints figures (and writes JSON with ``--json PATH``).

Run: ``.venv/bin/python bench/request_guard.py``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import free_port, pct

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' streaming client
from tests.serve.test_request_guard import CASES, MB, serve_processes, stream_chunked  # noqa: E402
from thumbnails import photo  # noqa: E402

KEYS = "kburst:acme:search,kother:globex:search"


def _latencies(fn, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)


def streamed(url: str, mib: int) -> list[dict]:
    rows = []
    processes = serve_processes()
    for kind, (path, headers, head) in sorted(CASES.items()):
        for keyed in (True, False):
            before = sum(p.memory_info().rss for p in processes)
            started = time.perf_counter()
            auth = {"Authorization": "Bearer kburst"} if keyed else {}
            status, sent = stream_chunked(url, path, {**headers, **auth}, head, mib * MB)
            rows.append({"body": kind, "key": keyed, "status": status, "sent_mib": round(sent / MB, 1),
                         "seconds": round(time.perf_counter() - started, 3),
                         "serve_rss_growth_mib": round((sum(p.memory_info().rss for p in processes) - before) / MB, 1)})
    return rows


def burst(url: str, clients: int, seconds: float, megapixels: float) -> dict:
    import requests

    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    image = base64.b64encode(photo(width, width * 3 // 4, 7)).decode()
    other = {"Authorization": "Bearer kother"}

    def healthz() -> None:
        assert requests.get(f"{url}/healthz", timeout=120).status_code == 200

    def other_search() -> None:
        resp = requests.post(f"{url}/v1/search", json={"text": "a photo", "k": 5}, headers=other, timeout=120)
        assert resp.status_code == 200, resp.text

    def upload() -> None:
        resp = requests.post(f"{url}/v1/search", json={"image": image, "k": 5},
                             headers={"Authorization": "Bearer kburst"}, timeout=300)
        assert resp.status_code == 200, resp.text

    def measure(load: bool) -> dict:
        stop, out = threading.Event(), {"healthz": [], "search": [], "upload": []}
        threads = [threading.Thread(target=_latencies, args=(healthz, stop, out["healthz"])),
                   threading.Thread(target=_latencies, args=(other_search, stop, out["search"]))]
        if load:
            threads += [threading.Thread(target=_latencies, args=(upload, stop, out["upload"])) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        return out

    upload()  # warm-up
    quiet, loaded = measure(False), measure(True)
    row = {"image_mib": round(len(image) * 3 / 4 / MB, 1), "megapixels": megapixels, "clients": clients,
           "uploads_done": len(loaded["upload"]), "upload_p50_ms": round(pct(loaded["upload"], 50) * 1e3, 1)}
    for name in ("healthz", "search"):
        q50, l50, l99 = pct(quiet[name], 50), pct(loaded[name], 50), pct(loaded[name], 99)
        row[name] = {"quiet_p50_ms": round(q50 * 1e3, 2), "burst_p50_ms": round(l50 * 1e3, 2),
                     "burst_p99_ms": round(l99 * 1e3, 2), "burst_max_ms": round(max(loaded[name]) * 1e3, 2),
                     "p50_ratio": round(l50 / q50, 2)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=8, help="concurrent large-image clients (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default 10)")
    parser.add_argument("--megapixels", type=float, default=24.0, help="size of the uploaded photo (default 24)")
    parser.add_argument("--stream-mib", type=int, default=300, help="size of each streamed body (default 300)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    import ray

    from pixlake.platform.ray_runtime import start_ray

    from pixlake.platform.corpus import write_corpus
    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings
    from pixlake.serve import run
    from pixlake.serve.auth import parse_api_keys
    from pixlake.serve.config import ServeSettings
    from pixlake.serve.guard import PROXY_CALLBACK, PROXY_CALLBACK_ENV

    work = Path(tempfile.mkdtemp(prefix="pixlake-guard-"))
    images = write_corpus(work / "corpus", 24, seed=3)
    governance = {"beta": 0.05, "key_dir": str(work / "keys")}
    settings = load_settings(overrides={"store": {"db": str(work / "g.db"), "collection": "images"},
                                        "encoder": {"model": "pixlake-tiny", "pretrained": "none"},
                                        "governance": governance})
    serve = ServeSettings(db=str(work / "g.db"), collection="images", model="pixlake-tiny", pretrained="none",
                          keys=parse_api_keys(KEYS), rate_per_s=1e6, rate_burst=10**6, governance=governance)
    stream_rows = []
    # Twice: the replica's guard alone, then with the proxy's cap too (the proxy reads its
    # middleware setting when Ray starts it, so each needs its own Ray).
    for proxy_capped in (False, True):
        os.environ.pop(PROXY_CALLBACK_ENV, None)
        if proxy_capped:
            os.environ[PROXY_CALLBACK_ENV] = PROXY_CALLBACK
        start_ray("local")
        try:
            if not proxy_capped:
                run_embed_job(str(images[0].parent), settings)
            url = run.start(serve, "127.0.0.1", free_port())
            stream_rows += [{"proxy_cap": proxy_capped, **r} for r in streamed(url, args.stream_mib)]
            burst_row = burst(url, args.burst, args.seconds, args.megapixels) if proxy_capped else None
        finally:
            run.stop()
            ray.shutdown()
    print(f"streamed {args.stream_mib} MiB chunked bodies (cap {serve.max_body_bytes // MB} MiB):")
    print(f"{'caps':<17}{'body':<11}{'key':<6}{'status':>7}{'MiB sent':>10}{'seconds':>9}{'Serve RSS +MiB':>16}")
    for r in stream_rows:
        caps = "replica + proxy" if r["proxy_cap"] else "replica only"
        print(f"{caps:<17}{r['body']:<11}{'yes' if r['key'] else 'no':<6}{r['status']:>7}{r['sent_mib']:>10}"
              f"{r['seconds']:>9}{r['serve_rss_growth_mib']:>16}")
    b = burst_row
    print(f"\n{b['clients']} clients uploading a {b['megapixels']} MP JPEG ({b['image_mib']} MiB) for {args.seconds} s: "
          f"{b['uploads_done']} uploads, p50 {b['upload_p50_ms']} ms; gate: {serve.max_concurrent_decodes} decodes at once")
    print(f"{'request':<26}{'quiet p50':>11}{'burst p50':>11}{'burst p99':>11}{'burst max':>11}{'p50 ratio':>11}")
    for name, label in (("healthz", "GET /healthz"), ("search", "other tenant's search")):
        r = b[name]
        print(f"{label:<26}{r['quiet_p50_ms']:>11}{r['burst_p50_ms']:>11}{r['burst_p99_ms']:>11}{r['burst_max_ms']:>11}"
              f"{r['p50_ratio']:>11}")
    if args.json:
        args.json.write_text(json.dumps({"streamed": stream_rows, "burst": burst_row}, indent=2))


if __name__ == "__main__":
    main()
