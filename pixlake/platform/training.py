"""Contrastive (CLIP) training of an open_clip model on an image–caption Parquet manifest.

The training state (weights, optimiser, schedule, RNG) is checkpointed every
``checkpoint_every`` steps and at the end into ``OUT/train-state.pt``; a re-run with the
same settings resumes from it and, because the data order is a function of (seed, epoch),
ends with the same weights as an uninterrupted run. The result is ``OUT/model.pt``, a
state dict that ``open_clip.create_model_and_transforms(name, pretrained=OUT/model.pt)``
loads, plus ``OUT/train-report.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pixlake.platform.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

STATE_FILE, MODEL_FILE, REPORT_FILE = "train-state.pt", "model.pt", "train-report.json"
PROGRESS_FILE = "train-progress.jsonl"  # one line per epoch: step, epoch, mean loss, seconds


class TrainSettings(BaseModel):
    """What to train, on what, and how."""

    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(description="Parquet manifest with a `caption` column and `path` (relative to it) or `image` bytes")
    out: str = Field(description="output directory: model.pt, train-state.pt, train-report.json")
    model: str = Field("pixlake-demo", description="open_clip model config name")
    init: str = Field("none", description="weights to start from: open_clip tag, checkpoint path, or 'none' (from scratch)")
    split: Optional[str] = Field("train", description="train on rows whose `split` column equals this; None: all rows")
    epochs: float = Field(8.0, gt=0, description="passes over the data (fractions allowed)")
    batch_size: int = Field(128, ge=2, description="pairs per step; every other pair in the batch is a negative")
    lr: float = Field(2e-3, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.1, ge=0)
    warmup: float = Field(0.07, ge=0, lt=1, description="share of steps with linear learning-rate warm-up")
    seed: int = Field(0, description="seeds the data order (random initial weights are always seeded the same)")
    checkpoint_every: int = Field(200, ge=1, description="steps between training-state checkpoints")
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many steps (the schedule still spans all epochs)")
    half: bool = Field(True, description="store model.pt in float16 (half the size; loads into float32 models)")

    def schedule_key(self) -> str:
        """Hash of what a resumed run must share with the interrupted one."""
        same = self.model_dump(exclude={"out", "checkpoint_every", "max_steps", "half"})
        return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:16]


def load_pairs(manifest: str, split: Optional[str], prepare: Any) -> tuple[np.ndarray, list[str], int]:
    """Read and decode the image–caption pairs of a manifest.

    Args:
        manifest: local Parquet path.
        split: keep rows whose ``split`` equals this; None keeps all.
        prepare: PIL RGB image → uint8 HWC pixels at the model's input size.

    Returns:
        (pixels (N, H, W, 3) uint8, captions, rows rejected by the safe decoder).

    Raises:
        SourceError: missing file, missing columns, or no usable rows.
    """
    import pyarrow.parquet as pq

    from pixlake.platform.images import DecodeLimits, Rejection, decode_image

    path = Path(manifest)
    if not path.is_file():
        raise SourceError(f"manifest not found: {manifest}")
    table = pq.read_table(path)
    if "caption" not in table.column_names or not {"path", "image"} & set(table.column_names):
        raise SourceError(f"manifest {manifest} needs a `caption` column and a `path` or `image` column")
    rows = table.to_pylist()
    if split is not None:
        if "split" not in table.column_names:
            raise SourceError(f"manifest {manifest} has no `split` column; pass split=None to train on every row")
        rows = [r for r in rows if r["split"] == split]
    pixels, captions, rejected = [], [], 0
    for row in rows:
        data = row.get("image")
        if not data:
            try:
                data = (path.parent / row["path"]).read_bytes()
            except OSError:
                rejected += 1
                continue
        image = decode_image(data, DecodeLimits())
        if isinstance(image, Rejection) or not row["caption"]:
            rejected += 1
            continue
        pixels.append(prepare(image))
        captions.append(str(row["caption"]))
    if len(captions) < 2:
        raise SourceError(f"manifest {manifest} has {len(captions)} usable rows for split {split!r}; need at least 2")
    return np.stack(pixels), captions, rejected


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a half-written checkpoint


def _lr_lambda(total: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))))

    return factor


def train(settings: TrainSettings, device: Optional[str] = None) -> dict:
    """Train (or resume training) and write ``model.pt`` and ``train-report.json``.

    Args:
        settings: the run.
        device: torch device; default CUDA when available, else CPU.

    Returns:
        The report: steps, epochs, seconds, losses (mean per epoch), the output
        paths, the fingerprint of the trained encoder, and the step it resumed from.

    Raises:
        SourceError: unusable manifest. ConfigError: a batch larger than the data.
        ModelError: unknown model or starting weights.
    """
    import torch
    from open_clip.loss import ClipLoss

    from pixlake.platform.encoder import fingerprint_of, load_encoder

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(settings.model, settings.init, device=device)
    cuda = encoder.device.startswith("cuda")
    model = encoder.model.float()  # train in float32 even where inference would use half
    pixels, captions, rejected = load_pairs(settings.manifest, settings.split, encoder.prepare)
    n = len(captions)
    if settings.batch_size > n:
        raise ConfigError(f"batch_size {settings.batch_size} is larger than the {n} training pairs")
    tokens = encoder.tokenizer(captions)
    per_epoch = n // settings.batch_size  # the ragged tail is dropped: CLIP loss wants full batches
    total = max(1, math.ceil(settings.epochs * per_epoch))
    stop = min(total, settings.max_steps or total)

    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    rest = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=settings.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, int(settings.warmup * total)))
    step, losses, resumed_from = 0, [], 0
    state_path = out / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["schedule_key"] != settings.schedule_key():
            raise ConfigError(f"{state_path} is from a run with other settings; use a new --out or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = resumed_from = state["step"]
        losses = state["losses"]
        log.info("resuming from step %d of %d", step, total)
    else:
        (out / PROGRESS_FILE).unlink(missing_ok=True)  # a fresh run starts a fresh log

    loss_fn = ClipLoss()
    started, window = time.monotonic(), []  # window: losses of the epoch in progress
    model.train()
    while step < stop:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
        idx = order[offset * settings.batch_size : (offset + 1) * settings.batch_size]
        x = encoder.pixel_tensor(pixels[idx.numpy()])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):  # mixed precision on GPUs only
            image_features, text_features, logit_scale = model(x, tokens[idx].to(encoder.device))[:3]
            loss = loss_fn(image_features.float(), text_features.float(), logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as CLIP: temperature no lower than 0.01
        step += 1
        window.append(float(loss.detach()))
        if step % per_epoch == 0 or step == stop:
            losses.append(round(sum(window) / len(window), 4))
            line = {"step": step, "total_steps": total, "epoch": round(step / per_epoch, 2), "loss": losses[-1],
                    "seconds": round(time.monotonic() - started, 1)}
            with open(out / PROGRESS_FILE, "a") as f:
                f.write(json.dumps(line) + "\n")
            window = []
        if step % settings.checkpoint_every == 0 or step == stop:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "step": step, "losses": losses, "schedule_key": settings.schedule_key()}
            _save_atomic(state, state_path)

    model.eval()
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if settings.half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    _save_atomic({"state_dict": weights}, out / MODEL_FILE)
    config = _model_config(settings.model)
    report = {
        "model": settings.model, "checkpoint": str(out / MODEL_FILE), "pairs": n, "rejected": rejected,
        "steps": step, "total_steps": total, "epochs": round(step / per_epoch, 3), "resumed_from": resumed_from,
        "seconds": round(time.monotonic() - started, 1), "losses": losses, "device": encoder.device,
        "fingerprint": fingerprint_of(settings.model, config, {k: v.float() for k, v in weights.items()}),
        "settings": settings.model_dump(),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def _model_config(name: str) -> dict:
    import open_clip

    return open_clip.get_model_config(name)


def run_train_job(settings: TrainSettings, progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Run :func:`train` as one Ray task: on a GPU when the cluster has one, else on the
    cluster's CPUs. Under ``ray job submit`` ``out`` must be storage every node can reach.

    Args:
        settings: the run.
        progress: called with each epoch's line of ``OUT/train-progress.jsonl`` as it appears.

    Returns:
        The training report.
    """
    import ray

    from pixlake.platform.ray_runtime import init_ray

    if not Path(settings.manifest).is_file():  # fail in a second, before Ray starts
        raise SourceError(f"manifest not found: {settings.manifest}")
    init_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = 1 if gpus else max(1, int(ray.available_resources().get("CPU", 1)))
    task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=cpus, max_retries=0)(_train_task)
    ref = task.remote(settings.model_dump(), cpus)
    log_file, seen = Path(settings.out) / PROGRESS_FILE, 0
    while True:
        done, _ = ray.wait([ref], timeout=2.0)
        if progress and log_file.exists():
            lines = log_file.read_text().splitlines()
            for line in lines[seen:]:
                progress(json.loads(line))
            seen = len(lines)
        if done:
            return ray.get(ref)


def _train_task(settings: dict, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    return train(TrainSettings(**settings))
