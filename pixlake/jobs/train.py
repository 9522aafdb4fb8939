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
from typing import Optional, Sequence

from pixlake.jobs.common import emit, run_main, validated


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of the train job (also mounted as ``pixlake train``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m pixlake.jobs.train", description=__doc__)
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
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the job for parsed flags; returns the exit code."""
    from pixlake.platform.training import TrainSettings, run_train_job

    flags = {"manifest": str(args.manifest), "out": str(args.out), "model": args.model, "init": args.init,
             "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "max_steps": args.max_steps, "checkpoint_every": args.checkpoint_every}
    if args.split is not None:
        flags["split"] = None if args.split == "all" else args.split
    settings = validated(TrainSettings, {k: v for k, v in flags.items() if v is not None or k == "split"})
    def show(line: dict) -> None:
        if not args.json:
            emit(f"step {line['step']}/{line['total_steps']}  epoch {line['epoch']}  loss {line['loss']:.4f}  "
                 f"{line['seconds']:.0f} s")

    report = run_train_job(settings, progress=show)
    if args.json:
        emit(json.dumps(report, indent=2))
    else:
        emit(f"trained {report['model']} for {report['steps']}/{report['total_steps']} steps "
             f"({report['epochs']} epochs over {report['pairs']} pairs) in {report['seconds']} s on {report['device']}; "
             f"loss {report['losses'][0]} -> {report['losses'][-1]}\ncheckpoint  {report['checkpoint']}\n"
             f"use it with --model {report['model']} --pretrained {report['checkpoint']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pixlake.jobs.train``."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
