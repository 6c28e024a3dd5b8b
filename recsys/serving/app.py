"""The FastAPI ranking service: ``create_app(recommender, AppConfig(...))``.

Endpoints (documented by the OpenAPI schema at ``/openapi.json``):

- ``POST /v1/recommend``: one history -> top-k items (422 when no history item is known);
- ``POST /v1/recommend/batch``: several requests answered together;
- ``POST /v1/items`` (admin bearer token; 403 when the service has no token configured,
  401 on a missing or wrong token) and ``GET /v1/items/{item_id}``;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (the batch worker runs),
  ``GET /metrics`` (Prometheus).

Every recommend query goes through the :class:`~recsys.serving.batcher.MicroBatcher`; a full
queue is answered 503 with ``Retry-After``. Bodies over 1 MiB are answered 413 before
parsing; validation errors are 422 with the offending field in ``field`` and ``detail``.
Unexpected exceptions become a 500 answer and a metric, never a dead process.

Example:
    >>> app = create_app(Recommender.from_bundle("bundles/setrec-ml100k"), AppConfig(admin_token="s3cret"))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.serving.batcher import BatcherConfig, MicroBatcher, QueueFullError
from recsys.serving.metrics import ServiceMetrics
from recsys.serving.schemas import (
    MAX_BODY_BYTES,
    BatchRecommendRequest,
    BatchRecommendResponse,
    ErrorBody,
    Health,
    ItemInfo,
    ModelInfo,
    NewItem,
    RecommendRequest,
    RecommendResponse,
)
from recsys.serving.service import (
    DuplicateItemError,
    NoKnownHistoryError,
    Query,
    Recommendation,
    Recommender,
    TextEncoderUnavailableError,
)
from recsys.errors import UnknownItemError

log = logging.getLogger("recsys.serving")

KNOWN_PATHS = ("/v1/recommend", "/v1/recommend/batch", "/v1/items", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")


@dataclass
class AppConfig:
    """How the app runs."""

    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    """Micro-batching: max batch size, max wait, queue bound."""
    admin_token: str | None = None
    """Bearer token of the catalogue endpoints; None disables them (403)."""
    max_body_bytes: int = MAX_BODY_BYTES
    """Largest request body; larger ones are answered 413."""
    retry_after_s: int = 1
    """Retry-After of a 503 answer when the queue is full."""
    close_recommender: bool = False
    """Stop the recommender's engine when the app shuts down (the CLI owns it: True)."""


def _endpoint(path: str) -> str:
    """A bounded metrics label for a request path."""
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/v1/items/"):
        return "/v1/items/{item_id}"
    return "other"


