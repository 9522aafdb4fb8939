"""What the ingress does for ``POST /v1/items`` beside calling the deployments: reading an
upload (multipart or JSON), answering a refusal, and probing freshness (the SLI: from a
created upload's 2xx to the first search that returns it)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional

import numpy as np
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from pixlake.platform.ingest import IngestRefused, json_meta
from pixlake.serve.api_errors import ApiError, b64
from pixlake.serve.schemas import ItemUpload

log = logging.getLogger(__name__)

# An upload refused by the Searcher: its HTTP status, and the message when the write said no.
REFUSAL_STATUS = {"erased_subject": 409, "model_mismatch": 409, "quota_exceeded": 403, "invalid_meta": 422,
                  "invalid_subject": 422}
_WRITE_REFUSALS = {"erased_subject": "this subject was erased from the tenant; its images are refused",
                   "quota_exceeded": "the tenant is at its row quota (serve.max_rows_per_tenant)"}
# The freshness probe: how often it searches for a new upload, for how long at most, and how
# many uploads one ingress replica probes at once (past that, an upload is not probed).
PROBE_EVERY_S, PROBE_DEADLINE_S, MAX_PROBES = 0.025, 30.0, 8
# The OpenAPI request body of POST /v1/items: the route reads it itself, in either form.
UPLOAD_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "subject": {"type": "string"},
        "meta": {"type": "string", "description": "a JSON object"}}}},
    "application/json": {"schema": ItemUpload.model_json_schema()}}}


def refusal(code: str, message: Optional[str] = None) -> ApiError:
    """The answer to an upload the Searcher refused (``message`` None: a refusal of the write)."""
    default = 422 if message is not None else 409
    return ApiError(REFUSAL_STATUS.get(code, default), code, message or _WRITE_REFUSALS.get(code, code))


async def read_upload(request: Request, max_image_bytes: int) -> tuple[bytes, Optional[str], Any]:
    """The image bytes (at most ``max_image_bytes + 1`` read), subject and metadata of
    ``POST /v1/items``, multipart or JSON; a 4xx :class:`ApiError` for anything else."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8)
        except StarletteHTTPException:
            raise
        except Exception as e:  # a malformed multipart body
            raise ApiError(400, "bad_request", f"unreadable multipart body: {e}") from e
        file = form.get("file")
        if file is None or isinstance(file, str):
            raise ApiError(422, "invalid_request", "file: a multipart file field named 'file' is required")
        subject = form.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise ApiError(422, "invalid_request", "subject: a text field")
        meta = form.get("meta")
        try:
            meta = json_meta(meta if isinstance(meta, str) else None)
        except IngestRefused as e:
            raise ApiError(422, e.code, str(e)) from e
        return await file.read(max_image_bytes + 1), subject or None, meta
    if kind == "application/json":
        try:
            body = ItemUpload.model_validate_json(await request.body())
        except ValueError as e:
            errors = getattr(e, "errors", lambda: [])()
            first = errors[0] if errors else {}
            field = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise ApiError(422, "invalid_request", f"{field}: {first.get('msg', e)}") from e
        return b64("image", body.image), body.subject, body.meta
    raise ApiError(415, "unsupported_media_type", "send multipart/form-data (file, subject, meta) or "
                                                  "application/json (image, subject, meta)")


class FreshnessProbes:
    """One ingress replica's freshness probes: each searches for a created upload's own
    vector until a search returns it, and records how long that took in ``metrics``."""

    def __init__(self, metrics: Any):
        self.metrics = metrics
        self._running: set[asyncio.Task] = set()

    def start(self, search: Callable[..., Awaitable[list[dict]]], tenant: str, item_id: str, vector: np.ndarray) -> None:
        """Probe one upload with ``search(vector, k, tenant, filter)``, answered now (none past :data:`MAX_PROBES`)."""
        if len(self._running) >= MAX_PROBES:
            return
        task = asyncio.get_running_loop().create_task(self._probe(search, tenant, item_id, vector, time.perf_counter()))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _probe(self, search, tenant: str, item_id: str, vector: np.ndarray, answered: float) -> None:
        while time.perf_counter() - answered < PROBE_DEADLINE_S:
            try:
                hits = await search(vector, 3, tenant, None)
            except Exception:  # a probe never fails anything; the next try may answer
                log.warning("freshness probe search failed", exc_info=True)
                hits = []
            if any(h["id"] == item_id for h in hits):
                self.metrics.observe_freshness(time.perf_counter() - answered)
                return
            await asyncio.sleep(PROBE_EVERY_S)
        self.metrics.observe_freshness(None)
