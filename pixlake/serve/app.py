"""The FastAPI ingress and the application builder (``serve run pixlake.serve.app:build_app``).

HTTP → auth/limits → encode (batched QueryEncoder) → search (Searcher, tenant-scoped) → JSON.
Every client mistake is answered 4xx with an :class:`~pixlake.serve.schemas.ErrorBody`.
"""

import asyncio
import functools
import logging
import time
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pixlake.platform.errors import PixlakeError
from pixlake.platform.images import DecodeLimits, Rejection, decode_image
from pixlake.platform.query import combine
from pixlake.platform.sources.reader import SourceTooLarge, SourceUnavailable
from pixlake.platform.store import build_filter
from pixlake.platform.thumbnails import DEFAULT_SIDE, MAX_SIDE, MIN_SIDE, SIDES, Thumbnailer, ThumbnailError, ladder_side
from pixlake.serve import guard
from pixlake.serve.api_errors import ApiError, b64
from pixlake.serve.auth import KeyStore, RateLimiter
from pixlake.serve.config import ServeSettings
from pixlake.serve.deployments import ERASURE_POLL_S, QueryEncoder, Searcher
from pixlake.serve.guard import GuardConfig, RequestGuard, principal_of
from pixlake.serve.metrics import Metrics
from pixlake.serve.offload import DecodeGate
from pixlake.serve.page import router as page_router
from pixlake.serve.uploads import UPLOAD_BODY, FreshnessProbes, read_upload, refusal
from pixlake.serve.schemas import (
    CollectionInfo,
    CollectionsResponse,
    EmbedRequest,
    EmbedResponse,
    ErasureAccepted,
    ErasureReceipt,
    ErasureRequest,
    ErrorBody,
    ItemInfo,
    ItemWritten,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger(__name__)

api = FastAPI(title="pixlake", version="0.1.0", description="Multimodal search over pixlake collections.")
api.include_router(page_router)
_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)}
# Decoder rejections that mean "wrong kind of file" or "too big" rather than "broken file".
_REJECTION_STATUS = {"unsupported_format": 415, "not_an_image": 415, "too_large": 413, "decompression_bomb": 413}
# How long a read waits for Serve to replace a dead encoder or searcher replica (a model
# load takes seconds) before the client gets a 503 with Retry-After.
REPLICA_RETRY_S = 30.0
# A results page fetches one thumbnail per hit: each lookup takes a tenth of a search's
# rate-limit token, and drawing one that is not cached takes tokens by the bytes decoded,
# a token per 2 MiB (a 3 MiB 12 MP JPEG draws in about the time of a search here; a demo
# PNG costs a two-hundredth of a token).
THUMBNAIL_COST, DRAW_BYTES_PER_TOKEN = 0.1, 2 * 1024 * 1024


