"""The FastAPI ranking service: ``create_app(recommender, AppConfig(...))``.

Endpoints (documented by the OpenAPI schema at ``/openapi.json``):

- ``POST /v1/recommend``: one history -> top-k items (422 when no history item is known);
- ``POST /v1/recommend/batch``: several requests answered together;
- ``POST /v1/items`` and ``DELETE /v1/items/{item_id}`` (admin bearer token, checked before
  the body is read: 403 when the service has no token configured, 401 on a missing or wrong
  token): catalogue changes, committed to the catalogue store
  (:class:`~recsys.serving.catalogue.Catalogue`) before the answer; ``GET /v1/items/{item_id}``
  (ids may contain ``/``);
- ``GET /healthz`` (the process answers), ``GET /readyz`` (the batch worker runs and the
  service is not draining), ``GET /metrics`` (Prometheus).

Every recommend query goes through the :class:`~recsys.serving.batcher.MicroBatcher`. Every
503 (full queue, too many requests in flight, shutting down, catalogue store or text encoder
unavailable, not ready) is a JSON ``{"detail", "field"}`` answer with ``Retry-After``, counted in
``setrec_errors_total``. Bodies over 1 MiB are answered 413 before parsing; validation errors
are 422 with the offending field in ``field`` and ``detail``; request types are strict (a
string or a boolean is not an integer); a history longer than ``AppConfig.max_history`` ids (default
10,000, ``recsys serve --max-history``) is a 422 naming ``history``. Unexpected exceptions become a 500 answer and a
metric, never a dead process. ``/docs`` is off (it would load scripts from a public CDN); the
schema is at ``/openapi.json``. While draining (:class:`Drain`, set by ``recsys serve`` on
SIGTERM) every answer carries ``Connection: close``.

Example:
    >>> rec = Recommender.from_bundle("bundles/setrec-ml100k")
    >>> catalogue = Catalogue(rec, CatalogueStore("sqlite:///setrec-catalogue.db", rec.dataset_fingerprint))
    >>> app = create_app(rec, AppConfig(admin_token="s3cret-token-0123456789"), catalogue)
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.serving.batcher import BatcherConfig, MicroBatcher, QueueFullError
from recsys.serving.catalogue import Catalogue, CatalogueStore, CatalogueUnavailableError, DuplicateItemError
from recsys.serving.metrics import ServiceMetrics
from recsys.serving.schemas import (
    DEFAULT_MAX_HISTORY,
    MAX_BODY_BYTES,
    MAX_ID_CHARS,
    BatchRecommendRequest,
    BatchRecommendResponse,
    ErrorBody,
    Health,
    ItemInfo,
    ModelInfo,
    NewItem,
    RecommendRequest,
    RecommendResponse,
    request_models,
)
from recsys.serving.service import (
    NoKnownHistoryError,
    Query,
    Recommendation,
    Recommender,
    TextEncoderUnavailableError,
)
from recsys.errors import UnknownItemError

log = logging.getLogger("recsys.serving")

KNOWN_PATHS = ("/v1/recommend", "/v1/recommend/batch", "/v1/items", "/healthz", "/readyz", "/metrics", "/openapi.json")
#: Paths answered even when too many requests are in flight (health checks, scraping).
OPS_PATHS = ("/healthz", "/readyz", "/metrics")


class Drain:
    """Shared flag of a service that is shutting down: answers close their connection, /readyz is 503."""

    def __init__(self) -> None:
        self.active = False

    def start(self) -> None:
        self.active = True


@dataclass
class AppConfig:
    """How the app runs."""

    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    """Micro-batching: max batch size, max wait, queue bound."""
    admin_token: str | None = None
    """Bearer token of the catalogue endpoints; None disables them (403)."""
    max_body_bytes: int = MAX_BODY_BYTES
    """Largest request body; larger ones are answered 413."""
    max_history: int = DEFAULT_MAX_HISTORY
    """Most item ids in one request's history (``ServeConfig.max_history``); longer ones are answered 422 naming
    ``history`` (``requests.<i>.history`` in a batch). The OpenAPI schema shows it as ``maxItems``."""
    retry_after_s: int = 1
    """Retry-After (seconds) of every 503 answer."""
    max_in_flight: int | None = None
    """Most requests being handled at once (ops endpoints excepted); beyond it 503 + Retry-After.
    None: no limit besides the batcher's queue."""
    close_recommender: bool = False
    """Stop the recommender's engine when the app shuts down (the CLI owns it: True)."""
    drain: Drain = field(default_factory=Drain)
    """Set by the server on shutdown (``recsys serve``)."""


