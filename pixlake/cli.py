"""The ``pixlake`` console script: thin wrappers over ``pixlake.jobs`` and ``pixlake.platform``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from pixlake.jobs import embed as embed_job
from pixlake.jobs.common import add_encoder_flags, add_store_flags, run_main


def _settings(args: argparse.Namespace):
    from pixlake.platform.settings import load_settings

    return load_settings(
        args.config,
        {"store": {"db": getattr(args, "db", None), "collection": getattr(args, "collection", None)},
         "encoder": {"model": args.model, "pretrained": args.pretrained}},
    )


def _cmd_search(args: argparse.Namespace) -> int:
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.query import check_fingerprint, encode_query, read_image_file, search
    from pixlake.platform.store import MilvusStore, build_filter

    settings = _settings(args)
    image = read_image_file(args.image) if args.image else None
    encoder = load_encoder(settings.encoder.model, settings.encoder.pretrained)
    vector = encode_query(encoder, text=args.text, image=image, limits=settings.job.decode)
    store = MilvusStore(settings.store.db, settings.store.collection)
    try:
        if not store.exists():
            from pixlake.platform.errors import StoreError

            raise StoreError(f"no collection {settings.store.collection} in {settings.store.db}; run `pixlake embed` first")
        check_fingerprint(store, encoder.fingerprint)
        hits = search(store, vector, k=args.k, expr=build_filter(args.tenant))
    finally:
        store.close()
    if args.json:
        print(json.dumps(hits))
    else:
        for rank, h in enumerate(hits, 1):
            print(f"{rank:>3}  {h['score']:.4f}  {h['source']}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.query import encode_query, read_image_file

    settings = _settings(args)
    image = read_image_file(args.image) if args.image else None
    encoder = load_encoder(settings.encoder.model, settings.encoder.pretrained)
    print(json.dumps([float(x) for x in encode_query(encoder, text=args.text, image=image, limits=settings.job.decode)]))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from pixlake.platform.errors import ConfigError
    from pixlake.serve import run
    from pixlake.serve.config import ServeSettings

    values = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    flags = {"db": args.db, "collection": args.collection, "model": args.model, "pretrained": args.pretrained}
    try:
        settings = ServeSettings(**{**values, **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"invalid serve setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from e
    settings.api_keys()  # a malformed PIXLAKE_API_KEYS fails here, in one line
    url = run.start(settings, args.host, args.port)
    print(f"pixlake serving {settings.collection} at {url} (OpenAPI: {url}/docs); Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        run.stop()
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
    serve_p = sub.add_parser("serve", help="serve the HTTP search API on Ray Serve (blocks; Ctrl-C stops)")
    add_store_flags(serve_p)
    add_encoder_flags(serve_p)
    serve_p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve_p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pixlake`` console script."""
    args = build_parser().parse_args(argv)
    return run_main(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