def _error(status: int, code: str, message: str, detail: Any = None, headers: Optional[dict] = None) -> JSONResponse:
    body = ErrorBody(error=code, message=message, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


@api.exception_handler(ApiError)
async def _api_error(_: Request, e: ApiError) -> JSONResponse:
    return _error(e.status, e.code, e.message, headers=e.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own errors (unparseable body, a body over the cap while it streams in, unknown
    # path, wrong method) get our error body too; they happen before a route's handler runs.
    _metrics.observe_request(getattr(request.scope.get("route"), "path", "unmatched"), request.method, e.status_code, 0.0)
    code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
            413: "payload_too_large"}.get(e.status_code, "http_error")
    return _error(e.status_code, code, str(e.detail), headers=getattr(e, "headers", None))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    _metrics.observe_request(getattr(request.scope.get("route"), "path", "unmatched"), request.method, 422, 0.0)
    first = e.errors()[0] if e.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    detail = [{"loc": list(err.get("loc", ())), "msg": str(err.get("msg", ""))} for err in e.errors()]
    return _error(422, "invalid_request", f"{field}: {first.get('msg', 'invalid')}", detail=detail)


# One ingress replica per process. Authentication, scope, rate limit and the body cap run
# in the ASGI guard before FastAPI reads or validates a body (pixlake.serve.guard); route
# metrics are recorded by the `observed` decorator on each route, by the validation-error
# handler, and by the guard for what it refuses.
_metrics = Metrics()
api.add_middleware(RequestGuard)  # before @serve.ingress freezes the app


def observed(route: str, scope: Optional[str] = None, cost: float = 1.0, method: Optional[str] = None):
    """Route decorator: record status and latency in metrics; with ``scope``, declare that
    the guard must authenticate a key holding it and charge ``cost`` rate-limit tokens (for
    ``method`` only, when a path serves several methods under different scopes)."""
    if scope is not None:
        guard.require(route, scope, cost, method)

    def wrap(handler):
        @functools.wraps(handler)
        async def run(*args, **kwargs):
            started, status = time.perf_counter(), 500
            request = kwargs.get("request")
            try:
                result = await handler(*args, **kwargs)
                status = getattr(result, "status_code", 200)
                return result
            except ApiError as e:
                status = e.status
                raise
            finally:
                _metrics.observe_request(route, request.method if request is not None else method or "GET", status,
                                         time.perf_counter() - started)

        return run

    return wrap


async def call_replica(method, *args: Any, retry_s: float = REPLICA_RETRY_S) -> Any:
    """``await method.remote(*args)``, retried while the replica behind it is dead or
    restarting (Serve replaces it): a killed replica costs a client latency, not an error.
    Reads go through here (searches, embeddings, descriptions), and live writes, which are
    idempotent by row id: a retried write finds its row and answers ``exists``. Still
    unavailable after ``retry_s``: a 503."""
    deadline, backoff = time.monotonic() + retry_s, 0.05
    while True:
        try:
            return await method.remote(*args)
        except RayActorError as e:
            if time.monotonic() >= deadline:
                raise ApiError(503, "unavailable", f"a serving replica is restarting: {type(e).__name__}; retry",
                               {"Retry-After": "5"}) from e
            _metrics.observe_replica_retry(method.deployment_name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress(api)
class Ingress:
    """HTTP front door; composed with the encoder and searcher handles by :func:`build_app`."""

    def __init__(self, encoder, searcher, settings: dict):
        self.encoder, self.searcher = encoder, searcher
        self.settings = ServeSettings(**settings)
        self.keys = KeyStore(self.settings.api_keys())
        self.limiter = RateLimiter(self.settings.rate_per_s, self.settings.rate_burst)
        RequestGuard.config = GuardConfig(self.keys, self.limiter, guard.effective_cap(self.settings.max_body_bytes),
                                          _metrics.observe_request)
        self.limits = DecodeLimits(max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels)
        self.thumbnails = Thumbnailer(self.settings.platform_settings().job.decode)
        self.decodes = DecodeGate(self.settings.max_concurrent_decodes)  # query images and thumbnail draws
        _metrics.watch_thumbnail_cache(self.thumbnails.cache)  # hit rate: is 64 MiB per replica enough?
        self._info = None  # model info, fetched from the encoder on first use
        self._uploads = 0  # uploads in progress in this replica (serve.max_pending_uploads)
        self.probes = FreshnessProbes(_metrics)
        self._erasure_poll = asyncio.get_running_loop().create_task(self._evict_erased())
        self._pil = None

    # --- plumbing -------------------------------------------------------------------------

    async def _evict_erased(self) -> None:
        """Drop this replica's thumbnail cache whenever a subject is erased, through any
        replica: the cache is keyed by content, not subject, so all of it goes."""
        cursor = None
        while True:
            try:
                latest, tenants = await self.searcher.erasures_since.remote(cursor or 0)
                if cursor is not None and tenants:
                    dropped = self.thumbnails.cache.clear()
                    log.info("erasure in %s: dropped %d cached thumbnails", ",".join(tenants), dropped)
                cursor = latest
            except Exception:  # the searcher may be restarting: poll again at the next tick
                log.warning("erasure poll failed", exc_info=True)
            await asyncio.sleep(ERASURE_POLL_S)

    async def _model(self) -> dict:
        if self._info is None:
            self._info = await call_replica(self.encoder.info)
            self._pil = self._info["preprocess"].pil_transform()
        return self._info

    def _decode(self, data: bytes) -> np.ndarray:
        """Decode and prepare one query image (on a gate thread, never on the event loop)."""
        image = decode_image(data, self.limits)  # applies the byte cap too (too_large → 413)
        if isinstance(image, Rejection):
            code = image.reason.split(":", 1)[0]
            status = _REJECTION_STATUS.get(code, 422)
            name = {413: "payload_too_large", 415: "unsupported_media_type"}.get(status, "undecodable_image")
            raise ApiError(status, name, f"image rejected: {image.reason}")
        return self._pil(image)

    async def _embed(self, text: Optional[str], image: Optional[bytes]) -> list[np.ndarray]:
        await self._model()
        vectors = []
        if text is not None:
            vectors.append(await call_replica(self.encoder.embed_text, text))
        if image is not None:
            pixels = await self.decodes.run(self._decode, image)
            vectors.append(await call_replica(self.encoder.embed_pixels, pixels))
        return vectors

    async def _search(self, principal, vector: Optional[np.ndarray], k: int, filter: Optional[dict],
                      collection: Optional[str], item_id: Optional[str] = None, min_score: Optional[float] = None,
                      collapse: bool = False) -> list[dict]:
        if collection is not None and collection != self.settings.collection:
            raise ApiError(404, "unknown_collection", f"collection {collection!r} is not served here")
        try:
            build_filter(principal.tenant, filter)  # reject a bad filter here, as a 422
        except PixlakeError as e:
            raise ApiError(422, "invalid_request", f"filter: {e}") from e
        # the key's tenant, whatever the request says
        if item_id is None:
            return await call_replica(self.searcher.search, vector, k, principal.tenant, filter, min_score, collapse)
        hits = await call_replica(self.searcher.similar, item_id, k, principal.tenant, filter, min_score, collapse)
        if hits is None:  # the same answer for another tenant's item: never a hint that it exists
            raise ApiError(404, "not_found", f"no item {item_id!r} in this tenant")
        return hits

    def _respond(self, hits: list[dict], started: float) -> SearchResponse:
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        return SearchResponse(results=hits, model=self._info["fingerprint"], took_ms=took_ms)

    # --- routes ----------------------------------------------------------------------------

    @api.post("/v1/search", response_model=SearchResponse, responses=_ERRORS)
    @observed("/v1/search", "search")
    async def search(self, body: SearchRequest, request: Request) -> SearchResponse:
        """Text→image, image→image, weighted text+image, or "more like this" (``item_id``) search in the key's tenant."""
        started = time.perf_counter()
        principal = principal_of(request.scope)
        if body.item_id is not None:
            await self._model()  # the fingerprint in the answer
            hits = await self._search(principal, None, body.k, body.filter, body.collection, body.item_id,
                                      body.min_score, body.collapse_duplicates)
            return self._respond(hits, started)
        image = b64("image", body.image) if body.image is not None else None
        vectors = await self._embed(body.text, image)
        weights = [body.weights.text, body.weights.image] if body.weights and len(vectors) == 2 else [1.0] * len(vectors)
        vector = combine(vectors, weights)
        hits = await self._search(principal, vector, body.k, body.filter, body.collection, None, body.min_score,
                                  body.collapse_duplicates)
        return self._respond(hits, started)

    @api.post("/v1/search/image", response_model=SearchResponse, responses=_ERRORS)
    @observed("/v1/search/image", "search")
    async def search_image(self, request: Request, file: UploadFile = File(...), k: int = Form(10, ge=1, le=1000)) -> SearchResponse:
        """Image→image search with a multipart file upload."""
        started = time.perf_counter()
        principal = principal_of(request.scope)
        data = await file.read(self.limits.max_bytes + 1)
        vectors = await self._embed(None, data)
        return self._respond(await self._search(principal, vectors[0], k, None, None), started)

    @api.post("/v1/embed", response_model=EmbedResponse, responses=_ERRORS)
    @observed("/v1/embed", "embed")
    async def embed(self, body: EmbedRequest, request: Request) -> EmbedResponse:
        """The plaintext embedding of one text or image."""
        image = b64("image", body.image) if body.image is not None else None
        vector = (await self._embed(body.text, image))[0]
        return EmbedResponse(vector=[float(x) for x in vector], model=self._info["fingerprint"])

    @api.get("/v1/collections", response_model=CollectionsResponse, responses=_ERRORS)
    @observed("/v1/collections", "search")
    async def collections(self, request: Request) -> CollectionsResponse:
        """Served collections with row counts, encoder fingerprint and index type."""
        d = await call_replica(self.searcher.describe, principal_of(request.scope).tenant)
        return CollectionsResponse(collections=[CollectionInfo(name=d["collection"], version=d["version"], rows=d["rows"],
                                                               model=d["model"],
                                                               index_type=d["index_type"], encryption=d["encryption"],
                                                               local_index_rows=d.get("local_index_rows"))])

    @api.get("/v1/items/{item_id}/thumbnail", response_class=Response, responses={
        **_ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "a JPEG, longest edge `size` pixels"},
        304: {"description": "unchanged since the ETag sent in If-None-Match"}, 502: {"model": ErrorBody}})
    @observed("/v1/items/{id}/thumbnail", "search", THUMBNAIL_COST)
    async def thumbnail(self, item_id: str, request: Request,
                        size: int = Query(DEFAULT_SIDE, ge=MIN_SIDE, le=MAX_SIDE,
                                          description=f"longest edge, pixels; drawn at the next of {list(SIDES)}")) -> Response:
        """A JPEG preview of one of the key's tenant's items, drawn from its source (scope ``search``).

        The row is looked up in the key's tenant on every request, cached or not, so another
        tenant's item, or one whose subject is being erased, is a 404. Browsers revalidate
        (``no-cache`` with an ETag), so an erased item stops showing at once. Sizes round up
        to a fixed ladder, and a draw (not a cached answer) costs rate-limit tokens by the bytes decoded."""
        principal = principal_of(request.scope)
        side = ladder_side(size)
        item = await call_replica(self.searcher.item, principal.tenant, item_id)
        if item is None:
            raise ApiError(404, "not_found", f"no item {item_id!r} in this tenant")
        headers = {"ETag": f'"{item["content_hash"][:32]}-{side}"', "Cache-Control": "private, no-cache",
                   "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        loop = asyncio.get_running_loop()

        def keyed(digest: str) -> str:  # on the draw's thread: the row's bytes or a 404 (Thumbnailer.draw)
            return asyncio.run_coroutine_threadsafe(
                call_replica(self.searcher.keyed_content_hash, principal.tenant, digest), loop).result()

        def charge(source_bytes: int) -> None:  # a draw costs its decode: the key's next requests wait
            self.limiter.debit(principal.key_name, source_bytes / DRAW_BYTES_PER_TOKEN)

        try:
            data = await self.decodes.run(self.thumbnails.draw, item["source"], item["content_hash"], side, keyed, charge)
        except SourceUnavailable as e:
            raise ApiError(404, "source_unavailable", f"no source image to preview: {e}") from e
        except (SourceTooLarge, ThumbnailError) as e:
            raise ApiError(422, "source_rejected", f"the source image cannot be previewed: {e}") from e
        except (OSError, ValueError) as e:
            raise ApiError(502, "source_unreadable", f"the source image could not be read: {e}") from e
        return Response(data, media_type="image/jpeg", headers=headers)

    @api.post("/v1/erasures", status_code=202, response_model=ErasureAccepted, responses=_ERRORS)
    @observed("/v1/erasures", "erase")
    async def erase(self, body: ErasureRequest, request: Request) -> ErasureAccepted:
        """Erase a data subject of the key's tenant everywhere (runs in the background; poll the receipt)."""
        principal = principal_of(request.scope)
        erasure_id = await self.searcher.start_erasure.remote(principal.tenant, body.subject)
        return ErasureAccepted(erasure_id=erasure_id, status="accepted")

    @api.get("/v1/erasures/{erasure_id}", response_model=ErasureReceipt, responses=_ERRORS)
    @observed("/v1/erasures/{id}", "erase")
    async def erasure(self, erasure_id: str, request: Request) -> ErasureReceipt:
        """The receipt of an erasure of the key's tenant."""
        principal = principal_of(request.scope)
        receipt = await self.searcher.erasure_receipt.remote(principal.tenant, erasure_id)
        if receipt is None:
            raise ApiError(404, "not_found", f"no erasure {erasure_id} in this tenant")
        return ErasureReceipt(**receipt)

    @api.post("/v1/items", status_code=201, response_model=ItemWritten, openapi_extra={"requestBody": UPLOAD_BODY},
        responses={**_ERRORS, 200: {"model": ItemWritten, "description": "the same image of the same subject is stored already"}})
    @observed("/v1/items", "ingest", method="POST")
    async def add_item(self, request: Request) -> JSONResponse:
        """Add one image to the key's tenant, built as the embed job builds a row (scope ``ingest``).

        201 ``created`` or 200 ``exists`` (the same image of the same subject), with how soon a
        search finds it. Refused: 409 for an erased subject, 403 past the tenant's quota, 413,
        415 or 422 for what the safe decoder rejects, 503 with Retry-After when this replica has
        ``serve.max_pending_uploads`` uploads in progress."""
        if self._uploads >= self.settings.max_pending_uploads:
            _metrics.observe_upload("overloaded")
            raise ApiError(503, "overloaded", f"{self._uploads} uploads in progress; retry shortly", {"Retry-After": "1"})
        self._uploads += 1
        try:
            body, outcome = await self._add_item(request)
        except ApiError as e:
            _metrics.observe_upload(e.code)
            raise
        finally:
            self._uploads -= 1
        _metrics.observe_upload(outcome)
        return JSONResponse(body.model_dump(), status_code=201 if outcome == "created" else 200)

    async def _add_item(self, request: Request) -> tuple[ItemWritten, str]:
        principal = principal_of(request.scope)
        data, subject, meta = await read_upload(request, self.limits.max_bytes)
        info = await self._model()
        prepared = await call_replica(self.searcher.prepare_upload, principal.tenant, subject, data, meta,
                                      info["fingerprint"])
        if prepared["status"] == "refused":
            raise refusal(prepared["code"], prepared["message"])
        if prepared["status"] == "exists":
            return ItemWritten(id=prepared["id"], status="exists", searchable_after_ms=0.0), "exists"
        upload = prepared["upload"]
        pixels = await self.decodes.run(self._decode, data)  # the job's safe decode: 413/415/422
        upload.vector = await call_replica(self.encoder.embed_pixels, pixels)
        written = await call_replica(self.searcher.write_upload, upload)
        if written["status"] not in ("created", "exists"):
            raise refusal(written["status"])
        if written["status"] == "created":
            self.probes.start(functools.partial(call_replica, self.searcher.search), principal.tenant, upload.id,
                              upload.vector)
        return ItemWritten(id=upload.id, status=written["status"],
                           searchable_after_ms=written["searchable_after_ms"]), written["status"]

    @api.get("/v1/items/{item_id}", response_model=ItemInfo, responses=_ERRORS)
    @observed("/v1/items/{id}", "search", method="GET")
    async def get_item(self, item_id: str, request: Request) -> ItemInfo:
        """One of the key's tenant's items: id, metadata and when it was added; never its vector."""
        info = await call_replica(self.searcher.item_info, principal_of(request.scope).tenant, item_id)
        if info is None:
            raise ApiError(404, "not_found", f"no item {item_id!r} in this tenant")
        return ItemInfo(**info)

    @api.delete("/v1/items/{item_id}", status_code=204, response_class=Response, responses=_ERRORS)
    @observed("/v1/items/{id}", "delete", method="DELETE")
    async def delete_item(self, item_id: str, request: Request) -> Response:
        """Remove one of the key's tenant's items (scope ``delete``); another tenant's id is a 404."""
        if not await call_replica(self.searcher.delete_item, principal_of(request.scope).tenant, item_id):
            raise ApiError(404, "not_found", f"no item {item_id!r} in this tenant")
        return Response(status_code=204)

    @api.get("/healthz", responses=_ERRORS)
    async def healthz(self) -> dict:
        """The process is alive."""
        return {"status": "ok"}

    @api.get("/readyz", responses=_ERRORS)
    @observed("/readyz")
    async def readyz(self) -> JSONResponse:
        """The model is loaded and Milvus answers."""
        try:
            await self._model()
            ready = await self.searcher.ready.remote()
        except Exception as e:  # not ready is an answer, not an error
            log.warning("not ready: %s", e)
            ready = False
        if not ready:
            return _error(503, "not_ready", "model or Milvus not ready")
        return JSONResponse({"status": "ready"})

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self) -> PlainTextResponse:
        """Prometheus text: requests by route and status, latency, encoder batch sizes, thumbnail cache."""
        encoder_text = await self.encoder.metrics_text.remote()
        body, content_type = _metrics.render_with(encoder_text)
        return PlainTextResponse(body, media_type=content_type)


def build_app(args: dict) -> Any:
    """Application builder: ``serve run pixlake.serve.app:build_app db=... collection=...``.

    Args:
        args: :class:`~pixlake.serve.config.ServeSettings` fields.

    Returns:
        The bound Serve application (ingress over encoder and searcher).
    """
    import ray

    settings = ServeSettings(**args)
    gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) else 0
    # Small CPU reservations: the ingress and searcher mostly wait on I/O, and a CPU encoder
    # uses its cores through torch threads whatever it reserves; with Serve's default of one
    # CPU each, three replicas would not fit on a two-core machine.
    encoder = QueryEncoder.options(ray_actor_options={"num_gpus": gpus, "num_cpus": 1 if gpus else 0.5})
    searcher = Searcher.options(ray_actor_options={"num_cpus": 0.1})
    ingress = Ingress.options(ray_actor_options={"num_cpus": 0.1})
    return ingress.bind(
        encoder.bind(settings.model, settings.pretrained),
        searcher.bind(settings.platform_settings(), settings.max_rows_per_tenant),
        settings.model_dump(mode="json"),
    )
