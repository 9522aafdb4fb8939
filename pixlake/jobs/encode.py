"""Print the plaintext embedding of a text or an image as JSON: ``pixlake encode (--text T | --image PATH)``."""

from __future__ import annotations

import argparse
import json
import sys

from pixlake.jobs.command import Job
from pixlake.jobs.common import add_config_flag, add_encoder_flags, emit, settings_from_flags
from pixlake.jobs.search import QueryConfig, add_query_flags


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the encoder."""
    add_encoder_flags(parser)
    add_config_flag(parser)
    add_query_flags(parser, "to embed")


def run(config: QueryConfig) -> int:
    """Embed; prints the vector as a JSON list. Returns the exit code."""
    emit(json.dumps([float(x) for x in config.vector()[1]]))
    return 0


JOB = Job("encode", "print the plaintext embedding of a text or image as JSON", __spec__.name, add_flags,
          lambda args: QueryConfig.of(args, settings=settings_from_flags(args)), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