def _endpoint(path: str) -> str:
    """A bounded metrics label for a request path."""
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/v1/items/"):
        return "/v1/items/{item_id}"
    return "other"


def _is_admin(method: str, path: str) -> bool:
    return method in ("POST", "DELETE") and (path == "/v1/items" or path.startswith("/v1/items/"))


class _Guard:
    """Pure ASGI middleware, before any parsing: admin token on catalogue changes, in-flight
    limit, body size limit, per-request metrics, ``Connection: close`` while draining, last-resort 500."""

    def __init__(self, app, metrics: ServiceMetrics, config: "AppConfig") -> None:
        self.app = app
        self.metrics = metrics
        self.config = config
        self.max_body_bytes = config.max_body_bytes
        self.in_flight = 0

    def _admin_refusal(self, scope) -> tuple[int, str] | None:
        """(status, detail) when a catalogue change lacks the admin token, else None (constant-time compare)."""
        token = self.config.admin_token
        if token is None:
            return 403, "catalogue changes are disabled: start the service with --admin-token-file"
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = credentials.strip()
                break
        if not secrets.compare_digest(given, token.encode()):
            return 401, "a valid admin bearer token is required"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope.get("path", "")
        endpoint = _endpoint(path)
        status = {"code": 500, "started": False}
        drain = self.config.drain

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                if drain.active:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        limited = path not in OPS_PATHS
        if limited:
            self.in_flight += 1
        try:
            limit = self.config.max_in_flight
            refusal = self._admin_refusal(scope) if _is_admin(scope.get("method", ""), path) else None
            if refusal is not None:
                self.metrics.error(endpoint, "auth")
                code, detail = refusal
                headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
                await _json(tracking_send, code, {"detail": detail, "field": "authorization"}, headers)
            elif limited and limit is not None and self.in_flight > limit:
                await _unavailable(tracking_send, self.metrics, endpoint, "overloaded", f"more than {limit} requests in flight; retry shortly", self.config.retry_after_s)
            else:
                receive_body = await self._bounded(scope, receive)
                if receive_body is None:
                    self.metrics.error(endpoint, "body_too_large")
                    await _json(tracking_send, 413, {"detail": f"request body is larger than {self.max_body_bytes} bytes", "field": "body"})
                else:
                    await self.app(scope, receive_body, tracking_send)
        except Exception:  # last resort: the process must answer and live on
            log.exception("unhandled error on %s", path)
            self.metrics.error(endpoint, "internal")
            if not status["started"]:
                await _json(tracking_send, 500, {"detail": "internal error; see the service log", "field": None})
        finally:
            if limited:
                self.in_flight -= 1
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


async def _unavailable(send, metrics: ServiceMetrics, endpoint: str, kind: str, detail: str, retry_after_s: int) -> None:
    """A 503 from the middleware: JSON, Retry-After, counted."""
    metrics.error(endpoint, kind)
    await _json(send, 503, {"detail": detail, "field": None}, {"Retry-After": str(retry_after_s)})