class _Guard:
    """Pure ASGI middleware: body size limit, per-request metrics, last-resort 500."""

    def __init__(self, app, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        endpoint = _endpoint(scope.get("path", ""))
        status = {"code": 500, "started": False}

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
            await send(message)

        try:
            receive_body = await self._bounded(scope, receive)
            if receive_body is None:
                self.metrics.error(endpoint, "body_too_large")
                await _json(tracking_send, 413, {"detail": f"request body is larger than {self.max_body_bytes} bytes", "field": "body"})
            else:
                await self.app(scope, receive_body, tracking_send)
        except Exception:  # last resort: the process must answer and live on
            log.exception("unhandled error on %s", scope.get("path"))
            self.metrics.error(endpoint, "internal")
            if not status["started"]:
                await _json(tracking_send, 500, {"detail": "internal error; see the service log"})
        finally:
            self.metrics.observe_request(endpoint, status["code"], time.perf_counter() - start)

    async def _bounded(self, scope, receive):
        """A receive callable replaying the whole body, or None when it exceeds the limit."""
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    pass
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive  # disconnect: let the app see it
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                return None
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = {"done": False}
        data = b"".join(chunks)

        async def replay_receive():
            if not replay["done"]:
                replay["done"] = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return replay_receive


async def _json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    response = JSONResponse(body, status_code=status, headers=headers)
    await response({"type": "http"}, None, send)


def _error(status: int, detail, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


def create_app(recommender: Recommender, config: AppConfig | None = None) -> FastAPI:
    """The FastAPI app over a loaded :class:`Recommender`.

    Args:
        recommender: the ranking core (engine + index + catalogue).
        config: batching, admin token, limits.

    Example:
        >>> with TestClient(create_app(rec)) as client:
        ...     client.post("/v1/recommend", json={"history": ["50"], "k": 3}).json()["items"]
    """
    config = config or AppConfig()
    metrics = ServiceMetrics()
    metrics.items.set(recommender.num_items)
    batcher: MicroBatcher = MicroBatcher(
        recommender.recommend, config.batcher, on_batch=lambda size: metrics.batch_size.observe(size)
    )
    model_info = ModelInfo(name=recommender.model_name, version=recommender.model_version)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            if config.close_recommender:
                recommender.close()

    app = FastAPI(
        title="setrec ranking service",
        version="1",
        summary="Top-k recommendations from a set-identifier model; catalogue items can be added at runtime.",
        lifespan=lifespan,
    )
    app.state.recommender = recommender
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(_Guard, metrics=metrics, max_body_bytes=config.max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="Admin token given to `recsys serve --admin-token-file`.")
    errors = {400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        details = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()]
        first = details[0]["loc"] if details else ()
        field = ".".join(str(part) for part in first if part != "body") or "body"
        metrics.error(_endpoint(request.url.path), "validation")
        return _error(422, jsonable_encoder(details), field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, exc.detail, None, getattr(exc, "headers", None))

    def _queue_full(endpoint: str, error: QueueFullError) -> JSONResponse:
        metrics.error(endpoint, "queue_full")
        return _error(503, str(error), None, {"Retry-After": str(config.retry_after_s)})

    model_json = model_info.model_dump()

    def _answer(result: Recommendation) -> dict:
        """The RecommendResponse body as plain data (built directly: validating our own output per request costs more than the search)."""
        items = [{"id": i, "score": s, "title": t} for i, s, t in zip(result.ids, result.scores, result.titles)]
        return {"items": items, "model": model_json, "unknown_items": result.unknown_items}

    def _query(body: RecommendRequest) -> Query:
        return Query(body.history, body.k, body.exclude_history, body.exclude, body.candidates)

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=errors, tags=["recommend"])
    async def recommend(body: RecommendRequest):
        """Top-k items for one history of source item ids (oldest first)."""
        try:
            result = await batcher.submit(_query(body))
        except QueueFullError as error:
            return _queue_full("/v1/recommend", error)
        except NoKnownHistoryError as error:
            metrics.error("/v1/recommend", "unknown_items")
            return _error(422, str(error), "history")
        return JSONResponse(_answer(result))

    @app.post("/v1/recommend/batch", response_model=BatchRecommendResponse, responses=errors, tags=["recommend"])
    async def recommend_batch(body: BatchRecommendRequest):
        """Several recommend requests at once; answers in order. 422 names the first request whose history is unknown."""
        try:
            results = await batcher.submit_many([_query(r) for r in body.requests], return_exceptions=True)
        except QueueFullError as error:
            return _queue_full("/v1/recommend/batch", error)
        for position, result in enumerate(results):
            if isinstance(result, NoKnownHistoryError):
                metrics.error("/v1/recommend/batch", "unknown_items")
                return _error(422, f"requests[{position}].{result}", f"requests.{position}.history")
            if isinstance(result, BaseException):
                raise result
        return JSONResponse({"results": [_answer(r) for r in results]})

    def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.admin_token is None:
            metrics.error("/v1/items", "auth")
            raise StarletteHTTPException(403, "catalogue changes are disabled: start the service with --admin-token-file")
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), config.admin_token.encode()):
            metrics.error("/v1/items", "auth")
            raise StarletteHTTPException(401, "a valid admin bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    @app.post(
        "/v1/items",
        response_model=ItemInfo,
        status_code=201,
        responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 409: {"model": ErrorBody}, **errors},
        dependencies=[Depends(require_admin)],
        tags=["catalogue"],
    )
    async def add_item(body: NewItem):
        """Add an item from its text; it is retrievable as soon as this answers."""
        try:
            info = await run_in_threadpool(recommender.add_item, body.id, body.text, body.title)
        except DuplicateItemError as error:
            metrics.error("/v1/items", "duplicate")
            return _error(409, str(error), "id")
        except TextEncoderUnavailableError as error:
            metrics.error("/v1/items", "no_text_encoder")
            return _error(503, str(error), None)
        metrics.items.set(recommender.num_items)
        return JSONResponse(ItemInfo(**info).model_dump(), status_code=201)

    @app.get("/v1/items/{item_id}", response_model=ItemInfo, responses={404: {"model": ErrorBody}}, tags=["catalogue"])
    async def get_item(item_id: str):
        """One catalogue item by its source id."""
        try:
            return ItemInfo(**recommender.item(item_id))
        except UnknownItemError as error:
            metrics.error("/v1/items/{item_id}", "unknown_item")
            return _error(404, str(error), "item_id")

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz():
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["ops"])
    async def readyz():
        """Ready to answer: the batch worker runs."""
        body = Health(status="ready" if batcher.running else "starting", items=recommender.num_items, engine=recommender.engine.name, model=model_info)
        return JSONResponse(body.model_dump(), status_code=200 if batcher.running else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus():
        """Prometheus text exposition."""
        metrics.queue_depth.set(batcher.depth)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app
