"""Typed settings for the store, the encoder and jobs.

Precedence, highest first: explicit overrides (CLI flags) > environment variables
(``PIXLAKE_<SECTION>__<FIELD>``, e.g. ``PIXLAKE_STORE__DB``) > a YAML file > defaults.

This module depends on nothing of pixlake above :mod:`pixlake.platform.errors`: the plain
values other modules share with it (the decode caps, the retry deadline, which backend a
``db`` names) live here, and those modules import them from here.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from pixlake.platform.errors import ConfigError

DEFAULT_RETRY_DEADLINE_S = 120.0  # how long a store call retries a Milvus server that is down
LITE, SERVER = "milvus-lite", "milvus-server"
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")

# The YAML file of the load in progress; a context variable rather than a class attribute
# so two loads in one process (tests, Serve replicas) never see each other's file.
_yaml_file: ContextVar[Optional[Path]] = ContextVar("pixlake_yaml_file", default=None)


def backend_of(uri: str) -> str:
    """Tell milvus-lite paths (:data:`LITE`) from server URIs (:data:`SERVER`).

    Raises:
        ConfigError: neither a ``.db`` path nor a server URI.
    """
    if uri.startswith(_SERVER_SCHEMES):
        return SERVER
    if uri.endswith(".db") and "://" not in uri:
        return LITE
    raise ConfigError(f"--db {uri!r}: expected a milvus-lite path ending in .db or a server URI like http://host:19530")


class DecodeLimits(BaseModel):
    """Caps applied to every decode, before any pixel data is expanded
    (:func:`pixlake.platform.images.decode_image`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bytes: int = Field(
        default=50 * 1024 * 1024, gt=0,
        description="Largest encoded input accepted, in bytes; checked before parsing.")
    max_pixels: int = Field(
        default=100_000_000, gt=0,
        description="Largest width*height accepted; checked from the header before "
                    "pixels are decoded (decompression-bomb guard); Pillow refuses "
                    "anything over twice its own MAX_IMAGE_PIXELS whatever this says.")


class StoreSettings(BaseModel):
    """Where embeddings are stored."""

    model_config = ConfigDict(extra="forbid")

    db: str = Field(
        "./pixlake.db",
        description="milvus-lite file path (embedded default) or a Milvus server URI such as http://host:19530",
    )
    collection: str = Field("images", description="Milvus collection name")
    index_plan: Optional[Path] = Field(
        None, description="index plan JSON (pixlake plan-index) a Milvus server builds new collections with"
    )
    retry_deadline_s: float = Field(
        DEFAULT_RETRY_DEADLINE_S, ge=0, le=3600,
        description="how long a call retries a Milvus server that is down or restarting (exponential backoff) "
                    "before the job fails with a clear error; a re-run then completes the rest",
    )
    local_index_min_rows: int = Field(
        10_000, ge=0,
        description="on milvus-lite, pixlake serve answers searches from an in-process copy of the "
                    "collection's stored rows (an HNSW index over their vectors) once it holds this many "
                    "rows (milvus-lite's own search grows with the rows)",
    )
    search_consistency: Literal["strong", "session", "bounded"] = Field(
        "strong",
        description="Milvus consistency of searches: strong sees every write that returned (a search waits "
                    "until the server has applied them); session sees this client's own writes at once and "
                    "others' like bounded (Serve's default); bounded may miss rows written in the last few "
                    "seconds. Reads, counts and erasure checks are always strong",
    )

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, v: str) -> str:
        # Milvus names: letters, digits, underscores; must not start with a digit.
        if not v or not (v[0].isalpha() or v[0] == "_") or not all(c.isalnum() or c == "_" for c in v):
            raise ValueError("must be letters, digits and underscores, not starting with a digit")
        return v


