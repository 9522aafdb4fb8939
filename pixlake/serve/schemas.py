"""Request and response bodies of the HTTP API (they are the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

MetaValue = Union[str, int, float, bool]


class Weights(BaseModel):
    """Weights of a text+image query; the combination is re-normalised."""

    model_config = ConfigDict(extra="forbid")

    text: float = Field(0.5, ge=0, le=1000, description="weight of the text embedding")
    image: float = Field(0.5, ge=0, le=1000, description="weight of the image embedding")

    @model_validator(mode="after")
    def _not_both_zero(self) -> "Weights":
        if self.text == 0 and self.image == 0:
            raise ValueError("weights.text and weights.image cannot both be 0")
        return self


class SearchRequest(BaseModel):
    """Body of ``POST /v1/search``: a text, an image, or both (weighted); or a stored item
    (``item_id``, "more like this")."""

    model_config = ConfigDict(extra="forbid")

    text: Optional[str] = Field(None, min_length=1, max_length=2000, description="text query")
    image: Optional[str] = Field(None, min_length=1, description="base64-encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    weights: Optional[Weights] = Field(None, description="text/image weights when both are given")
    k: int = Field(10, ge=1, le=1000, description="number of results")
    filter: Optional[dict[str, Union[MetaValue, list[MetaValue]]]] = Field(
        None, description="equality (or membership, with a list) on metadata keys; structured, never an expression"
    )
    collection: Optional[str] = Field(None, description="collection to search; default the served one")
    item_id: Optional[str] = Field(None, min_length=1, max_length=128,
                                   description="search with this stored item's own vector (\"more like this\"); "
                                               "the item itself is left out. Not with text or image")
    min_score: Optional[float] = Field(None, ge=-1, le=1,
                                       description="drop results scoring below this cosine (fewer than k may come back)")
    collapse_duplicates: bool = Field(False, description="at most one result per group of near-duplicates (cosine "
                                                         "at least 0.95 to each other), the best; `copies` on each hit")

    @model_validator(mode="after")
    def _one_query(self) -> "SearchRequest":
        if self.item_id is not None and (self.text is not None or self.image is not None):
            raise ValueError("give item_id alone, without text or image")
        if self.text is None and self.image is None and self.item_id is None:
            raise ValueError("give at least one of text or image, or an item_id")
        return self


class Hit(BaseModel):
    """One search result."""

    id: str
    source: str
    score: float
    meta: dict[str, Any]
    copies: Optional[int] = Field(None, description="with collapse_duplicates: how many near-duplicates of it "
                                                    "among the candidates were left out")


class SearchResponse(BaseModel):
    """Results, best first."""

    results: list[Hit]
    model: str = Field(description="encoder fingerprint")
    took_ms: float


class EmbedRequest(BaseModel):
    """Body of ``POST /v1/embed``: exactly one of text or image."""

    model_config = ConfigDict(extra="forbid")

    text: Optional[str] = Field(None, min_length=1, max_length=2000)
    image: Optional[str] = Field(None, min_length=1, description="base64-encoded image")

    @model_validator(mode="after")
    def _exactly_one(self) -> "EmbedRequest":
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of text or image")
        return self


class EmbedResponse(BaseModel):
    """A plaintext, L2-normalised embedding."""

    vector: list[float]
    model: str


class ItemUpload(BaseModel):
    """JSON body of ``POST /v1/items`` (multipart takes ``file``, ``subject`` and ``meta`` form fields instead)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description="base64-encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    subject: Optional[str] = Field(None, min_length=1, max_length=512,
                                   description="the data subject the image belongs to (erasure removes it with them)")
    meta: Optional[dict[str, Any]] = Field(None, description="metadata: plain keys to strings, numbers or booleans")


class ItemWritten(BaseModel):
    """An upload was written (201) or was there already (200)."""

    id: str = Field(description="the row id: the same image of the same subject is always the same id")
    status: str = Field(description="created or exists")
    searchable_after_ms: float = Field(description="how long after this answer a search finds it, given the "
                                                   "store's consistency (0: at once)")


class ItemInfo(BaseModel):
    """One stored item: never its vector."""

    id: str
    meta: dict[str, Any]
    added_at: Optional[str] = Field(description="when a live upload wrote it (UTC); null for a row a batch job wrote")


class CollectionInfo(BaseModel):
    """A served collection."""

    name: str
    version: Optional[str] = Field(None, description="the collection the name serves now (a version, after pixlake reindex)")
    rows: int
    model: Optional[str]
    index_type: Optional[str]
    encryption: bool = Field(description="vectors encrypted and sources sealed")
    local_index_rows: Optional[int] = Field(
        None, description="milvus-lite: rows in the in-process HNSW index searches go through (null: milvus-lite searches)")


class CollectionsResponse(BaseModel):
    collections: list[CollectionInfo]


class ErasureRequest(BaseModel):
    """Body of ``POST /v1/erasures``: the data subject to erase from the key's tenant."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=512, description="the subject id, as given to the embed job")


class ErasureAccepted(BaseModel):
    """An erasure was accepted and runs in the background."""

    erasure_id: str
    status: str = Field(description="accepted")


class ErasureStep(BaseModel):
    """One completed step of an erasure."""

    name: str
    status: str
    count: int
    at: str


class ErasureReceipt(BaseModel):
    """An erasure's receipt (pseudonyms, counts and timestamps; no personal data)."""

    erasure_id: str
    subject: str = Field(description="the subject's pseudonym")
    tenant: str
    requested_at: str
    completed_at: Optional[str]
    status: str = Field(description="in_progress, completed or failed (a new request resumes it)")
    steps: list[ErasureStep]
    verified: bool = Field(description="a Strong-consistency count found no row of the subject")
    near_copies: Optional[int] = Field(None, description="rows of other subjects of the tenant that are near-duplicates "
                                                         "(cosine >= 0.95) of the subject's images: left in place, a "
                                                         "count for review (null: not counted)")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable code and a message naming the problem."""

    error: str = Field(description="stable machine-readable code, e.g. unauthorized, payload_too_large")
    message: str
    detail: Optional[Any] = None
