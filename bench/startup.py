"""The embed job's fixed start: seconds from the call to each start-up phase and the first batch.

Runs ``run_embed_job`` ``--runs`` times on ``--images`` small JPEGs into a fresh milvus-lite
db, each run in its own process with a fresh local Ray (what a user's first job pays), and
prints the report's ``startup`` phases: ``ray`` (Ray up), ``owners`` (the governance and
store owners, the metrics actor, the claim shards and the read stage started), ``encoder``
(the driver's model load done), ``pipeline`` (the Ray Data pipeline built) and
``first_embedded`` (the first encoder batch done), with the median of each.

``--against DIR`` runs another checkout's code (for example ``git worktree add /tmp/before
<commit>``) in alternate runs with this one, in one command on one machine, and prints both
medians and their ratio: the before/after of a start-up change. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("ray", "owners", "encoder", "pipeline", "first_embedded")

# One run, in a child process whose PYTHONPATH picks the checkout (Ray's workers inherit it).
CHILD = """
import json, shutil, sys
from pathlib import Path
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.settings import load_settings
model, ckpt, src, db = sys.argv[1:5]
for p in Path(db).parent.glob(Path(db).name + "*"):
    shutil.rmtree(p) if p.is_dir() else p.unlink()
s = load_settings(overrides={"store": {"db": db, "collection": "startup"},
                             "encoder": {"model": model, "pretrained": ckpt}, "job": {"batch_size": 32}})
r = run_embed_job(src, s)
print(json.dumps({"startup": r.startup, "seconds": r.seconds, "embedded": r.embedded}))
"""


def one_run(code: Path, args, jpegs: Path, ckpt: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_ADDRESS": "local"}
    proc = subprocess.run([sys.executable, "-c", CHILD, args.model, str(ckpt), str(jpegs), str(args.out / "startup.db")],
                          env=env, capture_output=True, text=True, cwd=args.out)
    if proc.returncode:
        sys.exit(f"run with {code} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from embed_throughput import make_checkpoint, make_jpegs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", type=Path, help="another checkout (its repository root) to run in alternate runs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "startup")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jpegs, ckpt = make_jpegs(args.out, args.images), make_checkpoint(args.out, args.model)
    sides = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(args.runs):
        for side, code in (reversed(sides.items()) if i % 2 else sides.items()):  # alternate who goes first
            run = one_run(code, args, jpegs, ckpt)
            runs[side].append(run)
            print(f"run {i + 1} {side:8s} {run['startup']}  total {run['seconds']:.1f} s", flush=True)
    medians = {side: {p: statistics.median(r["startup"][p] for r in rs if p in r["startup"]) for p in PHASES}
               for side, rs in runs.items()}
    print(f"\n== median seconds from the job's start, {args.model}, {args.images} images, {args.runs} runs each, "
          f"{os.cpu_count()} cores")
    print(f"{'phase':16s}" + "".join(f"{side:>12s}" for side in sides) + ("     ratio" if args.against else ""))
    for p in PHASES:
        line = f"{p:16s}" + "".join(f"{medians[side][p]:12.2f}" for side in sides)
        if args.against:
            line += f"{medians['this'][p] / medians['against'][p]:10.2f}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians, "sides": {k: str(v) for k, v in sides.items()}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
