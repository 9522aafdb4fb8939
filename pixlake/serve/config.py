"""Settings of the Serve application (also the ``args`` of ``build_app`` in a Serve config file)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pixlake.platform.settings import GovernanceSettings, Settings, load_settings
from pixlake.serve.auth import ApiKeyRecord, keys_from_env


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
    rate_per_s: float = Field(50.0, gt=0, description="requests per second per key (429 above)")
    rate_burst: int = Field(100, gt=0, description="burst allowance per key")
    governance: GovernanceSettings = Field(default_factory=GovernanceSettings, description="keys, encryption, re-rank")
    search_consistency: Literal["strong", "bounded"] = Field(
        "bounded", description="bounded: a row embedded in the last few seconds may not be found yet, and a "
                               "Milvus server answers without its wait (~400 ms here) for strong consistency; erased "
                               "subjects are never returned either way (deny-list)")

    def platform_settings(self) -> Settings:
        """The platform settings of the served store (for the query path)."""
        return load_settings(overrides={"store": {"db": self.db, "collection": self.collection,
                                                  "search_consistency": self.search_consistency},
                                        "encoder": {"model": self.model, "pretrained": self.pretrained},
                                        "governance": self.governance.model_dump(exclude_unset=True)})

    def api_keys(self) -> list[ApiKeyRecord]:
        """Keys from the config plus those in ``PIXLAKE_API_KEYS`` (quick starts and tests)."""
        return [*self.keys, *keys_from_env()]
