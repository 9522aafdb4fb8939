"""Text→image or image→image search from the command line: ``pixlake search (--text T | --image PATH)``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_query_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--text`` or ``--image`` (one of them, required), describing what is embedded."""
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help=f"text {what}")
    query.add_argument("--image", help=f"path of {'a query image' if what == 'query' else 'an image to embed'}")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the search."""
    add_store_flags(parser)
    add_encoder_flags(parser)
    parser.add_argument("--tenant", help="search only this tenant's rows (default 'default')", default="default")
    add_query_flags(parser, "query")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--json", action="store_true", help='print a JSON list of {"id", "source", "score", "meta"}')


class QueryConfig(JobConfig):
    """A text or an image (path) to embed with the configured encoder."""

    settings: Settings
    text: Optional[str] = None
    image: Optional[str] = None

    def vector(self):
        """The query's embedding (plaintext, unit length)."""
        from pixlake.platform.encoder import load_encoder
        from pixlake.platform.query import encode_query, read_image_file

        image = read_image_file(self.image) if self.image else None
        encoder = load_encoder(self.settings.encoder.model, self.settings.encoder.pretrained)
        return encoder.fingerprint, encode_query(encoder, text=self.text, image=image, limits=self.settings.job.decode)


class SearchConfig(QueryConfig):
    """The query, the tenant searched, how many hits and how to print them."""

    tenant: str = "default"
    k: int = 10
    print_json: bool = False


def run(config: SearchConfig) -> int:
    """Search; prints ranked hits (or JSON). Returns the exit code."""
    from pixlake.platform.query import open_collection

    fingerprint, vector = config.vector()
    collection = open_collection(config.settings, fingerprint)
    try:
        hits = collection.search(vector, k=config.k, tenant=config.tenant)
    finally:
        collection.close()
    if config.print_json:
        emit(json.dumps(hits))
    else:
        for rank, h in enumerate(hits, 1):
            emit(f"{rank:>3}  {h['score']:.4f}  {h['source']}")
    return 0


JOB = Job("search", "text→image or image→image search", __spec__.name, add_flags,
          lambda args: SearchConfig.of(args, settings=settings_from_flags(args), print_json=args.json), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
