"""Search from the command line: ``pixlake search (--text T | --image PATH | --item-id ID)
[--min-score S] [--collapse-duplicates]``: text→image, image→image, or "more like this"."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from pydantic import Field

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_query_flags(parser: argparse.ArgumentParser, what: str) -> argparse._MutuallyExclusiveGroup:
    """``--text`` or ``--image`` (one of them, required), describing what is embedded; the
    group, for a command with one more kind of query."""
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help=f"text {what}")
    query.add_argument("--image", help=f"path of {'a query image' if what == 'query' else 'an image to embed'}")
    return query


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the search."""
    add_store_flags(parser)
    add_encoder_flags(parser)
    parser.add_argument("--tenant", help="search only this tenant's rows (default 'default')", default="default")
    add_query_flags(parser, "query").add_argument(
        "--item-id", help='"more like this": search with this stored item\'s own vector, the item left out')
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--min-score", type=float, help="drop results scoring below this cosine, in [-1, 1]")
    parser.add_argument("--collapse-duplicates", action="store_true",
                        help="at most one result per group of near-duplicates (cosine >= 0.95), the best")
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
    item_id: Optional[str] = None
    k: int = Field(10, ge=1, le=1000)
    min_score: Optional[float] = Field(None, ge=-1, le=1)
    collapse_duplicates: bool = False
    print_json: bool = False


def _similar(config: SearchConfig) -> list[dict]:
    """Hits of "more like this": no encoder needed, the item's stored vector is the query."""
    from pixlake.platform.errors import StoreError
    from pixlake.platform.query import open_collection

    with open_collection(config.settings) as collection:
        if not collection.store.exists():
            raise StoreError(f"no collection {config.settings.store.collection} in {config.settings.store.db}")
        hits = collection.similar(config.tenant, config.item_id, config.k, min_score=config.min_score,
                                  collapse=config.collapse_duplicates)
    if hits is None:
        raise StoreError(f"no item {config.item_id!r} in tenant {config.tenant!r}")
    return hits


def run(config: SearchConfig) -> int:
    """Search; prints ranked hits (or JSON). Returns the exit code."""
    from pixlake.platform.query import open_collection

    if config.item_id is not None:
        hits = _similar(config)
    else:
        fingerprint, vector = config.vector()
        with open_collection(config.settings, fingerprint) as collection:
            hits = collection.search(vector, k=config.k, tenant=config.tenant, min_score=config.min_score,
                                     collapse=config.collapse_duplicates)
    if config.print_json:
        emit(json.dumps(hits))
    else:
        for rank, h in enumerate(hits, 1):
            copies = f"  (+{h['copies']} near-copies)" if h.get("copies") else ""
            emit(f"{rank:>3}  {h['score']:.4f}  {h['source']}{copies}")
    return 0


JOB = Job("search", "text→image or image→image search", __spec__.name, add_flags,
          lambda args: SearchConfig.of(args, settings=settings_from_flags(args), print_json=args.json), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
