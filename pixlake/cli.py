"""The ``pixlake`` console script: thin wrappers over ``pixlake.jobs`` and ``pixlake.platform``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from pixlake.jobs import embed as embed_job
from pixlake.jobs import erase as erase_job
from pixlake.jobs import evaluate as evaluate_job
from pixlake.jobs import export as export_job
from pixlake.jobs import plan_index as plan_index_job
from pixlake.jobs import reindex as reindex_job
from pixlake.jobs import rekey as rekey_job
from pixlake.jobs import train as train_job
from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, run_main


def _settings(args: argparse.Namespace):
    from pixlake.platform.settings import load_settings

    return load_settings(
        args.config,
        {"store": {"db": getattr(args, "db", None), "collection": getattr(args, "collection", None)},
         "encoder": {"model": args.model, "pretrained": args.pretrained}},
    )


def _cmd_search(args: argparse.Namespace) -> int:
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.query import encode_query, open_collection, read_image_file

    settings = _settings(args)
    image = read_image_file(args.image) if args.image else None
    encoder = load_encoder(settings.encoder.model, settings.encoder.pretrained)
    vector = encode_query(encoder, text=args.text, image=image, limits=settings.job.decode)
    collection = open_collection(settings, encoder.fingerprint)
    try:
        hits = collection.search(vector, k=args.k, tenant=args.tenant)
    finally:
        collection.close()
    if args.json:
        emit(json.dumps(hits))
    else:
        for rank, h in enumerate(hits, 1):
            emit(f"{rank:>3}  {h['score']:.4f}  {h['source']}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.query import encode_query, read_image_file

    settings = _settings(args)
    image = read_image_file(args.image) if args.image else None
    encoder = load_encoder(settings.encoder.model, settings.encoder.pretrained)
    emit(json.dumps([float(x) for x in encode_query(encoder, text=args.text, image=image, limits=settings.job.decode)]))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import yaml

    from pixlake.jobs.common import validated
    from pixlake.serve import run
    from pixlake.serve.config import ServeSettings

    values = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    flags = {"db": args.db, "collection": args.collection, "model": args.model, "pretrained": args.pretrained}
    settings = validated(ServeSettings, {**values, **{k: v for k, v in flags.items() if v is not None}})
    settings.api_keys()  # a malformed PIXLAKE_API_KEYS fails here, in one line
    # SIGTERM or SIGINT (Ctrl-C) stops Serve and the Ray this command started, whatever
    # signal dispositions it inherited.
    run.serve_until_stopped(
        settings, args.host, args.port,
        on_ready=lambda url: emit(f"pixlake serving {settings.collection} at {url} (OpenAPI: {url}/docs); "
                                  "Ctrl-C or SIGTERM to stop"),
        on_stop=lambda signame: emit(f"shutting down ({signame})"))
    return 0


def _cmd_corpus(args: argparse.Namespace) -> int:
    from pixlake.platform.corpus import MANIFEST, write_corpus
    from pixlake.platform.errors import ConfigError

    if args.n < 1 or not 0 <= args.holdout <= 1:
        raise ConfigError("--n must be at least 1 and --holdout within [0, 1]")
    paths = write_corpus(args.out, args.n, seed=args.seed, holdout=args.holdout)
    emit(f"wrote {len(paths)} images to {args.out / 'images'} and the manifest {args.out / MANIFEST}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pixlake`` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="pixlake", description="Distributed batch image embedding into Milvus.")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed a corpus (same as python -m pixlake.jobs.embed)")
    embed_job.build_parser(embed)
    embed.set_defaults(func=embed_job.run)

    search = sub.add_parser("search", help="text→image or image→image search")
    add_store_flags(search)
    add_encoder_flags(search)
    search.add_argument("--tenant", help="search only this tenant's rows (default 'default')", default="default")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="text query")
    query.add_argument("--image", help="path of a query image")
    search.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--json", action="store_true", help='print a JSON list of {"id", "source", "score", "meta"}')
    search.set_defaults(func=_cmd_search)

    encode = sub.add_parser("encode", help="print the plaintext embedding of a text or image as JSON")
    add_encoder_flags(encode)
    encode.add_argument("--config", help="YAML settings file")
    what = encode.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="text to embed")
    what.add_argument("--image", help="path of an image to embed")
    encode.set_defaults(func=_cmd_encode)
    serve_p = sub.add_parser("serve", help="serve the HTTP search API on Ray Serve (blocks; Ctrl-C or SIGTERM stops)")
    add_store_flags(serve_p)
    add_encoder_flags(serve_p)
    serve_p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve_p.set_defaults(func=_cmd_serve)

    corpus = sub.add_parser("corpus", help="write a seeded captioned synthetic corpus (images + Parquet manifest)")
    corpus.add_argument("--out", type=Path, required=True, help="output directory")
    corpus.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    corpus.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    corpus.add_argument("--holdout", type=float, default=0.2, help="share of rows with split=holdout (default 0.2)")
    corpus.set_defaults(func=_cmd_corpus)

    jobs = [
        ("train", train_job, "contrastive training"),
        ("erase", erase_job, "GDPR erasure of a data subject, with a receipt"),
        ("export", export_job, "a data subject's items, decrypted, as JSON"),
        ("rekey", rekey_job, "rotate a tenant's vector key"),
        ("evaluate", evaluate_job, "search-quality evaluation"),
        ("plan-index", plan_index_job, "measure PQ code sizes on a collection and save an index plan"),
        ("reindex", reindex_job, "build the next version of a collection, gate it on quality, switch to it"),
    ]
    for name, job, summary in jobs:  # each is also `python -m pixlake.jobs.<name>`
        module = name.replace("-", "_")
        command = sub.add_parser(name, help=f"{summary} (same as python -m pixlake.jobs.{module})")
        job.build_parser(command)
        command.set_defaults(func=job.run)
    rollback = sub.add_parser("rollback", help="point a live collection back at its previous version")
    reindex_job.build_rollback_parser(rollback)
    rollback.set_defaults(func=reindex_job.run_rollback)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pixlake`` console script."""
    args = build_parser().parse_args(argv)
    return run_main(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
