"""The ``pixlake`` commands come from one table, and ``--config`` is one settings file for all of them."""

from __future__ import annotations

import argparse
import importlib
import os

import pytest

from pixlake.cli import COMMANDS, build_parser, main
from pixlake.platform.errors import ConfigError

# The arguments each command needs besides --config (nothing runs: only the config is built).
REQUIRED = {"embed": ["src"], "search": ["--text", "x"], "encode": ["--text", "x"], "serve": [], "corpus": None,
            "train": None, "erase": ["--subject", "s"], "export": ["--subject", "s"], "rekey": [],
            "evaluate": ["manifest.parquet"], "plan-index": [], "reindex": [], "rollback": [], "dedup": [],
            "add": ["img.png"]}
SETTINGS = ("store:\n  db: /data/p.db\n  collection: photos\nencoder:\n  model: pixlake-tiny\n  pretrained: none\n"
            "governance:\n  beta: 0.5\n")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(s for a in parser._actions for s in a.option_strings or [a.dest])


def test_every_command_is_mounted_once_with_the_flags_of_its_module():
    assert [job.name for job in COMMANDS] == list(REQUIRED)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(REQUIRED)
    for job in COMMANDS:
        module = importlib.import_module(job.module)
        assert module.JOB is job  # `python -m <module>` and `pixlake <name>` are the same job
        assert _options(module.build_parser()) == _options(sub.choices[job.name]), job.name


def _served(job, argv):
    config = job.config(build_parser().parse_args([job.name, *argv]))
    s = config.settings
    if job.name == "serve":
        return s.db, s.collection, s.model, s.pretrained, s.governance.beta
    return s.store.db, s.store.collection, s.encoder.model, s.encoder.pretrained, s.governance.beta


def test_config_is_the_settings_file_for_every_command(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("PIXLAKE_")]:  # the file, not the environment, is tested
        monkeypatch.delenv(name)
    settings = tmp_path / "pixlake.yaml"
    settings.write_text(SETTINGS)
    with_config = [job for job in COMMANDS if "--config" in _options(job.build_parser())]
    assert {job.name for job in with_config} == {k for k, v in REQUIRED.items() if v is not None}
    for job in with_config:
        db, collection, model, pretrained, beta = _served(job, [*REQUIRED[job.name], "--config", str(settings)])
        assert db == "/data/p.db" and beta == 0.5, job.name
        # evaluate embeds into its own collection unless --collection names one
        assert collection == ("evaluation" if job.name == "evaluate" else "photos"), job.name
        if job.name not in ("erase", "export", "rekey", "rollback"):  # commands that load an encoder
            assert (model, pretrained) == ("pixlake-tiny", "none"), job.name
        if "--db" in _options(job.build_parser()):  # flags override the file
            assert _served(job, [*REQUIRED[job.name], "--config", str(settings), "--db", "/x.db"])[0] == "/x.db"


def test_serve_reads_a_serve_section_and_its_older_flat_form(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXLAKE_API_KEYS", raising=False)
    serve = next(job for job in COMMANDS if job.name == "serve")
    both = tmp_path / "both.yaml"
    both.write_text(SETTINGS + "serve:\n  rate_per_s: 0.5\n  max_image_bytes: 2000\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("db: /data/p.db\nrate_per_s: 0.5\nmax_image_bytes: 2000\n")
    for path in (both, flat):
        s = serve.config(build_parser().parse_args(["serve", "--config", str(path), "--port", "9"])).settings
        assert (s.db, s.rate_per_s, s.max_image_bytes) == ("/data/p.db", 0.5, 2000), path.name


def test_a_misspelt_setting_fails_in_one_line_for_every_command(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("store:\n  dbb: /data/p.db\n")
    for job in COMMANDS:
        if REQUIRED[job.name] is None:
            continue
        with pytest.raises(ConfigError, match="dbb"):
            job.config(build_parser().parse_args([job.name, *REQUIRED[job.name], "--config", str(bad)]))
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip().endswith("config file not found: " + str(tmp_path / "missing.yaml"))