class EncoderSettings(BaseModel):
    """Which open_clip model embeds images and texts."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("ViT-B-32", description="open_clip model config name (see `open_clip.list_models()`)")
    pretrained: str = Field(
        "laion2b_s34b_b79k",
        description="open_clip pretrained tag (needs network once), a local checkpoint path, or 'none' for random weights",
    )
    device: Optional[str] = Field(None, description="torch device; default CUDA when available, else CPU")


class JobSettings(BaseModel):
    """Knobs of the bulk embedding job."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(64, ge=1, le=4096, description="images per encoder batch")
    write_batch_rows: int = Field(
        512, ge=1, le=16384,
        description="rows per store write: larger batches cost fewer round trips, smaller ones hold less in a write task",
    )
    concurrency: Optional[int] = Field(
        None, ge=1, description="encoder actors; default one per GPU, or 1 on a CPU-only cluster"
    )
    tenant: str = Field("default", min_length=1, description="tenant of every row the job writes")
    allow_manifest_tenants: bool = Field(
        False,
        description="let a manifest's tenant (Parquet column, WebDataset .json field) choose its row's tenant; off, a "
        "row naming another tenant than job.tenant is rejected (tenant_mismatch)",
    )
    report: Optional[Path] = Field(None, description="write the JSON job report here")
    metrics_file: Optional[Path] = Field(
        None, description="write the run's Prometheus metrics here (text format: node_exporter textfile collector, Pushgateway)"
    )
    max_rejections_listed: int = Field(
        10_000, ge=0, description="rejections listed one by one in the report; the count is always exact"
    )
    decode: DecodeLimits = Field(default_factory=DecodeLimits, description="safe-decode caps")
    task_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources every CPU task of the job asks for (read, load, skip, decode, protect, "
        "write): the tasks run only on nodes that offer them, e.g. a CPU decode group",
    )
    encoder_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources each encoder actor asks for, beside its GPU: the actors run only on nodes "
        "that offer them",
    )
    store_actor: bool = Field(
        False,
        description="on a Milvus server, look up and write rows through one store actor (as milvus-lite must) instead "
        "of from every task: one client connection to Milvus, at the cost of a per-row bottleneck",
    )
    gpu_decode: bool = Field(
        False,
        description="decode JPEGs on the encoder's GPU (nvJPEG) instead of CPU tasks; other formats and JPEGs the "
        "GPU cannot reproduce still decode on CPU",
    )
    near_duplicates: Literal["keep", "skip", "link"] = Field(
        "keep",
        description="a new image whose nearest row in its tenant (stored, or earlier in the run) is at or above "
        "near_threshold: keep it as it is, skip it (not stored; counted in the report), or link it (stored with "
        "near_duplicate_of in its metadata)",
    )
    near_threshold: float = Field(0.95, gt=0, le=1, description="cosine at or above which an image is a near-duplicate")


class GovernanceSettings(BaseModel):
    """Vector encryption, sealed sources and keys (docs/architecture.md "Governance")."""

    model_config = ConfigDict(extra="forbid")

    encryption: bool = Field(
        True, description="encrypt vectors and seal sources; false only with the explicit --no-encryption opt-out"
    )
    beta: float = Field(1.0, gt=0, le=8, description="approximation factor of the vector encryption (noise radius beta/4)")
    rerank_factor: int = Field(
        5, ge=1, le=100, description="the store fetches rerank_factor x k ciphertext candidates and re-ranks them exactly"
    )
    key_dir: Optional[Path] = Field(
        None,
        description="directory of the key store, erasure ledger and audit log; default <db>.governance beside a "
        "milvus-lite file, required for a Milvus server",
    )
    sensitive_meta: list[str] = Field(
        default_factory=list, description="metadata fields sealed under the subject key (not filterable)"
    )
    key_cache_size: int = Field(10_000, ge=0, description="subject data keys a serving process keeps in memory")
    owned_sources: list[Path] = Field(
        default_factory=list, description="folders whose images pixlake owns: `erase --purge-sources` deletes there only"
    )
    drift_min_rows: int = Field(
        32, ge=1, description="an embed run keeps per-dimension embedding moments for drift only when it embedded at "
        "least this many images (a mean over few vectors gives them back; 1 keeps them always)"
    )


class Settings(BaseSettings):
    """All pixlake settings. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix="PIXLAKE_", env_nested_delimiter="__", extra="forbid")

    store: StoreSettings = Field(default_factory=StoreSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    job: JobSettings = Field(default_factory=JobSettings)
    governance: GovernanceSettings = Field(default_factory=GovernanceSettings)
    # One settings file serves every command: `pixlake serve` validates this section itself
    # (pixlake.serve.config.ServeSettings); the other commands carry it unread.
    serve: Optional[dict[str, Any]] = Field(None, description="the serve command's own section (API keys, rate limits, "
                                            "body caps); read and validated by pixlake serve")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        path = _yaml_file.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def load_settings(config: Optional[Path | str] = None, overrides: Optional[dict[str, Any]] = None) -> Settings:
    """Load settings from defaults, a YAML file, the environment and explicit overrides.

    Args:
        config: optional YAML file with ``store:``, ``encoder:`` and ``job:`` sections.
        overrides: nested dict (``{"store": {"db": ...}}``) that wins over everything;
            ``None`` values are ignored so unset CLI flags do not mask lower layers.

    Returns:
        The validated settings.

    Raises:
        ConfigError: the file is missing or a field is invalid; the message names the field.
    """
    path = Path(config) if config is not None else None
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    clean = {section: {k: v for k, v in values.items() if v is not None} for section, values in (overrides or {}).items()}
    token = _yaml_file.set(path)
    try:
        return Settings(**{k: v for k, v in clean.items() if v})
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {field}: {first['msg']}") from e
    finally:
        _yaml_file.reset(token)
