"""Settings of the Serve application (also the ``args`` of ``build_app`` in a Serve config file)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pixlake.platform.settings import GovernanceSettings, Settings, load_settings
from pixlake.serve.auth import ApiKeyRecord, AuthConfigError, hash_key, keys_from_env

# Keys published as examples (serve.yaml and deploy/rayservice.yaml ship the hash of the first):
# anyone can read them, so a server holding one is refused, not started.
PLACEHOLDER_KEYS = ("change-me",)
_PLACEHOLDER_HASHES = {hash_key(k): k for k in PLACEHOLDER_KEYS}


def refuse_placeholder_keys(records: list[ApiKeyRecord]) -> list[ApiKeyRecord]:
    """Return ``records`` unless one is a published placeholder key.

    Raises:
        AuthConfigError: names the entry (hash prefix and tenant) and how to make a real key.
    """
    for r in records:
        if r.key_hash in _PLACEHOLDER_HASHES:
            raise AuthConfigError(
                f"API key {r.name} (tenant {r.tenant}) is the published placeholder "
                f"{_PLACEHOLDER_HASHES[r.key_hash]!r}, which anyone can use; configure the sha256 of "
                "your own key instead (printf %s \"$KEY\" | sha256sum)")
    return records


class ServeSettings(BaseModel):
    """What the app serves and how it guards itself."""

    model_config = ConfigDict(extra="forbid")

    db: str = Field("./pixlake.db", description="milvus-lite path or Milvus server URI")
    collection: str = Field("images", description="served collection")
    model: str = Field("ViT-B-32", description="query encoder: must match the collection's fingerprint")
    pretrained: Optional[str] = Field("laion2b_s34b_b79k", description="open_clip tag, checkpoint path or 'none'")
    keys: list[ApiKeyRecord] = Field(default_factory=list, description="API keys (hashed) with tenant and scopes")
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0, description="request body cap (413 above)")
    max_image_bytes: int = Field(10 * 1024 * 1024, gt=0, description="encoded image cap (413 above)")
    max_image_pixels: int = Field(50_000_000, gt=0, description="decoded pixel cap (413 above)")
    max_concurrent_decodes: int = Field(4, ge=1, le=256, description="image decodes and thumbnail draws running at "
                                        "once per ingress replica, off its event loop (more wait their turn)")
    rate_per_s: float = Field(50.0, gt=0, description="requests per second per key (429 above)")
    rate_burst: int = Field(100, gt=0, description="burst allowance per key")
    governance: GovernanceSettings = Field(default_factory=GovernanceSettings, description="keys, encryption, re-rank")
    search_consistency: Literal["strong", "session", "bounded"] = Field(
        "session", description="session: a Searcher replica finds what it wrote itself (live uploads) at once, and "
                               "rows written elsewhere (a batch job, another replica) after a few seconds, like bounded; "
                               "bounded: a row written in the last few seconds may not be found yet; strong: every "
                               "row, but a Milvus server waits for it (~400 ms here). Erased subjects are never "
                               "returned either way (deny-list)")
    max_rows_per_tenant: Optional[int] = Field(None, ge=1, description="live uploads past this many rows of the key's "
                                                                       "tenant are refused (403 quota_exceeded); none: no limit")
    max_pending_uploads: int = Field(32, ge=1, le=4096, description="uploads in progress per ingress replica; more are "
                                                                   "refused 503 with Retry-After (memory stays bounded)")

    @field_validator("keys")
    @classmethod
    def _no_placeholder(cls, v: list[ApiKeyRecord]) -> list[ApiKeyRecord]:
        try:
            return refuse_placeholder_keys(v)
        except AuthConfigError as e:
            raise ValueError(str(e)) from None

    def platform_settings(self) -> Settings:
        """The platform settings of the served store (for the query path)."""
        return load_settings(overrides={"store": {"db": self.db, "collection": self.collection,
                                                  "search_consistency": self.search_consistency},
                                        "encoder": {"model": self.model, "pretrained": self.pretrained},
                                        "governance": self.governance.model_dump(exclude_unset=True)})

    def api_keys(self) -> list[ApiKeyRecord]:
        """Keys from the config plus those in ``PIXLAKE_API_KEYS`` (quick starts and tests).

        Raises:
            AuthConfigError: a malformed ``PIXLAKE_API_KEYS`` or a published placeholder key in it.
        """
        return [*self.keys, *refuse_placeholder_keys(keys_from_env())]
