"""Contrastive training job: ``python -m pixlake.jobs.train MANIFEST --out DIR [flags]``.

Trains (``--init none``) or fine-tunes (``--init TAG|CHECKPOINT``) an open_clip model on an
image–caption Parquet manifest with the CLIP loss, as Ray work that takes a GPU when the
cluster has one. Re-running with the same flags resumes from ``DIR/train-state.pt``.
``DIR/model.pt`` loads with ``--model NAME --pretrained DIR/model.pt`` everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import emit, validated
from pixlake.platform.training import TrainSettings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the train job."""
    parser.add_argument("manifest", help="Parquet manifest: `caption`, and `path` (relative to it) or `image` bytes")
    parser.add_argument("--out", required=True, type=Path, help="output directory (model.pt, train-state.pt, train-report.json)")
    parser.add_argument("--model", help="open_clip model config (default pixlake-demo)")
    parser.add_argument("--init", help="starting weights: open_clip tag, checkpoint path, or 'none' (default: from scratch)")
    parser.add_argument("--split", help="train on rows with this `split` value (default 'train'); 'all' for every row")
    parser.add_argument("--epochs", type=float, help="passes over the data (default 8)")
    parser.add_argument("--batch-size", type=int, help="pairs per step (default 128)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, help="data-order seed (default 0)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps; a re-run resumes")
    parser.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints (default 200)")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")


class TrainConfig(JobConfig):
    """The training settings, and how to print the report."""

    settings: TrainSettings
    print_json: bool = False


def config_of(args: argparse.Namespace) -> TrainConfig:
    """The job's config: the flags given, over :class:`TrainSettings`' defaults."""
    flags = {"manifest": str(args.manifest), "out": str(args.out), "model": args.model, "init": args.init,
             "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "max_steps": args.max_steps, "checkpoint_every": args.checkpoint_every}
    if args.split is not None:
        flags["split"] = None if args.split == "all" else args.split
    settings = validated(TrainSettings, {k: v for k, v in flags.items() if v is not None or k == "split"})
    return TrainConfig(settings=settings, print_json=args.json)


def run(config: TrainConfig) -> int:
    """Train; prints a line per logged step and the summary (or only the JSON report). Returns the exit code."""
    from pixlake.platform.training import run_train_job

    def show(line: dict) -> None:
        if not config.print_json:
            emit(f"step {line['step']}/{line['total_steps']}  epoch {line['epoch']}  loss {line['loss']:.4f}  "
                 f"{line['seconds']:.0f} s")

    report = run_train_job(config.settings, progress=show)
    if config.print_json:
        emit(json.dumps(report, indent=2))
    else:
        emit(f"trained {report['model']} for {report['steps']}/{report['total_steps']} steps "
             f"({report['epochs']} epochs over {report['pairs']} pairs) in {report['seconds']} s on {report['device']}; "
             f"loss {report['losses'][0]} -> {report['losses'][-1]}\ncheckpoint  {report['checkpoint']}\n"
             f"use it with --model {report['model']} --pretrained {report['checkpoint']}")
    return 0


JOB = Job("train", "contrastive training (same as python -m pixlake.jobs.train)", __spec__.name, add_flags, config_of, run,
          verbose=True)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
