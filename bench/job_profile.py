"""Where the embed job's time goes: CPU per Ray task and actor, sampled from /proc while it runs.

`bench/scale.py` found the job's marginal cost (~2 ms of wall time per image on 2 cores) far
above the sum of its stages timed alone (~0.5 ms). This runs the real job (pixlake-tiny,
encrypted; milvus-lite, or with ``--backend server`` the embedded Milvus server, once through
one store actor and once writing from the tasks) at two sizes and samples every process's CPU time every 0.2 s,
booked to what the process was doing: Ray names a worker's process after the task or actor
method it runs (``ray::MapBatches(LoadItems)->...``), and the driver, raylet, GCS and the
milvus-lite server are processes of their own. The difference between the two sizes, per
extra image, is the per-image cost of each; busy cores against wall time says whether the
job is short of CPU or waiting. The busiest process a job has only one of (an owner actor,
or a claim shard's share) bounds the rows per second one job can write, however many
workers it gets: the "write ceiling".

Run: ``python bench/job_profile.py [--sizes 2000,10000] [--backend lite|server]`` (~2 min on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TICK = os.sysconf("SC_CLK_TCK")


def _label(pid: int, me: int) -> str:
    """What a process is doing, from its title (Ray workers retitle themselves per task)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
    if pid == me:
        return "driver (this process)"
    if title.startswith("ray::"):
        name = title.split()[0][5:]
        # "MapWorker(MapBatches(EmbedImages)).submit" and task names keep their operator chain
        return "ray::" + re.sub(r"\.(submit|_execute.*)$", "", name)
    for key in ("raylet", "gcs_server", "milvus", "dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if key in title:
            return key
    return "other"


class CpuSampler(threading.Thread):
    """Books every process's CPU ticks to its label, every ``period`` seconds."""

    def __init__(self, period: float = 0.2):
        super().__init__(daemon=True)
        self.period, self.me = period, os.getpid()
        self.seconds: dict[str, float] = defaultdict(float)
        self.busy = 0.0
        self._last: dict[int, int] = {}
        self._done = threading.Event()

    @staticmethod
    def _ticks(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    @staticmethod
    def _system_busy() -> int:
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = list(map(int, cpu))
        return sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                ticks = self._ticks(pid)
            except (OSError, IndexError):
                continue
            before = self._last.get(pid)
            self._last[pid] = ticks
            if before is not None and ticks > before:
                self.seconds[_label(pid, self.me) or "exited"] += (ticks - before) / TICK

    def run(self) -> None:
        self._sample()  # baseline: only CPU spent while the job runs counts
        start = self._system_busy()
        while not self._done.wait(self.period):
            self._sample()
        self._sample()
        self.busy = (self._system_busy() - start) / TICK

    def stop(self) -> None:
        self._done.set()
        self.join()


# Processes a job has a fixed number of, whatever the cluster's size: the per-row path's
# bottlenecks. Where the tasks write, the claims and the stats are sharded (claims.shard_count
# of each): their label's cost is divided among the shards.
SINGLETONS = ("StoreOwner", "GovernanceOwner", "StatsOwner", "ClaimShard")
SHARDED = ("ClaimShard", "StatsOwner")


def profile(n: int, work: Path, manifest, db: str, store_actor: bool) -> tuple[float, float, dict[str, float]]:
    """Run the job on the first ``n`` images: (wall s, busy core-s machine-wide, core-s per label)."""
    import pyarrow.parquet as pq

    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings

    pq.write_table(manifest.slice(0, n), work / "c" / f"m{n}.parquet")  # paths are relative to the manifest
    lite = db.endswith(".db")
    settings = load_settings(overrides={
        "store": {"db": str(work / f"j{n}.db") if lite else db,
                  "collection": f"p{n}_{'actor' if store_actor else 'tasks'}_{os.getpid()}"},
        "encoder": {"model": "pixlake-tiny", "pretrained": "none"},
        "job": {"store_actor": store_actor},
        "governance": {"key_dir": str(work / "keys")}})
    sampler = CpuSampler()
    sampler.start()
    started = time.perf_counter()
    report = run_embed_job(str(work / "c" / f"m{n}.parquet"), settings)
    wall = time.perf_counter() - started
    sampler.stop()
    assert report.embedded == n, report
    return wall, sampler.busy, dict(sampler.seconds)


def per_image(runs: dict, small: int, large: int) -> tuple[dict[str, float], float, float]:
    """(core-ms per extra image by label, wall ms per extra image, busy core-ms per extra image)."""
    (w0, b0, s0), (w1, b1, s1) = runs[small], runs[large]
    extra = large - small
    costs = {label: 1000 * (s1.get(label, 0) - s0.get(label, 0)) / extra for label in set(s0) | set(s1)}
    return costs, 1000 * (w1 - w0) / extra, 1000 * (b1 - b0) / extra


def bottleneck(costs: dict[str, float], shards: int) -> tuple[str, float]:
    """The busiest single process of the per-row path: (its class, core-ms per image), its
    labels summed (an actor's process is titled by the method it runs, or by its class when idle)."""
    single = {name: sum(cost for label, cost in costs.items() if f"::{name}" in label) / (shards if name in SHARDED else 1)
              for name in SINGLETONS}
    return max(single.items(), key=lambda kv: kv[1])


def main() -> None:
    import pyarrow.parquet as pq
    import ray

    from embedded_milvus import milvus_uri
    from pixlake.platform.corpus import MANIFEST, write_corpus
    from pixlake.platform.governance.keys import load_master_key
    from pixlake.platform.pipeline.claims import shard_count

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,10000", help="two corpus sizes; the difference is the per-image cost")
    parser.add_argument("--backend", choices=("lite", "server"), default="lite",
                        help="milvus-lite (one store actor), or the embedded Milvus server, where the job runs "
                             "twice: through one store actor (job.store_actor, as before) and from its tasks")
    parser.add_argument("--uri", help="a running Milvus server instead of starting the embedded one")
    args = parser.parse_args()
    small, large = (int(x) for x in args.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="pixlake-profile-"))
    os.environ.pop("RAY_ADDRESS", None)
    load_master_key(work / "keys", create=True)  # a server deployment never creates one itself
    write_corpus(work / "c", large, seed=3, holdout=1.0)
    manifest = pq.read_table(work / "c" / MANIFEST)
    shards = shard_count(os.cpu_count() or 1)
    paths = [True] if args.backend == "lite" else [True, False]  # store_actor
    store = milvus_uri(args.uri, work / "milvus", {}) if args.backend == "server" \
        else contextlib.nullcontext((str(work / "lite.db"), None))
    with store as (db, _):
        results = {}
        for store_actor in paths:
            name = "store actor" if store_actor else "tasks write"
            runs = {}
            for n in (small, large):
                ray.shutdown()  # each run starts its own Ray, as a job does
                runs[n] = profile(n, work, manifest, db, store_actor)
                wall, busy, _ = runs[n]
                print(f"[{args.backend}, {name}] {n:>6} images: {wall:6.1f} s wall, {busy:6.1f} core-s busy on "
                      f"{os.cpu_count()} cores ({100 * busy / wall / os.cpu_count():.0f}% utilised)", flush=True)
            results[name] = per_image(runs, small, large) + (runs[large][0],)
    ray.shutdown()
    names = list(results)
    print(f"\nper extra image ({small} -> {large}), {args.backend}:")
    print("| process (what it ran) | " + " | ".join(f"{n}: core-ms" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    labels = sorted({label for r in results.values() for label in r[0]}, key=lambda k: -max(r[0].get(k, 0) for r in results.values()))
    for label in labels:
        if max(abs(r[0].get(label, 0)) for r in results.values()) >= 0.01:
            print(f"| {label} | " + " | ".join(f"{results[n][0].get(label, 0):.3f}" for n in names) + " |")
    for n in names:
        costs, wall_ms, busy_ms = results[n][:3]
        label, cost = bottleneck(costs, shards if n == "tasks write" else 1)
        ceiling = 1000 / cost if cost > 0 else float("inf")
        print(f"[{n}] per extra image: {wall_ms:.2f} ms wall, {busy_ms:.2f} core-ms busy; {large} images in "
              f"{results[n][3]:.1f} s; busiest single process of the per-row path: {label} {cost:.3f} core-ms "
              f"-> write ceiling {ceiling:,.0f} rows/s")
    if len(names) == 2:
        before, after = (bottleneck(results[n][0], shards if n == "tasks write" else 1)[1] for n in names)
        print(f"ceiling ratio tasks / store actor: {before / after if after > 0 else float('inf'):.1f}x")


if __name__ == "__main__":
    main()
