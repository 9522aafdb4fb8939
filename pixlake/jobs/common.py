"""Flags, settings and output shared by the job entrypoints and the CLI."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Callable


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """``--config``: pixlake's YAML settings file, the same file for every command."""
    parser.add_argument("--config", type=Path,
                        help="YAML settings file (flags override it, it overrides the environment and defaults)")


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """``--db``, ``--collection`` and ``--config``."""
    parser.add_argument("--db", help="milvus-lite path (default ./pixlake.db) or Milvus server URI http://host:19530")
    parser.add_argument("--collection", help="collection name (default 'images')")
    add_config_flag(parser)


def add_encoder_flags(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--pretrained``."""
    parser.add_argument("--model", help="open_clip model name (default ViT-B-32)")
    parser.add_argument("--pretrained", help="open_clip tag, local checkpoint path, or 'none' for random weights")


def settings_from_flags(args: argparse.Namespace, **sections: dict[str, Any]):
    """A command's :class:`~pixlake.platform.settings.Settings`: its flags over ``--config``, the
    ``PIXLAKE_`` environment and defaults.

    ``--db``, ``--collection``, ``--model`` and ``--pretrained`` are read where the command has
    them; ``sections`` (``store={"index_plan": ...}``) add or replace overrides, a ``None``
    value leaving that field to the lower layers."""
    from pixlake.platform.settings import load_settings

    overrides: dict[str, dict[str, Any]] = {
        "store": {"db": getattr(args, "db", None), "collection": getattr(args, "collection", None)},
        "encoder": {"model": getattr(args, "model", None), "pretrained": getattr(args, "pretrained", None)},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(getattr(args, "config", None), overrides)


# Where emit() writes while run_main has sent sys.stdout to stderr; None outside run_main.
_results = None


def emit(*values: object) -> None:
    """Print a command's output: the one thing a ``pixlake`` command writes on stdout."""
    print(*values, file=_results or sys.stdout, flush=True)


def run_main(body: Callable[[], int]) -> int:
    """Run a command body; a :class:`PixlakeError` becomes one line on stderr and exit code 2.

    While the body runs, anything else printed to stdout goes to stderr: Ray's driver prints
    raylet warnings there ("N worker processes have been started..."), which would break
    ``pixlake reindex | jq``. Results go through :func:`emit`."""
    global _results
    from pixlake.platform.errors import PixlakeError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _results = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return body()
    except PixlakeError as e:
        print(f"pixlake: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pixlake: interrupted", file=sys.stderr)
        return 130
    finally:
        _results = None


def validated(model: type, values: dict):
    """Build a pydantic model from flags; the first invalid field becomes a ConfigError."""
    from pydantic import ValidationError

    from pixlake.platform.errors import ConfigError

    try:
        return model(**values)
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}") from e
