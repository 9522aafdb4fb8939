"""Soak: mixed search and embed traffic against the Serve app while embed jobs run.

Bounded (minutes), loopback only, one process driving everything on one local Ray:

* **Setup** (not measured): a seeded synthetic corpus of ``--served`` images embedded into
  ``<out>/served.db`` by the embed job; the Serve app (``pixlake.serve.run.start``) over it
  on a free loopback port, one key (tenant ``default``, scopes search+embed), rate limits
  out of the way.
* **Quiet** (the baseline, same process): ``--quiet-s`` seconds of the traffic below with
  no job running.
* **Soak**: ``--minutes`` of the same traffic while embed jobs run back to back, each over a
  fresh corpus of ``--job-images`` images into its own collection of ``<out>/jobs.db``
  (milvus-lite admits one process per database, so the jobs cannot write the served one).
* **Traffic**: open loop at ``--rate`` requests/s, each on its own thread so a slow answer
  never slows the offered rate: 60% ``POST /v1/search`` text, 25% ``POST /v1/search`` image
  (base64 PNG from the corpus), 15% ``POST /v1/embed`` text. Latency is client wall time;
  anything but 200 (or no answer in 30 s) is an error.
* **Memory**: RSS of every process this one started (``/proc``), sampled every 2 s, split
  into the long-lived serving processes and the rest (driver, Ray daemons, job workers that
  come and go); growth = the soak's last minute's mean minus its first minute's mean.

Prints a table (and ``--json PATH``): per phase and kind, requests, errors, p50 and p99 in
ms, with the soak/quiet ratios; jobs finished and their images/s; memory. Nothing is asserted.

Run: ``.venv/bin/python bench/soak.py`` (3 minutes, pixlake-tiny), or e.g. ``--minutes 1``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import free_port, pct

KEY = "ksoak"
MIX = (("text", 0.60), ("image", 0.25), ("embed", 0.15))




def rss_mib() -> dict[str, float]:
    """RSS in MiB of this process and its descendants (the local Ray it started), split into
    the long-lived serving processes (Serve replicas, proxy, controller) and the rest (this
    driver, Ray's own daemons, and the jobs' workers, which come and go)."""
    me, totals = os.getpid(), {"serve": 0.0, "other": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            pid = walk = int(entry)
            while walk > 1 and walk != me:
                walk = int(Path(f"/proc/{walk}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if walk != me:
                continue
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            totals["serve" if title.startswith(("ray::ServeReplica", "ray::ProxyActor", "ray::ServeController")) else "other"] += kib / 1024
        except (OSError, ValueError, IndexError, StopIteration):
            continue
    return totals


class Traffic:
    """Open-loop mixed requests at a fixed rate; records (phase, kind, seconds, ok)."""

    def __init__(self, url: str, rate: float, images: list[bytes], seed: int = 0):
        self.url, self.rate, self.images = url, rate, images
        self.rng = np.random.default_rng(seed)
        self.results: list[tuple[str, str, float, object]] = []
        self.phase = "warmup"
        self.stop = threading.Event()

    def _one(self, kind: str, i: int, phase: str) -> None:
        import requests

        headers = {"Authorization": f"Bearer {KEY}"}
        if kind == "text":
            path, body = "/v1/search", {"text": f"a photo of thing {i % 97}", "k": 10}
        elif kind == "image":
            path, body = "/v1/search", {"image": base64.b64encode(self.images[i % len(self.images)]).decode(), "k": 10}
        else:
            path, body = "/v1/embed", {"text": f"caption {i % 89}"}
        started = time.perf_counter()
        try:
            status = requests.post(self.url + path, json=body, headers=headers, timeout=30).status_code
        except requests.RequestException as e:
            status = type(e).__name__
        self.results.append((phase, kind, time.perf_counter() - started, status))

    def run(self) -> None:
        kinds, weights = zip(*MIX)
        with ThreadPoolExecutor(64) as pool:
            i, start = 0, time.monotonic()
            while not self.stop.is_set():
                kind = kinds[int(self.rng.choice(len(kinds), p=weights))]
                pool.submit(self._one, kind, i, self.phase)
                i += 1
                time.sleep(max(0.0, start + i / self.rate - time.monotonic()))


def run_jobs(out: Path, n: int, settings_for, stop: threading.Event, done: list) -> None:
    """Embed jobs back to back, each over a fresh corpus into its own collection."""
    from pixlake.platform.corpus import MANIFEST, write_corpus
    from pixlake.platform.pipeline.job import run_embed_job

    i = 0
    while not stop.is_set():
        corpus = out / f"job-corpus-{i}"
        write_corpus(corpus, n, seed=100 + i, holdout=0.0)
        report = run_embed_job(str(corpus / MANIFEST), settings_for(f"soak_{i}"))
        done.append({"collection": f"soak_{i}", "embedded": report.embedded, "seconds": report.seconds,
                     "images_per_s": report.images_per_s, "rejected": report.rejected})
        i += 1


def summarise(results, phases=("quiet", "soak")) -> dict:
    table: dict = {}
    for phase in phases:
        by_kind = defaultdict(list)
        for p, kind, seconds, status in results:
            if p == phase:
                by_kind[kind].append((seconds, status))
                by_kind["all"].append((seconds, status))
        table[phase] = {
            kind: {"requests": len(rows), "errors": sum(1 for _, s in rows if s != 200),
                   "error_kinds": sorted({str(s) for _, s in rows if s != 200}),
                   "p50_ms": round(pct([s for s, _ in rows], 50) * 1000, 1),
                   "p99_ms": round(pct([s for s, _ in rows], 99) * 1000, 1)}
            for kind, rows in by_kind.items()
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="soak length (default 3)")
    parser.add_argument("--quiet-s", type=float, default=30.0, help="baseline window with no job (default 30)")
    parser.add_argument("--rate", type=float, default=10.0, help="offered requests/s (default 10)")
    parser.add_argument("--served", type=int, default=500, help="images in the served collection (default 500)")
    parser.add_argument("--job-images", type=int, default=1500, help="images per embed job (default 1500)")
    parser.add_argument("--model", default="pixlake-tiny")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--beta", type=float, default=0.05, help="encryption beta (0.05 suits pixlake-tiny)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    import ray

    from pixlake.platform.ray_runtime import start_ray

    from pixlake.platform.corpus import MANIFEST, write_corpus
    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings
    from pixlake.serve import run
    from pixlake.serve.auth import parse_api_keys
    from pixlake.serve.config import ServeSettings

    out = args.out or Path(tempfile.mkdtemp(prefix="pixlake-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    keys = out / "keys"

    def settings_for(db: Path, collection: str):
        return load_settings(overrides={
            "store": {"db": str(db), "collection": collection},
            "encoder": {"model": args.model, "pretrained": args.pretrained},
            "governance": {"beta": args.beta, "key_dir": str(keys)},
        })

    # Serve's replicas reserve 0.7 CPU and each decode task of a job 1: on a 2-core machine the
    # job would wait for a CPU forever, so the soak offers Ray twice the cores (they are shared,
    # as they would be on an over-committed node).
    start_ray("local", num_cpus=2 * (os.cpu_count() or 1))
    paths = write_corpus(out / "served-corpus", args.served, seed=1, holdout=0.0)
    served = settings_for(out / "served.db", "images")
    run_embed_job(str(out / "served-corpus" / MANIFEST), served)
    url = run.start(ServeSettings(db=str(out / "served.db"), collection="images", model=args.model,
                                  pretrained=args.pretrained, keys=parse_api_keys(f"{KEY}:default:search+embed"),
                                  rate_per_s=1e6, rate_burst=10**6, governance={"beta": args.beta, "key_dir": str(keys)}),
                    "127.0.0.1", free_port())
    traffic = Traffic(url, args.rate, [p.read_bytes() for p in paths[:50]])
    memory: list[tuple[float, dict[str, float]]] = []
    stop_jobs, jobs_done = threading.Event(), []
    try:
        load = threading.Thread(target=traffic.run, daemon=True)
        load.start()
        time.sleep(5)  # warm-up, not counted
        traffic.phase = "quiet"
        time.sleep(args.quiet_s)
        traffic.phase = "soak"
        soak_started = time.monotonic()
        jobs = threading.Thread(target=run_jobs, args=(out, args.job_images,
                                                       lambda c: settings_for(out / "jobs.db", c), stop_jobs, jobs_done),
                                daemon=True)
        jobs.start()
        while time.monotonic() - soak_started < args.minutes * 60:
            memory.append((time.monotonic() - soak_started, rss_mib()))
            time.sleep(2)
        traffic.phase = "done"
        stop_jobs.set()
        traffic.stop.set()
        load.join()
        jobs.join()  # the job in flight finishes (its figures count)
    finally:
        run.stop()
        ray.shutdown()

    table = summarise(traffic.results)
    def growth(part: str) -> dict:
        first = [m[part] for t, m in memory if t < 60]
        last = [m[part] for t, m in memory if t > memory[-1][0] - 60]
        return {"first_minute_mean": round(float(np.mean(first)), 1), "last_minute_mean": round(float(np.mean(last)), 1),
                "growth": round(float(np.mean(last) - np.mean(first)), 1), "peak": round(max(m[part] for _, m in memory), 1)}

    figures = {
        "rate_offered": args.rate, "minutes": args.minutes, "quiet_s": args.quiet_s, "model": args.model,
        "requests": table, "jobs": jobs_done, "memory_mib": {part: growth(part) for part in ("serve", "other")},
    }
    print(f"soak: {args.minutes:g} min at {args.rate:g} req/s offered ({args.model}), quiet baseline {args.quiet_s:g} s")
    print(f"{'kind':<6} {'phase':<6} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>6} {'p99 x':>6}")
    for kind in ("text", "image", "embed", "all"):
        quiet = table["quiet"].get(kind, {})
        for phase in ("quiet", "soak"):
            row = table[phase].get(kind)
            if not row:
                continue
            ratio = ("", "") if phase == "quiet" else (f"{row['p50_ms'] / quiet['p50_ms']:.2f}", f"{row['p99_ms'] / quiet['p99_ms']:.2f}")
            print(f"{kind:<6} {phase:<6} {row['requests']:>8} {row['errors']:>6} {row['p50_ms']:>8} {row['p99_ms']:>8} "
                  f"{ratio[0]:>6} {ratio[1]:>6}")
    print(f"jobs: {len(jobs_done)} finished, {sum(j['embedded'] for j in jobs_done)} images, "
          f"{', '.join(str(j['images_per_s']) for j in jobs_done)} images/s")
    for part, label in (("serve", "Serve (replicas, proxy, controller)"), ("other", "driver, Ray daemons, job workers")):
        m = figures["memory_mib"][part]
        print(f"memory, {label}: first minute {m['first_minute_mean']} MiB, last minute {m['last_minute_mean']} MiB, "
              f"growth {m['growth']:+} MiB, peak {m['peak']} MiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
