"""Embedding throughput: the full Ray Data job against a plain open_clip loop, side by side.

* **plain loop** (baseline, run first): one process, open_clip used directly (not
  ``load_encoder``); per batch: read bytes, PIL decode + ``convert("RGB")``, open_clip's
  ``preprocess_val``, stack, ``encode_image`` under ``torch.inference_mode()``, normalise;
  torch's default threads (all cores). Time = wall time over all images, model load excluded.
* **Ray job** (run second): ``run_embed_job`` into a fresh milvus-lite db under ``--out``;
  its report's ``seconds``/``images_per_s`` include Ray start-up, the driver's model load
  + fingerprint, the actor's model load and the final writes. To show where time goes,
  the job's subprocess wraps (in memory only) ``load_encoder``, ``init_ray``,
  ``start_job_store``, ``DecodeImages`` and ``EmbedImages`` with timestamp probes;
  "steady" = images embedded after the first batch / time from its end to the last batch's end.

Each contender runs in its own subprocess; its peak memory is the peak summed RSS of that
process and all its descendants (Ray GCS, raylet, workers), sampled every 0.2 s with psutil
(shared pages such as the object store count once per process: an upper bound).
Both load the same random weights from ``<out>/<model>-random.pt`` (made once by
``create_model_and_transforms(model, pretrained=None)`` after ``torch.manual_seed(0)``);
inputs are N distinct seeded 256x256 JPEGs (gradient + shapes + noise, quality 90) in
``<out>/jpegs``. Nothing is asserted: the script prints, and writes JSON with ``--json``.

Run: ``make bench`` (= ``.venv/bin/python bench/embed_throughput.py``: ViT-B-32, 2000
images), or ``--quick`` for a ~1 minute smoke run (``pixlake-tiny``, 64 images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGET = "pipeline >= 0.9x the plain loop at >= 2,000 images with ViT-B-32 on 2 cores"


def make_jpegs(out: Path, n: int, seed: int = 0, size: int = 256) -> Path:
    """Write ``n`` distinct seeded JPEGs into ``out/jpegs`` (kept when already there)."""
    import numpy as np
    from PIL import Image, ImageDraw

    d = out / "jpegs"
    if d.is_dir() and len(list(d.glob("*.jpg"))) == n:
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        t = xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        c0, c1 = rng.uniform(0, 255, (2, 3))
        pixels = c0 + (c1 - c0) * t[..., None] + rng.normal(0, 6, (size, size, 3))
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.uniform(0, size, 2)
            w, h = rng.uniform(16, size / 2, 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=fill)
        img.save(d / f"{i:05d}.jpg", quality=90)
    return d


def make_checkpoint(out: Path, model: str) -> Path:
    """Save a seeded random-weight state dict for ``model`` (reused when present)."""
    path = out / f"{model}-random.pt"
    if not path.is_file():
        import open_clip
        import torch

        from pixlake.platform.encoder import register_bundled_configs

        register_bundled_configs()  # so the bundled pixlake-tiny config resolves
        torch.manual_seed(0)
        m, _, _ = open_clip.create_model_and_transforms(model, pretrained=None)
        tmp = out / f".{model}-random.pt.tmp"
        torch.save(m.state_dict(), tmp)
        tmp.rename(path)
    return path


def role_loop(args, jpegs: Path, ckpt: Path) -> dict:
    """Contender A: the plain single-process open_clip loop."""
    import io

    import open_clip
    import torch
    from PIL import Image

    from pixlake.platform.encoder import register_bundled_configs

    register_bundled_configs()  # only so the bundled pixlake-tiny config resolves
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=str(ckpt))
    model.eval()
    paths = sorted(jpegs.glob("*.jpg"))
    decode_s, forward_s, embedded = 0.0, 0.0, 0
    start = time.monotonic()
    with torch.inference_mode():
        for i in range(0, len(paths), args.batch_size):
            t0 = time.monotonic()
            batch = torch.stack(
                [preprocess(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in paths[i : i + args.batch_size]]
            )
            t1 = time.monotonic()
            vectors = torch.nn.functional.normalize(model.encode_image(batch), dim=-1).numpy()
            forward_s += time.monotonic() - t1
            decode_s += t1 - t0
            embedded += len(vectors)
    seconds = time.monotonic() - start
    return {"images": embedded, "seconds": seconds, "images_per_s": embedded / seconds, "decode_s": decode_s,
            "forward_s": forward_s, "forward_images_per_s": embedded / forward_s, "torch_threads": torch.get_num_threads()}


def _event(path: Path, name: str, t0: float, t1: float, n: int = 0) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"name": name, "t0": t0, "t1": t1, "n": n, "pid": os.getpid()}) + "\n")


def role_job(args, jpegs: Path, ckpt: Path) -> dict:
    """Contender B: the full Ray Data job, with timestamp probes around its phases."""
    # A fresh local Ray in this subprocess: unset, ray.init() would join any `ray start` cluster here.
    os.environ["RAY_ADDRESS"] = "local"
    from pixlake.platform.pipeline import job as J
    from pixlake.platform.settings import load_settings

    db, events = args.out / "bench.db", args.out / "job-events.jsonl"
    for stale in [*args.out.glob("bench.db*"), *args.out.glob(".bench.db*"), events]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0, result = time.time(), fn(*a, **kw)
            _event(events, name, t0, time.time())
            return result
        return wrapper

    def probed(base, name):
        class Probed(base):  # defined in __main__, so cloudpickle ships it to Ray by value
            def __init__(self, *a, **kw):
                t0, _ = time.time(), super().__init__(*a, **kw)
                _event(events, f"{name}_init", t0, time.time())

            def __call__(self, batch):
                t0, out = time.time(), super().__call__(batch)
                _event(events, name, t0, time.time(), batch.num_rows)
                return out
        return Probed

    J.load_encoder, J.init_ray = timed("driver_load", J.load_encoder), timed("ray_init", J.init_ray)
    J.start_job_store = timed("store_actor", J.start_job_store)
    J.EmbedImages, J.DecodeImages = probed(J.EmbedImages, "embed"), probed(J.DecodeImages, "decode")
    settings = load_settings(overrides={"store": {"db": str(db), "collection": "bench"},
                                        "encoder": {"model": args.model, "pretrained": str(ckpt)},
                                        "job": {"batch_size": args.batch_size}})
    start = time.time()
    report = J.run_embed_job(str(jpegs), settings)
    end = time.time()
    ev = [json.loads(line) for line in open(events)]
    result = {"images": report.embedded, "rejected": report.rejected, "seconds": report.seconds,
              "images_per_s": report.images_per_s, "collection_count": report.collection_count, "timeline": {}}
    for name in ("driver_load", "ray_init", "store_actor", "embed_init", "decode", "embed"):
        es = sorted((e for e in ev if e["name"] == name), key=lambda e: e["t1"])
        if es:  # first start / last end relative to the job's start, calls, summed busy seconds, processes
            result["timeline"][name] = {"from_s": es[0]["t0"] - start, "to_s": es[-1]["t1"] - start, "calls": len(es),
                                        "busy_s": sum(e["t1"] - e["t0"] for e in es), "pids": len({e["pid"] for e in es})}
    batches = sorted((e for e in ev if e["name"] == "embed"), key=lambda e: e["t1"])
    result["after_last_batch_s"] = end - batches[-1]["t1"]
    result["forward_images_per_s"] = report.embedded / sum(e["t1"] - e["t0"] for e in batches)
    if len(batches) >= 5:  # too few batches make a "steady" figure meaningless
        span = batches[-1]["t1"] - batches[0]["t1"]
        result["steady_images_per_s"] = sum(e["n"] for e in batches[1:]) / span
        result["actor_busy_fraction"] = sum(e["t1"] - e["t0"] for e in batches[1:]) / span
    return result


def _sample(proc, cpu: dict) -> int:
    """RSS of ``proc``; records its CPU seconds so far in ``cpu`` (by pid)."""
    import psutil

    try:
        with proc.oneshot():
            t = proc.cpu_times()
            cpu[proc.pid] = t.user + t.system
            return proc.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def run_child(role: str, args) -> dict:
    """Run one contender in a subprocess, sampling the RSS of its whole process tree."""
    import psutil

    result_path = args.out / f"{role}-result.json"
    result_path.unlink(missing_ok=True)
    log_path = args.out / f"{role}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--images", str(args.images),
           "--model", args.model, "--batch-size", str(args.batch_size), "--out", str(args.out)]
    peak, cpu, machine0 = 0, {}, psutil.cpu_times()
    with open(log_path, "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                peak = max(peak, sum(_sample(p, cpu) for p in [root] + root.children(recursive=True)))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
    machine1 = psutil.cpu_times()
    busy = sum(getattr(machine1, k) - getattr(machine0, k) for k in ("user", "system", "nice"))
    if child.wait() != 0 or not result_path.is_file():
        tail = "".join(open(log_path).readlines()[-30:])
        raise SystemExit(f"{role} contender failed (exit {child.returncode}); log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["peak_rss_mib"] = peak / 2**20
    # CPU the rest of the machine used meanwhile (approximate): other work skews the figures.
    result["tree_cpu_s"], result["other_cpu_s"] = sum(cpu.values()), max(0.0, busy - sum(cpu.values()))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out", help="default bench/out")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 images, pixlake-tiny")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON")
    ap.add_argument("--role", choices=("loop", "job"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.model = 64, "pixlake-tiny"
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    jpegs, ckpt = args.out / "jpegs", args.out / f"{args.model}-random.pt"
    if args.role:  # inside a contender subprocess
        result = (role_loop if args.role == "loop" else role_job)(args, jpegs, ckpt)
        (args.out / f"{args.role}-result.json").write_text(json.dumps(result, indent=2))
        return 0

    cores = os.cpu_count()
    print(f"setup: {args.images} JPEGs in {jpegs}, random-weight {args.model} checkpoint {ckpt} ...", flush=True)
    make_jpegs(args.out, args.images)
    make_checkpoint(args.out, args.model)
    print("running the plain loop first, then the Ray job (each in its own subprocess) ...", flush=True)
    loop = run_child("loop", args)
    print(f"  loop: {loop['images_per_s']:.2f} images/s", flush=True)
    job = run_child("job", args)
    print(f"  job:  {job['images_per_s']:.2f} images/s", flush=True)
    ratio = job["images_per_s"] / loop["images_per_s"]
    steady = job.get("steady_images_per_s")
    f = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)  # noqa: E731
    rows = [
        ("images/s (end to end)", f(loop["images_per_s"]), f(job["images_per_s"])),
        ("seconds (end to end)", f(loop["seconds"], ".1f"), f(job["seconds"], ".1f")),
        ("images/s steady (after 1st batch)", "-", f(steady)),
        ("images/s in model calls only", f(loop["forward_images_per_s"]), f(job.get("forward_images_per_s"))),
        ("peak RSS of process tree (MiB)", f(loop["peak_rss_mib"], ".0f"), f(job["peak_rss_mib"], ".0f")),
    ]
    print(f"\n== {args.images} images, {args.model}, batch size {args.batch_size}, {cores} CPU cores (loop ran first, then job)")
    print(f"{'':36}{'plain loop':>18}{'Ray job':>18}")
    for name, a, b in rows:
        print(f"{name:36}{a!s:>18}{b!s:>18}")
    print(f"{'ratio job / loop (end to end)':36}{f(ratio, '.3f'):>36}")
    if steady:
        print(f"{'ratio job / loop (steady)':36}{f(steady / loop['images_per_s'], '.3f'):>36}")
    print(f"target (issue): {TARGET}")
    print(f"CPU seconds used by other processes meanwhile (should be ~0): loop {loop['other_cpu_s']:.0f}, job {job['other_cpu_s']:.0f}")
    print(f"\nloop: decode+preprocess {loop['decode_s']:.1f}s, forward {loop['forward_s']:.1f}s, torch threads {loop['torch_threads']}")
    print(f"job: the end-to-end figure includes Ray start-up and both model loads; steady = after the first batch,"
          f" actor busy {f(job.get('actor_busy_fraction'), '.0%')} of that span; rejected {job['rejected']},"
          f" collection count {job['collection_count']}; last batch to job end {job['after_last_batch_s']:.1f}s")
    print(f"job timeline (s from job start): {'phase':12}{'from':>8}{'to':>8}{'busy':>8}{'calls':>7}{'procs':>7}")
    for name, t in job["timeline"].items():
        print(f"{'':33}{name:12}{t['from_s']:8.1f}{t['to_s']:8.1f}{t['busy_s']:8.1f}{t['calls']:7}{t['pids']:7}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": args.images, "model": args.model, "batch_size": args.batch_size,
                                         "cores": cores, "order": "loop, then job", "loop": loop, "job": job,
                                         "ratio": ratio, "target": TARGET}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
