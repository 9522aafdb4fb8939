"""Tests for pixlake.platform.settings: defaults < YAML < environment < explicit overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pixlake.platform.errors import ConfigError
from pixlake.platform.images import DecodeLimits
from pixlake.platform.settings import Settings, load_settings

YAML = """\
store:
  db: {db}
  collection: yaml_col
encoder:
  model: pixlake-tiny
  pretrained: none
  device: cpu
job:
  batch_size: 8
  concurrency: 3
  tenant: acme
  max_rejections_listed: 5
  decode:
    max_bytes: 1000
    max_pixels: 2000
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No PIXLAKE_* variable of the caller's shell may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("PIXLAKE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "pixlake.yaml"
    path.write_text(YAML.format(db=tmp_path / "yaml.db"))
    return path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


# --- defaults and file -----------------------------------------------------------------


def test_defaults():
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.store.db == "./pixlake.db"
    assert s.store.collection == "images"
    assert s.encoder.model == "ViT-B-32"
    assert s.encoder.pretrained == "laion2b_s34b_b79k"
    assert s.encoder.device is None
    assert s.job.batch_size == 64
    assert s.job.concurrency is None
    assert s.job.tenant == "default"
    assert s.job.report is None
    assert s.job.max_rejections_listed == 10_000
    assert s.job.decode == DecodeLimits()


def test_yaml_file_sets_every_section(yaml_file: Path, tmp_path: Path):
    s = load_settings(yaml_file)
    assert s.store.db == str(tmp_path / "yaml.db")
    assert s.store.collection == "yaml_col"
    assert (s.encoder.model, s.encoder.pretrained, s.encoder.device) == ("pixlake-tiny", "none", "cpu")
    assert s.job.batch_size == 8
    assert s.job.concurrency == 3
    assert s.job.tenant == "acme"
    assert s.job.max_rejections_listed == 5
    assert s.job.decode == DecodeLimits(max_bytes=1000, max_pixels=2000)


def test_yaml_path_may_be_a_string(yaml_file: Path):
    assert load_settings(str(yaml_file)).store.collection == "yaml_col"


def test_partial_yaml_keeps_defaults_elsewhere(tmp_path: Path):
    s = load_settings(_write(tmp_path, "job:\n  decode:\n    max_pixels: 77\n"))
    assert s.job.decode.max_pixels == 77
    assert s.job.decode.max_bytes == DecodeLimits().max_bytes
    assert s.job.batch_size == 64
    assert s.store.collection == "images"


def test_yaml_of_one_load_does_not_leak_into_the_next(yaml_file: Path):
    assert load_settings(yaml_file).store.collection == "yaml_col"
    assert load_settings().store.collection == "images"


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_config_path_that_is_a_directory(tmp_path: Path):
    with pytest.raises(ConfigError):
        load_settings(tmp_path)


# --- precedence ------------------------------------------------------------------------


def test_env_overrides_yaml(yaml_file: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PIXLAKE_STORE__DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("PIXLAKE_JOB__BATCH_SIZE", "32")
    s = load_settings(yaml_file)
    assert s.store.db == str(tmp_path / "env.db")
    assert s.job.batch_size == 32
    # Fields the environment does not set still come from the file (deep merge).
    assert s.store.collection == "yaml_col"
    assert s.job.tenant == "acme"
    assert s.job.decode.max_bytes == 1000


def test_env_overrides_defaults(monkeypatch):
    monkeypatch.setenv("PIXLAKE_JOB__BATCH_SIZE", "7")
    assert load_settings().job.batch_size == 7


def test_explicit_overrides_beat_env_and_yaml(yaml_file: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PIXLAKE_STORE__DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("PIXLAKE_JOB__BATCH_SIZE", "32")
    s = load_settings(
        yaml_file,
        overrides={"store": {"db": str(tmp_path / "flag.db")}, "job": {"batch_size": 4}, "encoder": {"device": "meta"}},
    )
    assert s.store.db == str(tmp_path / "flag.db")
    assert s.job.batch_size == 4
    assert s.encoder.device == "meta"
    # Untouched fields of the same sections keep their lower-layer values.
    assert s.store.collection == "yaml_col"
    assert s.job.tenant == "acme"
    assert s.encoder.model == "pixlake-tiny"


def test_none_overrides_do_not_mask_env_or_yaml(yaml_file: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PIXLAKE_STORE__DB", str(tmp_path / "env.db"))
    s = load_settings(
        yaml_file,
        overrides={
            "store": {"db": None, "collection": None},
            "encoder": {"model": None, "pretrained": None},
            "job": {"batch_size": None, "concurrency": None},
        },
    )
    assert s.store.db == str(tmp_path / "env.db")  # env, not masked by None
    assert s.store.collection == "yaml_col"  # yaml, not masked by None
    assert s.encoder.model == "pixlake-tiny"
    assert s.encoder.pretrained == "none"
    assert s.job.batch_size == 8
    assert s.job.concurrency == 3


def test_none_overrides_keep_defaults():
    s = load_settings(overrides={"store": {"db": None}, "job": {"concurrency": None, "batch_size": None}})
    assert s.store.db == "./pixlake.db"
    assert s.job.batch_size == 64


def test_overrides_accept_nested_decode_limits():
    s = load_settings(overrides={"job": {"decode": {"max_bytes": 10, "max_pixels": 20}}})
    assert s.job.decode == DecodeLimits(max_bytes=10, max_pixels=20)


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"job": {"batch_size": 0}}, "job.batch_size"),
        ({"job": {"batch_size": 4097}}, "job.batch_size"),
        ({"job": {"batch_size": "many"}}, "job.batch_size"),
        ({"job": {"concurrency": 0}}, "job.concurrency"),
        ({"job": {"tenant": ""}}, "job.tenant"),
        ({"job": {"max_rejections_listed": -1}}, "job.max_rejections_listed"),
        ({"job": {"decode": {"max_bytes": 0}}}, "job.decode.max_bytes"),
        ({"job": {"decode": {"max_pixels": -5}}}, "job.decode.max_pixels"),
    ],
)
def test_invalid_value_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        load_settings(overrides=overrides)
    assert field in str(info.value)


