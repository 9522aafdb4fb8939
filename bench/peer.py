"""pixlake's embed job against clip-retrieval's inference, each end to end as a user runs it.

Same photos (``--images`` seeded photo-like 640x480 JPEGs, quality 90), same ViT-B-32
checkpoint (random weights: ``build/peer/vitb32-random.pt``, made by ``bench/peer_setup.sh``),
same machine; one run each, pixlake first:

* **pixlake**: ``pixlake embed DIR --model ViT-B-32 --pretrained CKPT --db <fresh milvus-lite> --json``.
  Encryption on (the default): vectors encrypted, sources sealed, written to the store. The
  command starts its own local Ray.
* **clip-retrieval** 2.45.0, in its own venv (``build/peer-venv``; ``bench/peer_setup.sh``
  builds it): ``clip-retrieval inference --input_format files --enable_text False
  --enable_metadata False --clip_model open_clip:ViT-B-32/CKPT --batch_size B
  --num_prepro_workers W``. It writes float16 ``.npy`` files: no store, no encryption.
  ``B`` defaults to pixlake's batch size (64) and ``W`` to this machine's cores, not its
  defaults (256, 4), which are slower on a small CPU box; ``--peer-defaults`` runs those.

Wall time is each command's, from start to exit. Both outputs are counted (pixlake's
report, clip-retrieval's ``.npy`` rows) so a run that skipped images cannot look fast.
Nothing is asserted: the script prints, and writes JSON with ``--json``.
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

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "build" / "peer-venv" / "bin" / "clip-retrieval"
TARGET = "clip-retrieval's wall time >= 1.2x pixlake's on the same 768 photos and ViT-B-32 checkpoint, encryption on"


def make_photos(out: Path, n: int) -> Path:
    """``n`` distinct photo-like 640x480 JPEGs in ``out/photos`` (kept when already there)."""
    from thumbnails import photo

    d = out / "photos"
    if d.is_dir() and len(list(d.glob("*.jpg"))) == n:
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for i in range(n):
        (d / f"{i:05d}.jpg").write_bytes(photo(640, 480, seed=i))
    return d


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode:
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc


def run_pixlake(photos: Path, ckpt: Path, model: str, work: Path) -> dict:
    db = work / "pixlake.db"
    for stale in work.glob("*pixlake.db*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, as on a laptop; not a `ray start` cluster here
    seconds, proc = timed([str(Path(sys.executable).parent / "pixlake"), "embed", str(photos), "--model", model,
                           "--pretrained", str(ckpt), "--db", str(db), "--json"], env)
    report = json.loads(proc.stdout)
    return {"seconds": seconds, "job_seconds": report["seconds"], "images": report["embedded"],
            "rejected": report["rejected"], "protection": report["protection"], "startup": report.get("startup", {})}


def run_peer(photos: Path, ckpt: Path, work: Path, batch_size: int, workers: int) -> dict:
    import numpy as np

    out = work / "clip-retrieval-out"
    shutil.rmtree(out, ignore_errors=True)  # it reads back any stats it finds there
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    seconds, _ = timed([str(PEER), "inference", "--input_dataset", str(photos), "--output_folder", str(out),
                        "--input_format", "files", "--enable_text", "False", "--enable_metadata", "False",
                        # model name = the text before the first '/', the checkpoint all after it
                        "--clip_model", f"open_clip:ViT-B-32/{ckpt}", "--batch_size", str(batch_size),
                        "--num_prepro_workers", str(workers)], env)
    rows = sum(np.load(f).shape[0] for f in (out / "img_emb").glob("*.npy"))
    return {"seconds": seconds, "images": rows, "batch_size": batch_size, "workers": workers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--model", default="ViT-B-32", help="pixlake's model (the peer always runs ViT-B-32)")
    ap.add_argument("--ckpt", type=Path, default=ROOT / "build" / "peer" / "vitb32-random.pt")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "peer" / "run")
    ap.add_argument("--peer-defaults", action="store_true", help="clip-retrieval's own batch size 256 and 4 workers")
    ap.add_argument("--skip-peer", action="store_true", help="pixlake only (the smoke test; no peer venv)")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args(argv)
    if not args.ckpt.is_file():
        sys.exit(f"no checkpoint at {args.ckpt}: run bench/peer_setup.sh (or pass --ckpt)")
    if not args.skip_peer and not PEER.is_file():
        sys.exit(f"no {PEER}: run bench/peer_setup.sh first")
    args.out.mkdir(parents=True, exist_ok=True)
    photos = make_photos(args.out, args.images)
    for f in photos.glob("*.jpg"):  # both read from the page cache, not the first one from disk
        f.read_bytes()
    result = {"images": args.images, "model": args.model, "cpus": os.cpu_count(), "target": TARGET}
    print(f"{args.images} photos (640x480 JPEG), {args.model}, {os.cpu_count()} CPU cores; pixlake first, then clip-retrieval",
          flush=True)
    result["pixlake"] = run_pixlake(photos, args.ckpt.resolve(), args.model, args.out)
    print(f"  pixlake embed:             {result['pixlake']['seconds']:7.1f} s  ({result['pixlake']['images']} embedded, "
          f"{result['pixlake']['rejected']} rejected; {result['pixlake']['protection'].split(';')[0]})", flush=True)
    print(f"    the job itself (its report): {result['pixlake']['job_seconds']:.1f} s; start-up, s from its start: "
          f"{result['pixlake']['startup']}")
    if not args.skip_peer:
        batch, workers = (256, 4) if args.peer_defaults else (64, os.cpu_count() or 1)
        result["clip_retrieval"] = run_peer(photos, args.ckpt.resolve(), args.out, batch, workers)
        peer = result["clip_retrieval"]
        print(f"  clip-retrieval inference:  {peer['seconds']:7.1f} s  ({peer['images']} embedded; batch {batch}, "
              f"{workers} workers)")
        result["ratio_peer_over_pixlake"] = round(peer["seconds"] / result["pixlake"]["seconds"], 3)
        print(f"ratio clip-retrieval / pixlake (wall): {result['ratio_peer_over_pixlake']:.3f}   target: {TARGET}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # `thumbnails`, as when run from bench/
    sys.exit(main())
