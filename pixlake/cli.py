"""The ``pixlake`` console script: every subcommand is a :class:`~pixlake.jobs.command.Job`,
mounted from :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from pixlake.jobs import (
    add,
    corpus,
    dedup,
    embed,
    encode,
    erase,
    evaluate,
    export,
    plan_index,
    reindex,
    rekey,
    rollback,
    search,
    serve,
    train,
)
from pixlake.jobs.common import run_main

# In the order `pixlake --help` lists them.
COMMANDS = (embed.JOB, search.JOB, encode.JOB, serve.JOB, corpus.JOB, train.JOB, erase.JOB, export.JOB, rekey.JOB,
            evaluate.JOB, plan_index.JOB, reindex.JOB, rollback.JOB, dedup.JOB, add.JOB)


def build_parser() -> argparse.ArgumentParser:
    """The ``pixlake`` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="pixlake", description="Distributed batch image embedding into Milvus.")
    sub = parser.add_subparsers(dest="command", required=True)
    for job in COMMANDS:
        job.build_parser(sub.add_parser(job.name, help=job.help)).set_defaults(job=job)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pixlake`` console script."""
    args = build_parser().parse_args(argv)
    return run_main(lambda: args.job.execute(args))


if __name__ == "__main__":
    sys.exit(main())
