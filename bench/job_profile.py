"""Where the embed job's time goes: CPU per Ray task and actor, sampled from /proc while it runs.

`bench/scale.py` found the job's marginal cost (~2 ms of wall time per image on 2 cores) far
above the sum of its stages timed alone (~0.5 ms). This runs the real job (pixlake-tiny,
milvus-lite, encrypted) at two sizes and samples every process's CPU time every 0.2 s,
booked to what the process was doing: Ray names a worker's process after the task or actor
method it runs (``ray::MapBatches(LoadItems)->...``), and the driver, raylet, GCS and the
milvus-lite server are processes of their own. The difference between the two sizes, per
extra image, is the per-image cost of each; busy cores against wall time says whether the
job is short of CPU or waiting.

Run: ``python bench/job_profile.py [--sizes 2000,10000]`` (~2 min on 2 cores).
"""

from __future__ import annotations

import argparse
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


def profile(n: int, work: Path, manifest) -> tuple[float, float, dict[str, float]]:
    """Run the job on the first ``n`` images: (wall s, busy core-s machine-wide, core-s per label)."""
    import pyarrow.parquet as pq

    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings

    pq.write_table(manifest.slice(0, n), work / "c" / f"m{n}.parquet")  # paths are relative to the manifest
    settings = load_settings(overrides={"store": {"db": str(work / f"j{n}.db")},
                                        "encoder": {"model": "pixlake-tiny", "pretrained": "none"},
                                        "governance": {"key_dir": str(work / "keys")}})
    sampler = CpuSampler()
    sampler.start()
    started = time.perf_counter()
    report = run_embed_job(str(work / "c" / f"m{n}.parquet"), settings)
    wall = time.perf_counter() - started
    sampler.stop()
    assert report.embedded == n, report
    return wall, sampler.busy, dict(sampler.seconds)


def main() -> None:
    import pyarrow.parquet as pq
    import ray

    from pixlake.platform.corpus import MANIFEST, write_corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,10000", help="two corpus sizes; the difference is the per-image cost")
    args = parser.parse_args()
    small, large = (int(x) for x in args.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="pixlake-profile-"))
    os.environ.pop("RAY_ADDRESS", None)
    write_corpus(work / "c", large, seed=3, holdout=1.0)
    manifest = pq.read_table(work / "c" / MANIFEST)
    runs = {}
    for n in (small, large):
        ray.shutdown()  # each run starts its own Ray, as a job does
        runs[n] = profile(n, work, manifest)
        wall, busy, _ = runs[n]
        print(f"{n:>6} images: {wall:6.1f} s wall, {busy:6.1f} core-s busy on {os.cpu_count()} cores "
              f"({100 * busy / wall / os.cpu_count():.0f}% utilised)", flush=True)
    (w0, b0, s0), (w1, b1, s1) = runs[small], runs[large]
    extra = large - small
    print(f"\nper extra image: {1000 * (w1 - w0) / extra:.2f} ms wall, {1000 * (b1 - b0) / extra:.2f} core-ms busy")
    print("| process (what it ran) | core-ms per extra image | share |")
    print("|---|---:|---:|")
    labels = sorted(set(s0) | set(s1), key=lambda k: -(s1.get(k, 0) - s0.get(k, 0)))
    total = sum(s1.values()) - sum(s0.values())
    for label in labels:
        d = s1.get(label, 0) - s0.get(label, 0)
        if abs(d) * 1000 / extra >= 0.01:
            print(f"| {label} | {1000 * d / extra:.2f} | {100 * d / total:.0f}% |")


if __name__ == "__main__":
    main()
