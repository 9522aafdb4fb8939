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
from typing import Optional, Sequence

from pixlake.jobs.common import add_store_flags, emit, run_main


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of the reindex job (also mounted as ``pixlake reindex``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m pixlake.jobs.reindex", description=__doc__)
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
    return parser


def build_rollback_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of ``pixlake rollback``."""
    parser = parser or argparse.ArgumentParser(prog="pixlake rollback", description="Point a live collection back.")
    add_store_flags(parser)
    parser.add_argument("--to", help="the version to serve (default: the newest one older than the current)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Re-index for parsed flags; exit 0 when promoted (or --no-promote), 1 when the gate refused."""
    from pixlake.platform.reindex import reindex
    from pixlake.platform.settings import load_settings

    settings = load_settings(args.config, {"store": {"db": args.db, "collection": args.collection}})
    candidate = load_settings(args.config, {
        "store": {"db": args.db, "collection": args.collection,
                  "index_plan": str(args.index_plan) if args.index_plan else None},
        "encoder": {"model": args.model, "pretrained": args.pretrained},
        "governance": {"beta": args.beta},
    })
    result = reindex(settings, candidate, args.source, args.eval_manifest, args.max_recall_drop, not args.no_promote)
    text = json.dumps(result, indent=2)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    emit(text)
    refused = not args.no_promote and not result["promoted"]
    if refused:
        print(f"pixlake: {result['to']} not promoted: the quality gate refused it; {result['collection']} still "
              f"serves {result['from']}", file=sys.stderr)
    return 1 if refused else 0


def run_rollback(args: argparse.Namespace) -> int:
    """Roll back for parsed flags; prints the switch as JSON."""
    from pixlake.platform.lifecycle import rollback
    from pixlake.platform.settings import load_settings
    from pixlake.platform.store import MilvusStore

    settings = load_settings(args.config, {"store": {"db": args.db, "collection": args.collection}})
    store = MilvusStore.configured(settings.store)
    try:
        emit(json.dumps(rollback(store, settings.store.collection, args.to)))
    finally:
        store.close()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pixlake.jobs.reindex``."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