@pytest.mark.parametrize("name", ["1images", "my-images", "my images", "", "imäges;drop", "a.b"])
def test_bad_collection_name_rejected(name):
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"store": {"collection": name}})
    assert "store.collection" in str(info.value)


@pytest.mark.parametrize("name", ["images", "_private", "Images_2024", "x"])
def test_good_collection_names_accepted(name):
    assert load_settings(overrides={"store": {"collection": name}}).store.collection == name


def test_invalid_env_value_names_the_field(monkeypatch):
    monkeypatch.setenv("PIXLAKE_JOB__BATCH_SIZE", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "job.batch_size" in str(info.value)


def test_invalid_yaml_value_names_the_field(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "job:\n  batch_size: 0\n"))
    assert "job.batch_size" in str(info.value)


def test_bad_collection_name_in_yaml(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "store:\n  collection: 9lives\n"))
    assert "store.collection" in str(info.value)


def test_unknown_top_level_yaml_key_rejected(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "stroe:\n  db: x.db\n"))
    assert "stroe" in str(info.value)


def test_unknown_decode_yaml_key_rejected(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "job:\n  decode:\n    max_byte: 10\n"))
    assert "job.decode.max_byte" in str(info.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ("job:\n  batchsize: 3\n", "job.batchsize"),
        ("store:\n  dbb: x.db\n", "store.dbb"),
        ("encoder:\n  modle: ViT-B-32\n", "encoder.modle"),
    ],
)
def test_unknown_key_inside_a_section_rejected(tmp_path: Path, text: str, key: str):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    assert key in str(info.value)


# --- layering -----------------------------------------------------------------------------


def _pixlake_imports(path: Path) -> set[str]:
    """The pixlake modules a source file imports at run time (TYPE_CHECKING blocks excluded)."""
    import ast

    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pixlake"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pixlake"))
    return found


def test_settings_depend_on_nothing_above_them():
    import pixlake.platform.settings as settings

    assert _pixlake_imports(Path(settings.__file__)) == {"pixlake.platform.errors"}


def test_the_plain_values_other_modules_share_are_the_settings_own():
    from pixlake.platform import images, settings

    assert images.DecodeLimits is settings.DecodeLimits  # still importable where other code imports it
    assert settings.StoreSettings().retry_deadline_s == settings.DEFAULT_RETRY_DEADLINE_S
    assert (settings.backend_of("./x.db"), settings.backend_of("http://h:19530")) == (settings.LITE, settings.SERVER)
    with pytest.raises(ConfigError, match="expected a milvus-lite path"):
        settings.backend_of("x.sqlite")



def test_governance_does_not_import_the_store():
    """Erasure, export and re-keying orchestrate both: they live above, in pixlake.platform.compliance."""
    import pixlake.platform.governance as governance

    for path in Path(governance.__file__).parent.glob("*.py"):
        assert not {m for m in _pixlake_imports(path) if m.startswith("pixlake.platform.store")}, path.name


def test_one_settings_file_with_a_serve_section_serves_every_command(tmp_path):
    from pixlake.jobs.embed import build_parser as embed_parser
    from pixlake.jobs.common import settings_from_flags

    config = tmp_path / "pixlake.yaml"
    config.write_text("store: {collection: shared}\nserve: {rate_per_s: 3.0}\n")
    embed = settings_from_flags(embed_parser().parse_args(["src", "--config", str(config)]))
    assert embed.store.collection == "shared" and embed.serve == {"rate_per_s": 3.0}
    assert load_settings(config).store.collection == "shared"
    config.write_text("stor: {collection: typo}\n")  # an unknown section is still refused
    with pytest.raises(ConfigError):
        load_settings(config)
