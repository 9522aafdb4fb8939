"""Serve the HTTP search API on Ray Serve: ``pixlake serve [flags]`` (blocks; Ctrl-C or SIGTERM stops).

``--config`` is pixlake's settings file, as for every command: its ``store`` (``db``,
``collection``, ``search_consistency``), ``encoder`` (``model``, ``pretrained``) and
``governance`` sections say what is served, its ``serve`` section how the app guards itself
(``keys``, body and image caps, rate limits: :class:`~pixlake.serve.config.ServeSettings`).
Serve settings at the top level of the file (its older form) are read the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, validated
from pixlake.platform.errors import ConfigError

# settings-file field -> ServeSettings field
_SERVED = {("store", "db"): "db", ("store", "collection"): "collection",
           ("store", "search_consistency"): "search_consistency",
           ("encoder", "model"): "model", ("encoder", "pretrained"): "pretrained"}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the server."""
    add_store_flags(parser)
    add_encoder_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")


def serve_values(config: Optional[Path]) -> dict[str, Any]:
    """The :class:`~pixlake.serve.config.ServeSettings` values a settings file gives (see the module docstring).

    Raises:
        ConfigError: the file is missing, is not a YAML mapping, or a section is invalid.
    """
    import yaml

    from pixlake.platform.settings import Settings

    if config is None:
        return {}
    if not config.is_file():
        raise ConfigError(f"config file not found: {config}")
    values = yaml.safe_load(config.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{config} is not a YAML mapping")
    serve = dict(values.pop("serve", None) or {})
    sections = {name: values.pop(name) for name in Settings.model_fields if isinstance(values.get(name), dict)}
    for name, section in sections.items():  # a misspelt field fails here, as it would for any other command
        validated(Settings.model_fields[name].annotation, section)
    served = {field: sections[s][f] for (s, f), field in _SERVED.items() if f in sections.get(s, {})}
    if "governance" in sections:
        served["governance"] = sections["governance"]
    return {**served, **values, **serve}


class ServeConfig(JobConfig):
    """What is served and how (:class:`~pixlake.serve.config.ServeSettings`), and where."""

    settings: Any  # pixlake.serve.config.ServeSettings (imported when the command runs)
    host: str = "127.0.0.1"
    port: int = 8000


def config_of(args: argparse.Namespace) -> ServeConfig:
    """The server's config: flags over the settings file over :class:`ServeSettings`' defaults."""
    from pixlake.serve.config import ServeSettings

    flags = {"db": args.db, "collection": args.collection, "model": args.model, "pretrained": args.pretrained}
    settings = validated(ServeSettings, {**serve_values(args.config), **{k: v for k, v in flags.items() if v is not None}})
    settings.api_keys()  # a malformed PIXLAKE_API_KEYS fails here, in one line
    return ServeConfig.of(args, settings=settings)


def run(config: ServeConfig) -> int:
    """Serve until SIGTERM or SIGINT (Ctrl-C), which stop Serve and the Ray this command
    started, whatever signal dispositions it inherited. Returns the exit code."""
    from pixlake.serve import run as serve_run

    settings = config.settings
    serve_run.serve_until_stopped(
        settings, config.host, config.port,
        on_ready=lambda url: emit(f"pixlake serving {settings.collection} at {url} (OpenAPI: {url}/docs); "
                                  "Ctrl-C or SIGTERM to stop"),
        on_stop=lambda signame: emit(f"shutting down ({signame})"))
    return 0


JOB = Job("serve", "serve the HTTP search API on Ray Serve (blocks; Ctrl-C or SIGTERM stops)", __spec__.name, add_flags,
          config_of, run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