def _error(status: int, detail, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


def create_app(recommender: Recommender, config: AppConfig | None = None, catalogue: Catalogue | None = None) -> FastAPI:
    """The FastAPI app over a loaded :class:`Recommender`.

    Args:
        recommender: the ranking core (engine + index + catalogue).
        config: batching, admin token, limits.
        catalogue: where catalogue changes are committed (and polled from, while the app runs);
            None: an in-memory SQLite store, not durable (``recsys serve`` always gives one).

    Example:
        >>> with TestClient(create_app(rec)) as client:
        ...     client.post("/v1/recommend", json={"history": ["50"], "k": 3}).json()["items"]
    """
    config = config or AppConfig()
    single_request, batch_request = request_models(config.max_history)
    if catalogue is None:
        catalogue = Catalogue(recommender, CatalogueStore("sqlite://", recommender.dataset_fingerprint), poll_s=0)
    metrics = ServiceMetrics()
    metrics.items.set(recommender.num_items)

    def run_batch(queries):
        start = time.perf_counter()
        try:
            return recommender.recommend(queries)
        finally:
            metrics.batch_seconds.observe(time.perf_counter() - start)

    batcher: MicroBatcher = MicroBatcher(run_batch, config.batcher, on_batch=lambda size: metrics.batch_size.observe(size))
    model_info = ModelInfo(name=recommender.model_name, version=recommender.model_version)
    retry_after = {"Retry-After": str(config.retry_after_s)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        catalogue.start()
        try:
            yield
        finally:
            catalogue.stop()
            await batcher.stop()
            if config.close_recommender:
                recommender.close()
                catalogue.close()

    app = FastAPI(
        title="setrec ranking service",
        version="1",
        summary="Top-k recommendations from a set-identifier model; catalogue items can be added and removed at runtime.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a public CDN
        redoc_url=None,
    )
    app.state.recommender = recommender
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.catalogue = catalogue
    app.state.config = config
    app.add_middleware(_Guard, metrics=metrics, config=config)
    bearer = HTTPBearer(auto_error=False, description="Admin token given to `recsys serve --admin-token-file`.")
    errors = {400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        details = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()]
        for detail in details:  # say which setting bounds a history, so a client knows it is the server's limit
            if detail["type"] == "too_long" and detail["loc"] and detail["loc"][-1] == "history":
                detail["msg"] = f"{detail['msg']} (the service's max_history is {config.max_history} ids)"
        first = details[0]["loc"] if details else ()
        field = ".".join(str(part) for part in first if part != "body") or "body"
        metrics.error(_endpoint(request.url.path), "validation")
        return _error(422, jsonable_encoder(details), field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, exc.detail, None, getattr(exc, "headers", None))

    def _unavailable_answer(endpoint: str, kind: str, error: Exception) -> JSONResponse:
        metrics.error(endpoint, kind)
        return _error(503, str(error), None, retry_after)

    model_json = model_info.model_dump()

    def _answer(result: Recommendation) -> dict:
        """The RecommendResponse body as plain data (built directly: validating our own output per request costs more than the search)."""
        items = [{"id": i, "score": s, "title": t} for i, s, t in zip(result.ids, result.scores, result.titles)]
        return {"items": items, "model": model_json, "unknown_items": result.unknown_items}

    def _query(body: RecommendRequest) -> Query:
        return Query(body.history, body.k, body.exclude_history, body.exclude, body.candidates)

    async def recommend(body: RecommendRequest):
        """Top-k items for one history of source item ids (oldest first)."""
        try:
            result = await batcher.submit(_query(body))
        except QueueFullError as error:
            return _unavailable_answer("/v1/recommend", "queue_full", error)
        except NoKnownHistoryError as error:
            metrics.error("/v1/recommend", "unknown_items")
            return _error(422, str(error), "history")
        return JSONResponse(_answer(result))

    async def recommend_batch(body: BatchRecommendRequest):
        """Several recommend requests at once; answers in order. 422 names the first request whose history is unknown."""
        try:
            results = await batcher.submit_many([_query(r) for r in body.requests], return_exceptions=True)
        except QueueFullError as error:
            return _unavailable_answer("/v1/recommend/batch", "queue_full", error)
        for position, result in enumerate(results):
            if isinstance(result, NoKnownHistoryError):
                metrics.error("/v1/recommend/batch", "unknown_items")
                return _error(422, f"requests[{position}].{result}", f"requests.{position}.history")
            if isinstance(result, QueueFullError):
                return _unavailable_answer("/v1/recommend/batch", "queue_full", result)
            if isinstance(result, BaseException):
                raise result
        return JSONResponse({"results": [_answer(r) for r in results]})

    # The request bodies carry this app's history limit (AppConfig.max_history): FastAPI reads the body type
    # from the annotation, so it is set to the app's models before the routes are added.
    recommend.__annotations__["body"] = single_request
    recommend_batch.__annotations__["body"] = batch_request
    app.post("/v1/recommend", response_model=RecommendResponse, responses=errors, tags=["recommend"])(recommend)
    app.post("/v1/recommend/batch", response_model=BatchRecommendResponse, responses=errors, tags=["recommend"])(recommend_batch)

    def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """Declares the bearer scheme in the OpenAPI schema; the token itself is checked by the
        middleware before the body is read (so a bad body never answers before a bad token)."""

    admin_errors = {401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}, **errors}

    @app.post("/v1/items", response_model=ItemInfo, status_code=201, responses=admin_errors, dependencies=[Depends(require_admin)], tags=["catalogue"])
    async def add_item(body: NewItem):
        """Add an item from its text; committed to the catalogue store, and retrievable, when this answers 201."""
        try:
            info = await run_in_threadpool(catalogue.add, body.id, body.text, body.title)
        except DuplicateItemError as error:
            metrics.error("/v1/items", "duplicate")
            return _error(409, str(error), "id")
        except TextEncoderUnavailableError as error:
            return _unavailable_answer("/v1/items", "no_text_encoder", error)
        except CatalogueUnavailableError as error:
            return _unavailable_answer("/v1/items", "store_unavailable", error)
        metrics.items.set(recommender.num_items)
        return JSONResponse(ItemInfo(**info).model_dump(), status_code=201)

    def item_path():
        return Path(..., min_length=1, max_length=MAX_ID_CHARS, description="Source item id (may contain '/').")

    @app.delete("/v1/items/{item_id:path}", response_model=ItemInfo, responses=admin_errors, dependencies=[Depends(require_admin)], tags=["catalogue"])
    async def remove_item(item_id: str = item_path()):
        """Take an item out of every answer (committed to the catalogue store first); it stays valid in histories.
        Removing a removed item answers the same."""
        try:
            info = await run_in_threadpool(catalogue.remove, item_id)
        except UnknownItemError as error:
            metrics.error("/v1/items/{item_id}", "unknown_item")
            return _error(404, str(error), "item_id")
        except CatalogueUnavailableError as error:
            return _unavailable_answer("/v1/items/{item_id}", "store_unavailable", error)
        return JSONResponse(ItemInfo(**info).model_dump())

    @app.get("/v1/items/{item_id:path}", response_model=ItemInfo, responses={404: {"model": ErrorBody}}, tags=["catalogue"])
    async def get_item(item_id: str = item_path()):
        """One catalogue item by its source id."""
        try:
            return JSONResponse(ItemInfo(**recommender.item(item_id)).model_dump())
        except UnknownItemError as error:
            metrics.error("/v1/items/{item_id}", "unknown_item")
            return _error(404, str(error), "item_id")

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz():
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["ops"])
    async def readyz():
        """Ready to answer: the batch worker runs and the service is not shutting down (503 + Retry-After otherwise)."""
        ready = batcher.running and not config.drain.active
        state = "ready" if ready else "draining" if config.drain.active else "starting"
        body = Health(status=state, items=recommender.num_items, engine=recommender.engine.name, model=model_info)
        if not ready:
            metrics.error("/readyz", "not_ready")
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503, headers=None if ready else retry_after)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus():
        """Prometheus text exposition."""
        metrics.queue_depth.set(batcher.depth)
        metrics.items.set(recommender.num_items)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app
