"""Each embed-job stage alone, at full speed: what one GPU (or CPU node) embeds per second,
and how many CPU cores it takes to keep it fed.

The job's own stage classes are called as Ray Data calls them (a pyarrow block in, a block
out), with nothing between them:

* **decode** — ``DecodeImages`` (safe decode + the PIL half of preprocessing) in 1 process,
  then in one process per core (fork; each decodes its share of the same JPEGs) →
  images/s per core and for the whole machine.
* **header check** — ``DecodeImages(device_jpeg=True)``: what decode tasks still do under
  ``--gpu-decode`` (header parse only), per core.
* **device JPEG decode** — ``DeviceJpegDecoder`` on the encoder's device (nvJPEG on CUDA).
* **encoder** — ``EmbedImages`` per model and batch size (fp16 on CUDA, float32 on CPU),
  fed decoded pixels (the default) and JPEG bytes (``--gpu-decode``); each figure is
  images over wall time of ``--batches`` calls after 2 warm-up calls, vectors back on the
  host (so the GPU work is finished when the clock stops).

Derived: decode cores per encoder = encoder images/s ÷ decode images/s per core.
Inputs: N seeded JPEGs of ``--image-size`` pixels a side (``make_jpegs`` of
``embed_throughput.py``), random weights (throughput does not depend on them).

Why not the whole Ray job on the GPU machine: ``bench/embed_throughput.py`` runs it, but
the Ray wheel (79 MB) is more than the device tool carries (64 MiB). On a Ray cluster the
job's rate per GPU is at most min(encoder rate, decode cores × per-core rate), which this
prints; ``embed_throughput.py`` measures how close the real job gets on CPU.

Run: ``python bench/stage_throughput.py [--models ViT-B-32,ViT-L-14] [--images 2048]
[--batch-sizes 128,256,512] [--json out.json]``; ``--quick`` for a CPU smoke run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from embed_throughput import make_jpegs  # noqa: E402

_BLOBS: list[bytes] = []  # the JPEGs, set before forking so workers share them without pickling


def _block(blobs: list[bytes]):
    """A load-stage output block over ``blobs`` (what DecodeImages receives)."""
    import pyarrow as pa

    from pixlake.platform.pipeline.rows import OK, table

    rows = [{"source": f"{i}.jpg", "id": str(i), "tenant": "t", "subject": "", "content_hash": "", "meta": "{}",
             "status": OK, "reason": "", "image": b} for i, b in enumerate(blobs)]
    return table(rows, [("image", pa.binary())])


def _decode_share(args) -> int:
    """Worker: run DecodeImages over its share of _BLOBS (``repeat`` times), 128 rows per
    call (the job's STAGE_BATCH)."""
    preprocess, device_jpeg, start, stop, repeat = args
    from pixlake.platform.images import DecodeLimits
    from pixlake.platform.pipeline.decode import DecodeImages

    stage = DecodeImages(preprocess, DecodeLimits(), device_jpeg=device_jpeg)
    done = 0
    for _ in range(repeat):
        for i in range(start, stop, 128):
            done += stage(_block(_BLOBS[i:min(i + 128, stop)])).num_rows
    return done


def decode_rates(preprocess, device_jpeg: bool, procs: int) -> dict:
    """images/s of DecodeImages in 1 process and in ``procs`` forked processes (header
    checks are fast: each share is checked 10 times so process start-up does not dominate)."""
    out, repeat = {}, 10 if device_jpeg else 1
    for p in sorted({1, procs}):
        n = len(_BLOBS) if p > 1 else min(len(_BLOBS), 512)
        shares = [(preprocess, device_jpeg, n * k // p, n * (k + 1) // p, repeat) for k in range(p)]
        t0 = time.perf_counter()
        if p == 1:
            done = _decode_share(shares[0])
        else:
            with multiprocessing.get_context("fork").Pool(p) as pool:
                done = sum(pool.map(_decode_share, shares))
        out[p] = done / (time.perf_counter() - t0)
    return {"per_core": out[1], "all_cores": out[procs], "procs": procs}


def encoder_rates(model: str, batch_sizes: list[int], batches: int, device: str | None) -> dict:
    """EmbedImages images/s per batch size, from pixels and from JPEG bytes."""
    import torch

    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.images import DecodeLimits
    from pixlake.platform.pipeline.decode import DecodeImages
    from pixlake.platform.pipeline.embed import EmbedImages

    probe = load_encoder(model, "none", device="cpu")  # for the fingerprint and preprocessing only
    fingerprint, preprocess = probe.fingerprint, probe.preprocess
    del probe
    t0 = time.perf_counter()
    stage = EmbedImages(model, "none", fingerprint, threads=os.cpu_count(), device=device)
    load_s = time.perf_counter() - t0
    largest = max(batch_sizes)
    blobs = (_BLOBS * (largest // len(_BLOBS) + 1))[:largest]
    inputs = {kind: DecodeImages(preprocess, DecodeLimits(), device_jpeg=kind == "jpeg")(_block(blobs))
              for kind in ("pixels", "jpeg")}
    rates = {}
    for kind, block in inputs.items():
        for b in batch_sizes:
            part = block.slice(0, b)
            for _ in range(2):
                stage(part)
            t0 = time.perf_counter()
            for _ in range(batches):
                out = stage(part)
            rates[f"{kind}@{b}"] = b * batches / (time.perf_counter() - t0)
            assert out.num_rows == b and all(s == "ok" for s in out.column("status").to_pylist())
    peak = torch.cuda.max_memory_allocated() / 2**30 if stage.encoder.device.startswith("cuda") else None
    return {"model": model, "device": stage.encoder.device, "dtype": str(stage.encoder.dtype), "load_s": load_s,
            "images_per_s": rates, "peak_gpu_gib": peak, "preprocess_side": preprocess.size}


def device_decode_rate(preprocess, device: str, batch: int, batches: int) -> float:
    """DeviceJpegDecoder images/s on ``device`` at ``batch`` JPEGs per call."""
    import torch

    from pixlake.platform.images.device import DeviceJpegDecoder

    decoder = DeviceJpegDecoder(preprocess, device)
    blobs = (_BLOBS * (batch // len(_BLOBS) + 1))[:batch]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        decoder(blobs)
    sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        out = decoder(blobs)
    sync()
    assert all(o is not None for o in out)
    return batch * batches / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-sizes", default="128,256,512")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when present)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="pixlake-tiny, 128 images, small batches")
    args = parser.parse_args()
    if args.quick:
        args.models, args.images, args.batch_sizes, args.batches = "pixlake-tiny", 128, "16,64", 2

    import torch

    from pixlake.platform.encoder import load_encoder, register_bundled_configs

    register_bundled_configs()
    cores = os.cpu_count() or 1
    jpegs = make_jpegs(args.out / f"stage-{args.image_size}", args.images, size=args.image_size)
    _BLOBS.extend(p.read_bytes() for p in sorted(jpegs.glob("*.jpg")))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = {"cores": cores, "device": device, "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
              "torch": torch.__version__, "images": len(_BLOBS), "image_size": args.image_size,
              "mean_jpeg_bytes": sum(map(len, _BLOBS)) / len(_BLOBS), "models": []}
    print(f"{cores} CPU cores, device {device} {result['gpu'] or ''}, torch {torch.__version__}; "
          f"{len(_BLOBS)} JPEGs {args.image_size}² ({result['mean_jpeg_bytes'] / 1024:.0f} KiB mean)")

    # CPU stages first: forking after CUDA is initialised is unsafe.
    models = args.models.split(",")
    preprocess = load_encoder(models[0], "none", device="cpu").preprocess
    result["decode"] = decode_rates(preprocess, False, cores)
    result["header_check"] = decode_rates(preprocess, True, cores)
    for name, r in (("decode (CPU tasks)", result["decode"]), ("header check (--gpu-decode)", result["header_check"])):
        print(f"{name:<28} {r['per_core']:8.0f} images/s per core, {r['all_cores']:8.0f} on {r['procs']} processes")
    result["device_decode"] = device_decode_rate(preprocess, device, 256, args.batches)
    print(f"{'device JPEG decode':<28} {result['device_decode']:8.0f} images/s on {device} (batch 256)")

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    for model in models:
        r = encoder_rates(model, sizes, args.batches, device)
        result["models"].append(r)
        best = max(v for k, v in r["images_per_s"].items() if k.startswith("pixels"))
        best_jpeg = max(v for k, v in r["images_per_s"].items() if k.startswith("jpeg"))
        r["decode_cores_per_encoder"] = best / result["decode"]["per_core"]
        r["header_cores_per_encoder"] = best_jpeg / result["header_check"]["per_core"]
        rates = "  ".join(f"{k} {v:.0f}" for k, v in r["images_per_s"].items())
        print(f"{model} on {r['device']} ({r['dtype']}, load {r['load_s']:.1f} s"
              + (f", peak {r['peak_gpu_gib']:.1f} GiB" if r["peak_gpu_gib"] else "") + f"): {rates} images/s")
        print(f"  → best {best:.0f} images/s from pixels needs {r['decode_cores_per_encoder']:.1f} decode cores; "
              f"best {best_jpeg:.0f} images/s with --gpu-decode needs {r['header_cores_per_encoder']:.1f} cores "
              f"for header checks; GPU-hours per 100M images: {1e8 / best / 3600:.1f} (pixels), "
              f"{1e8 / best_jpeg / 3600:.1f} (--gpu-decode)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
