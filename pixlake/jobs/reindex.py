"""Re-index a live collection: ``python -m pixlake.jobs.reindex [SOURCE] --eval MANIFEST [flags]``.

Builds the next version of the collection (``images_v2``...): with a new encoder
(``--model/--pretrained``) it re-embeds SOURCE; with only a new ``--index-plan`` or ``--beta``
it rebuilds from the stored rows, decrypted, without reading an image. It then evaluates
the current and the new configuration on the labelled holdout of ``--eval`` and switches
the live name (a Milvus alias) to the new version in one atomic step, only if recall@10
falls by no more than ``--max-recall-drop`` for each query type. ``pixlake rollback``
switches back. The current encoder is the configured one (``--config``, ``PIXLAKE_ENCODER__*``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the reindex job."""
    parser.add_argument("source", nargs="?", help="corpus to re-embed (needed when the encoder changes)")
    add_store_flags(parser)
    parser.add_argument("--model", help="the new encoder's open_clip model (default: the current one)")
    parser.add_argument("--pretrained", help="the new encoder's weights (tag, checkpoint path or 'none')")
    parser.add_argument("--index-plan", type=Path, help="the new index plan (pixlake plan-index), for a Milvus server")
    parser.add_argument("--beta", type=float, help="the new encryption approximation factor")
    parser.add_argument("--eval", dest="eval_manifest", help="labelled holdout manifest of the quality gate")
    parser.add_argument("--max-recall-drop", type=float, default=0.01,
                        help="largest fall of recall@10 per query type the gate accepts (default 0.01)")
    parser.add_argument("--no-promote", action="store_true", help="build and evaluate, but leave the live name as it is")
    parser.add_argument("--report", type=Path, help="write the JSON reindex report here")


class ReindexConfig(JobConfig):
    """The current configuration, the candidate, the gate and where the report goes."""

    settings: Settings
    candidate: Settings
    source: Optional[str] = None
    eval_manifest: Optional[str] = None
    max_recall_drop: float = 0.01
    promote: bool = True
    report: Optional[Path] = None


def config_of(args: argparse.Namespace) -> ReindexConfig:
    """The job's config: ``--model/--pretrained/--index-plan/--beta`` describe only the candidate."""
    current = settings_from_flags(args, encoder={"model": None, "pretrained": None})
    candidate = settings_from_flags(args, store={"index_plan": str(args.index_plan) if args.index_plan else None},
                                    governance={"beta": args.beta})
    return ReindexConfig.of(args, settings=current, candidate=candidate, promote=not args.no_promote)


def run(config: ReindexConfig) -> int:
    """Re-index; prints the report as JSON. Exit 0 when promoted (or not asked to), 1 when the gate refused."""
    from pixlake.platform.lifecycle.reindex import reindex

    result = reindex(config.settings, config.candidate, config.source, config.eval_manifest, config.max_recall_drop,
                     config.promote)
    text = json.dumps(result, indent=2)
    if config.report:
        config.report.parent.mkdir(parents=True, exist_ok=True)
        config.report.write_text(text + "\n")
    emit(text)
    refused = config.promote and not result["promoted"]
    if refused:
        print(f"pixlake: {result['to']} not promoted: the quality gate refused it; {result['collection']} still "
              f"serves {result['from']}", file=sys.stderr)
    return 1 if refused else 0


JOB = Job("reindex", "build the next version of a collection, gate it on quality, switch to it "
          "(same as python -m pixlake.jobs.reindex)", __spec__.name, add_flags, config_of, run, verbose=True)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
