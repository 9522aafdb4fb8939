"""What near-duplicate handling costs: the embed job with ``--near-duplicates keep`` (the
baseline) against ``skip`` and ``link``, and a search against the same search with
``collapse_duplicates``, ``min_score`` and ``item_id``, side by side in one run.

**Ingest.** A folder of ``--n`` distinct synthetic corpus images plus, for every tenth of
them, a copy with other bytes (the same pixels, another PNG chunk) is embedded with the demo
model into a fresh milvus-lite database per mode, encrypted, in this process's Ray. The
three modes run in turn after one untimed warm-up run, ``--repeats`` times, each repeat
starting with the next mode; the report's ``seconds`` (Ray's
start included) and its ``near_duplicates`` count are printed, with the median ratio to
``keep``.

**Search.** On the ``keep`` collection, ``--queries`` image queries (stored vectors of the
corpus, through ``QueryCollection``: encrypted search, decrypt, exact re-rank; k = 10)
run as plain searches, with ``collapse=True``, with ``min_score=0.5``, and as "more like
this" (``similar``) of the same items; p50 and p99 of each and the ratio of the p50 to the
plain search's.

Run: ``.venv/bin/python bench/near_duplicates.py [--n 400] [--repeats 2]``; ``--quick`` for
the smoke run (60 images, one repeat, 20 queries). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pct  # noqa: E402

MODES = ("keep", "skip", "link")


def make_folder(out: Path, n: int) -> tuple[Path, int]:
    """``n`` distinct images and a copy (other bytes, same pixels) of every tenth; the copies made."""
    from PIL import Image, PngImagePlugin

    from pixlake.platform.corpus import write_corpus

    import shutil

    folder = out / "images"  # the images only: the corpus folder holds its manifest too
    folder.mkdir()
    images = [Path(shutil.copy(p, folder)) for p in write_corpus(out / "corpus", n, seed=21)]
    copies = 0
    for p in images[::10]:
        info = PngImagePlugin.PngInfo()
        info.add_text("copy", "1")
        with Image.open(p) as img:
            img.save(folder / f"{p.stem}-copy.png", pnginfo=info)
        copies += 1
    return folder, copies


def settings_for(db: Path, mode: str):
    from pixlake.platform.settings import load_settings

    return load_settings(overrides={"store": {"db": str(db), "collection": "images"},
                                    "encoder": {"model": "pixlake-demo", "pretrained": "bundled"},
                                    "governance": {"key_dir": str(db.parent / "keys")},
                                    "job": {"near_duplicates": mode}})


def ingest(out: Path, folder: Path, repeats: int) -> tuple[dict[str, list[float]], dict[str, int], Path]:
    from pixlake.platform.pipeline.job import run_embed_job

    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    found: dict[str, int] = {}
    kept_db = None
    run_embed_job(str(folder), settings_for(out / "warm-up" / "p.db", "keep"))  # Ray and the model warm, not timed
    for r in range(repeats):
        for mode in MODES[r % 3:] + MODES[:r % 3]:  # each repeat starts with another mode
            db = out / f"{mode}-{r}" / "p.db"
            report = run_embed_job(str(folder), settings_for(db, mode))
            seconds[mode].append(report.seconds)
            found[mode] = report.near_duplicates
            print(f"  run {r + 1} {mode:<4}: {report.seconds:6.1f} s, embedded {report.embedded}, "
                  f"near_duplicates {report.near_duplicates}", flush=True)
            if mode == "keep":
                kept_db = db
    return seconds, found, kept_db


def search_latency(db: Path, queries: int) -> dict[str, list[float]]:
    from pixlake.platform.collection import open_collection

    times: dict[str, list[float]] = {"plain": [], "collapse": [], "min_score": [], "similar": []}
    with open_collection(settings_for(db, "keep")) as c:
        rows = c.read("default")[:queries]
        for r in rows:
            v = np.asarray(r["vector"], np.float32)
            for name, call in (("plain", lambda: c.search(v, 10)), ("collapse", lambda: c.search(v, 10, collapse=True)),
                               ("min_score", lambda: c.search(v, 10, min_score=0.5)),
                               ("similar", lambda: c.similar("default", r["id"], 10))):
                started = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - started) * 1000)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="distinct images (default 400)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode (default 2)")
    parser.add_argument("--queries", type=int, default=100, help="search queries per variant (default 100)")
    parser.add_argument("--quick", action="store_true", help="60 images, one repeat, 20 queries")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.queries = 60, 1, 20
    import logging

    from pixlake.platform.ray_runtime import init_ray

    init_ray()
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        folder, copies = make_folder(out, args.n)
        print(f"ingest: {args.n} distinct images + {copies} copies (same pixels, other bytes), demo model, "
              f"milvus-lite, encrypted; {args.repeats} run(s) per mode", flush=True)
        seconds, found, kept_db = ingest(out, folder, args.repeats)
        base = statistics.median(seconds["keep"])
        print("| mode | median s | ratio to keep | near_duplicates |")
        print("| --- | ---: | ---: | ---: |")
        for mode in MODES:
            med = statistics.median(seconds[mode])
            print(f"| {mode} | {med:.1f} | {med / base:.2f} | {found[mode]} |")
        times = search_latency(kept_db, args.queries)
        plain = pct(times["plain"], 50)
        print(f"\nsearch: {len(times['plain'])} queries per variant on the keep collection ({args.n + copies} rows), k=10")
        print("| variant | p50 ms | p99 ms | p50 ratio to plain |")
        print("| --- | ---: | ---: | ---: |")
        for name, xs in times.items():
            print(f"| {name} | {pct(xs, 50):.2f} | {pct(xs, 99):.2f} | {pct(xs, 50) / plain:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
