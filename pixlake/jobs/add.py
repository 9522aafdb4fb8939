"""Add images one by one, as ``POST /v1/items`` does, without Ray: ``python -m pixlake.jobs.add
IMAGE... [--tenant T] [--subject S] [--meta JSON] [--json]``.

Each image's row is built as the embed job builds it (same row id, safe decode, encryption
and sealing, deny-list, encoder fingerprint): an image already stored ``exists``, an erased
subject's image is refused. Prints one line per image (or a JSON list) and exits 1 when any
image was not written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from pydantic import field_validator

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of ``pixlake add``."""
    parser.add_argument("images", nargs="+", type=Path, help="image files to add")
    add_store_flags(parser)
    add_encoder_flags(parser)
    parser.add_argument("--tenant", default="default", help="the tenant the images belong to (default 'default')")
    parser.add_argument("--subject", help="the data subject the images belong to (erasure removes them with them)")
    parser.add_argument("--meta", help='metadata of every image, a JSON object: \'{"label": "cat"}\'')
    parser.add_argument("--json", action="store_true", help='print a JSON list of {"image", "id", "status", "reason"?}')


class AddConfig(JobConfig):
    """What to add, for whom, and how to print it."""

    settings: Settings
    images: list[Path]
    tenant: str = "default"
    subject: Optional[str] = None
    meta: Optional[str] = None
    print_json: bool = False

    @field_validator("meta")
    @classmethod
    def _meta(cls, value: Optional[str]) -> Optional[str]:
        from pixlake.platform.ingest import check_meta, json_meta

        check_meta(json_meta(value))  # a bad --meta fails before the model loads
        return value


def add_images(config: AddConfig) -> list[dict[str, Any]]:
    """Add each image; one ``{"image", "id", "status", "reason"?}`` per image, in order."""
    from pixlake.platform.collection import check_fingerprint, open_collection
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.images import Rejection
    from pixlake.platform.ingest import EXISTS, IngestRefused, LiveIngest, json_meta
    from pixlake.platform.pipeline.decode import prepare_pixels
    from pixlake.platform.sources.reader import SourceReader

    settings = config.settings
    limits = settings.job.decode
    meta = json_meta(config.meta)
    encoder = load_encoder(settings.encoder.model, settings.encoder.pretrained)
    transform, reader = encoder.preprocess.pil_transform(), SourceReader(limits.max_bytes)
    results = []
    with open_collection(settings) as collection:
        collection.store.ensure_collection(encoder.dim, encoder.fingerprint)
        check_fingerprint(collection.store, encoder.fingerprint)
        ingest = LiveIngest(collection.store, collection.governance)
        for path in config.images:
            result: dict[str, Any] = {"image": str(path), "id": None}
            results.append(result)
            try:
                data = reader.read(str(path.expanduser().resolve()))
            except Exception as e:  # missing, unreadable, too large: that image only
                result.update(status="rejected", reason=f"unreadable: {e}")
                continue
            try:
                upload = ingest.identify(config.tenant, config.subject, data, meta, source=str(path.expanduser().resolve()))
                result["id"] = upload.id
                if ingest.check(upload, encoder.fingerprint) == EXISTS:
                    result["status"] = EXISTS
                    continue
            except IngestRefused as e:
                result.update(status="refused", reason=f"{e.code}: {e}")
                continue
            pixels = prepare_pixels(data, limits, transform)
            if isinstance(pixels, Rejection):
                result.update(status="rejected", reason=pixels.reason)
                continue
            upload.vector = encoder.embed_pixels(pixels[None])[0]
            result["status"] = ingest.write([upload], encoder.fingerprint)[0]
            if result["status"] not in ("created", EXISTS):
                result.update(status="refused", reason=result["status"])
    return results


def run(config: AddConfig) -> int:
    """Add the images; prints a line per image (or JSON). Exit code 1 when any was not written."""
    results = add_images(config)
    if config.print_json:
        emit(json.dumps(results))
    else:
        for r in results:
            emit(f"{r['status']:<9} {r['id'] or '-':<64}  {r['image']}" + (f"  ({r['reason']})" if r.get("reason") else ""))
    return 0 if all(r["status"] in ("created", "exists") for r in results) else 1


JOB = Job("add", "add images one by one, as POST /v1/items does, without Ray (same as python -m pixlake.jobs.add)",
          __spec__.name, add_flags, lambda args: AddConfig.of(args, settings=settings_from_flags(args), print_json=args.json),
          run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
