"""Thumbnails: what the search page's previews cost, next to a search, in one run.

* **in-process**, per source kind (the demo corpus' 64 px PNGs; a 1024x768 JPEG; a
  4032x3024 JPEG, a 12 MP phone photo; photo-like: smooth gradients plus noise), median of
  ``--repeat`` runs: ``make_thumbnail(data, 256)`` (decode, resize, JPEG) against a
  ``Thumbnailer.draw`` cache hit; the thumbnail's size and how many fit the 64 MiB cache.
* **HTTP**: local Ray, ``pixlake.serve.run.start`` over ``--images`` photo-like 2048x1536
  JPEGs embedded with ``--model`` (rate limits out of the way). Per item, sequentially:
  ``GET /v1/items/{id}/thumbnail`` cold (first fetch: draws), warm (a cache hit; the row is
  still looked up in the tenant), and with ``If-None-Match`` (304); and a text
  ``POST /v1/search`` (k=24) as the baseline. Then a results page: 24 thumbnails fetched 6
  at a time, as the page does, cold (new size, so nothing cached) and warm.

Nothing is asserted: the script prints tables (and writes JSON with ``--json PATH``).

Run: ``.venv/bin/python bench/thumbnails.py`` (48 images), or ``--images 24``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from common import free_port, pct

KEY = "kthumb"
SIDE = 256


def photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth colour gradients with sensor-like noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [np.sin(x / rng.uniform(80, 400) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(80, 400)) for _ in range(3)]
    img = (np.stack(channels, -1) * 60 + 128 + rng.normal(0, 8, (height, width, 3))).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, "JPEG", quality=90)
    return out.getvalue()


def in_process(repeat: int, work: Path) -> list[dict]:
    from functools import partial

    from pixlake.platform.corpus import write_corpus
    from pixlake.platform.governance.cipher import keyed_content_hash
    from pixlake.platform.images import DecodeLimits, content_hash
    from pixlake.platform.thumbnails import Thumbnailer, make_thumbnail

    kinds = [("demo PNG 64x64", write_corpus(work / "demo", 1, seed=1)[0].read_bytes()),
             ("JPEG 1024x768", photo(1024, 768, 1)), ("JPEG 4032x3024 (12 MP)", photo(4032, 3024, 2))]
    rows = []
    for name, data in kinds:
        path = work / f"{len(rows)}.bin"
        path.write_bytes(data)
        thumbs = Thumbnailer(DecodeLimits())
        cold, hit = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            thumb = make_thumbnail(path.read_bytes(), SIDE)
            cold.append(time.perf_counter() - started)
        keyed = partial(keyed_content_hash, b"bench identity key")
        row_hash = keyed(content_hash(data))  # as the embed job keys it
        thumbs.draw(str(path), row_hash, SIDE, keyed)
        for _ in range(repeat):
            started = time.perf_counter()
            thumbs.draw(str(path), row_hash, SIDE, keyed)
            hit.append(time.perf_counter() - started)
        rows.append({"source": name, "source_kib": round(len(data) / 1024, 1), "draw_ms": round(statistics.median(cold) * 1e3, 2),
                     "cache_hit_ms": round(statistics.median(hit) * 1e3, 4), "thumb_kib": round(len(thumb) / 1024, 1),
                     "per_64_mib": int(64 * 1024 * 1024 // len(thumb)),
                     "draw_vs_hit": round(statistics.median(cold) / statistics.median(hit))})
    return rows


def over_http(n: int, model: str, pretrained: str, work: Path) -> dict:
    import ray

    from pixlake.platform.ray_runtime import start_ray
    import requests

    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings
    from pixlake.serve import run
    from pixlake.serve.auth import parse_api_keys
    from pixlake.serve.config import ServeSettings

    folder = work / "photos"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:04d}.jpg").write_bytes(photo(2048, 1536, 100 + i))
    governance = {"beta": 0.05, "key_dir": str(work / "keys")}
    settings = load_settings(overrides={"store": {"db": str(work / "t.db"), "collection": "images"},
                                        "encoder": {"model": model, "pretrained": pretrained}, "governance": governance})
    start_ray("local")
    run_embed_job(str(folder), settings)
    url = run.start(ServeSettings(db=str(work / "t.db"), collection="images", model=model, pretrained=pretrained,
                                  keys=parse_api_keys(f"{KEY}:default:search"), rate_per_s=1e6, rate_burst=10**6,
                                  governance=governance), "127.0.0.1", free_port())
    auth = {"Authorization": f"Bearer {KEY}"}
    session = requests.Session()
    try:
        def search() -> tuple[float, list]:
            started = time.perf_counter()
            resp = session.post(f"{url}/v1/search", json={"text": "a photo", "k": 24}, headers=auth, timeout=60)
            assert resp.status_code == 200, resp.text
            return time.perf_counter() - started, resp.json()["results"]

        for _ in range(5):
            search()  # warm-up: model info, first query
        ids = [h["id"] for h in session.post(f"{url}/v1/search", json={"text": "a photo", "k": n}, headers=auth,
                                             timeout=60).json()["results"]]

        def thumb(item: str, side: int = SIDE, etag: str = "", client=session) -> tuple[float, str]:
            started = time.perf_counter()
            resp = client.get(f"{url}/v1/items/{item}/thumbnail", params={"size": side},
                              headers={**auth, **({"If-None-Match": etag} if etag else {})}, timeout=60)
            assert resp.status_code == (304 if etag else 200), resp.text
            return time.perf_counter() - started, resp.headers["etag"]

        times: dict[str, list[float]] = {"search": [], "cold": [], "warm": [], "304": []}
        for item in ids:
            times["search"].append(search()[0])
            cold, etag = thumb(item)
            times["cold"].append(cold)
            times["warm"].append(thumb(item)[0])
            times["304"].append(thumb(item, etag=etag)[0])

        def page(side: int) -> float:
            page_ids = search()[1]
            started = time.perf_counter()
            with ThreadPoolExecutor(6) as pool:
                list(pool.map(lambda i: thumb(i, side, client=requests), [h["id"] for h in page_ids]))
            return time.perf_counter() - started

        page_cold, page_warm = page(SIDE // 2), page(SIDE // 2)  # a ladder step not drawn yet, then cached
    finally:
        run.stop()
        ray.shutdown()
    base = pct(times["search"], 50)
    return {"images": n, "requests": {k: {"p50_ms": round(pct(v, 50) * 1e3, 1), "p95_ms": round(pct(v, 95) * 1e3, 1),
                                          "p50_vs_search": round(pct(v, 50) / base, 2)} for k, v in times.items()},
            "page_of_24": {"cold_s": round(page_cold, 3), "warm_s": round(page_warm, 3),
                           "cold_vs_search": round(page_cold / base, 1), "warm_vs_search": round(page_warm / base, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="photos in the served collection (default 48)")
    parser.add_argument("--repeat", type=int, default=9, help="in-process repetitions (default 9)")
    parser.add_argument("--model", default="pixlake-tiny")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pixlake-thumbs-"))
    local = in_process(args.repeat, work)
    print(f"in-process, {SIDE} px thumbnails (median of {args.repeat}):")
    print(f"{'source':<24}{'KiB':>9}{'draw ms':>10}{'hit ms':>10}{'draw/hit':>10}{'thumb KiB':>11}{'per 64 MiB':>12}")
    for r in local:
        print(f"{r['source']:<24}{r['source_kib']:>9}{r['draw_ms']:>10}{r['cache_hit_ms']:>10}{r['draw_vs_hit']:>10}"
              f"{r['thumb_kib']:>11}{r['per_64_mib']:>12}")
    http = over_http(args.images, args.model, args.pretrained, work)
    print(f"\nHTTP, {args.images} photo-like 2048x1536 JPEGs, sequential requests:")
    print(f"{'request':<28}{'p50 ms':>9}{'p95 ms':>9}{'p50 / search p50':>18}")
    names = {"search": "POST /v1/search (k=24)", "cold": "thumbnail, first fetch", "warm": "thumbnail, cached",
             "304": "thumbnail, If-None-Match"}
    for key, r in http["requests"].items():
        print(f"{names[key]:<28}{r['p50_ms']:>9}{r['p95_ms']:>9}{r['p50_vs_search']:>18}")
    p = http["page_of_24"]
    print(f"\na results page of 24 thumbnails, 6 at a time: cold {p['cold_s']} s ({p['cold_vs_search']}x a search), "
          f"cached {p['warm_s']} s ({p['warm_vs_search']}x)")
    if args.json:
        args.json.write_text(json.dumps({"in_process": local, "http": http}, indent=2))


if __name__ == "__main__":
    main()
