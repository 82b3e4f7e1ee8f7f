"""The HTTP API (FastAPI): OpenAI-compatible embeddings, a hosted-API-style rerank endpoint, operations.

    POST /v1/embeddings  {"input": str | [str], "model"?, "encoding_format"?: "float" | "base64",
                          "dimensions"?, "input_type"?: "query" | "document"}
    POST /v1/rerank      {"query": str, "documents": [str | {"text": str}], "top_n"?, "return_documents"?}
                         (also at /rerank) -> {"results": [{"index", "relevance_score", "document"?}], ...}
    GET  /health, /v1/models, /info, /metrics (Prometheus)

Every error, the framework's included, comes back as ``{"error": {"message", "type", "param", "code"}}``
with the status the schema declares; a failing request never stops the server or drops its connection.
Work is scheduled by token budget (:mod:`.scheduler`), bounded in queue and time.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the request models from the handlers'
# annotations, and those models are built per app (local names a string annotation could not resolve).
import asyncio
import base64
import contextlib
import dataclasses
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..utils import UsageError, logger, require

require("fastapi", "server")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from .. import __version__  # noqa: E402
from ..models.processing import TokenIds  # noqa: E402
from ..models.rankers.base import rank_order  # noqa: E402
from .metrics import ServerMetrics  # noqa: E402
from .scheduler import DeadlineExceeded, JobCancelled, JobTooLarge, QueueFull, Scheduler  # noqa: E402
from .schemas import (  # noqa: E402
    EmbeddingResponse,
    HealthResponse,
    RerankResponse,
    ServerLimits,
    error_responses,
    request_models,
)

DISCONNECT_CHECK_S = 0.25  # how often a waiting request checks that its client is still connected
TOKENIZE_SLICE = 16  # texts per tokenizer call: a huge request does not hold the tokenizer for long
ROUTES = ("/v1/embeddings", "/v1/rerank", "/rerank", "/health", "/v1/models", "/info", "/metrics")

__all__ = ["ApiError", "ServerLimits", "create_app"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, kind: str = "invalid_request_error",
                 code: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code, self.headers = status, message, param, kind, code, headers


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, headers=exc.headers,
                        content={"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}})


class _BodyTooLarge(Exception):
    @staticmethod
    def error(limit: int) -> ApiError:
        return ApiError(413, f"the request body is over {limit} bytes (--max_request_bytes)", code="body_too_large")


class Guard:
    """Outermost ASGI layer: bodies over the byte limit get 413 before parsing; an unexpected exception
    becomes a 500 envelope *without* re-raising (a re-raised error makes the server drop the keep-alive
    connection); every response is counted in the metrics."""

    def __init__(self, app: Any, limits: ServerLimits, metrics: ServerMetrics) -> None:
        self.app, self.limits, self.metrics = app, limits, metrics

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]
        endpoint = scope.get("path", "") if scope.get("path") in ROUTES else "other"
        limit = self.limits.max_request_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        received = [0]

        async def send_counted(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def receive_limited() -> Dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise _BodyTooLarge()
            return message

        try:
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _BodyTooLarge()
            await self.app(scope, receive_limited, send_counted)
        except _BodyTooLarge:
            if not status[0]:
                await error_response(_BodyTooLarge.error(limit))(scope, receive, send_counted)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one request, not the connection or the server
            logger.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            if not status[0]:
                await error_response(ApiError(500, f"internal error ({type(exc).__name__}); the server keeps serving",
                                              kind="server_error"))(scope, receive, send_counted)
        finally:
            self.metrics.on_response(endpoint, status[0] or 500, time.perf_counter() - started)


class Service:
    """The served models, the scheduler and the request logic, apart from the HTTP wiring."""

    def __init__(self, embedder: Any, reranker: Any, embedder_name: Optional[str], reranker_name: Optional[str],
                 limits: ServerLimits) -> None:
        self.embedder, self.reranker, self.limits = embedder, reranker, limits
        self.embedder_name, self.reranker_name = embedder_name, reranker_name
        self.started = int(time.time())  # OpenAI's model objects carry a Unix time ("created"): when this server loaded them
        self.scheduler = Scheduler(limits.max_batch_tokens, limits.model_batch_size, limits.max_queue_items,
                                   limits.max_wait_ms, limits.stall_s)
        self.metrics = ServerMetrics(self.scheduler.queued_items)
        self.scheduler.on_batch = self.metrics.on_batch
        self.check_models_take_a_text()

    def check_models_take_a_text(self) -> None:
        """Settings that leave no room for any text (an LLM reranker's ``max_length`` under its own prompt) fail every
        request alike, each answered as the client's fault (a 400 telling it to raise ``max_length``): refused when
        the server is built instead, where the operator reads it."""
        for model in (self.embedder, self.reranker):  # settings may have changed since the load checked them
            if model is not None:
                try:
                    model.check_takes_text()
                except UsageError as exc:
                    raise UsageError(f"the served model cannot take any text with its settings: {exc}") from None

    # ------------------------------------------------------------------ checks
    def check_count(self, count: int, param: str) -> None:
        if count == 0:
            raise ApiError(400, f"{param} is empty", param=param)
        if count > self.limits.max_batch_size:
            raise ApiError(413, f"{param} has {count} items; this server takes at most {self.limits.max_batch_size} "
                                "per request (--max_batch_size)", param=param)

    def check_chars(self, texts: List[str], param: str, allow_empty: bool = True) -> None:
        for i, text in enumerate(texts):
            if not text and not allow_empty:
                raise ApiError(400, f"{param}[{i}] is empty", param=f"{param}[{i}]")
            if len(text) > self.limits.max_input_chars:
                raise ApiError(413, f"{param}[{i}] has {len(text)} characters; the limit is {self.limits.max_input_chars} "
                                    "(--max_input_chars)", param=f"{param}[{i}]")

    # ------------------------------------------------------------------ scheduling
    async def run(self, key: Tuple, items: List[Any], costs: List[int], fn: Any, request: Request) -> List[Any]:
        """Queue the items and wait for their results; 503 when the queue is full, 504 past the deadline.
        A client that disconnects, a deadline or a shutdown drops the job's remaining items."""
        try:
            job = self.scheduler.submit(key, items, costs, fn, timeout_s=self.limits.request_timeout_s or None)
        except JobTooLarge as exc:  # a retry would be refused the same way: it is the request's size
            raise ApiError(413, f"the request is too large for this server: {exc} (--max_queue_items; a rerank "
                                "document longer than the model's window counts once per window)", code="too_many_items") from None
        except QueueFull as exc:
            raise ApiError(503, f"the server is busy: {exc}; retry later", kind="server_busy", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except JobCancelled as exc:
            raise ApiError(503, str(exc), kind="server_busy", code="shutting_down") from None
        result = asyncio.wrap_future(job.future)
        try:
            # wait in short steps, checking between them whether the client is still there (one check per
            # step, not a polling task per request: that would cost the event loop more than the requests)
            while True:
                remaining = job.deadline - time.monotonic()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait({result}, timeout=min(DISCONNECT_CHECK_S, remaining))
                if done or await request.is_disconnected():
                    break
        except asyncio.CancelledError:  # the server is stopping this request
            result.cancel()
            self.scheduler.cancel(job)
            raise
        if result.done():
            try:
                return result.result()
            except DeadlineExceeded:
                raise ApiError(504, self._timeout_message(), kind="timeout", code="deadline_exceeded") from None
            except JobCancelled as exc:
                raise ApiError(503, str(exc), kind="server_busy", code="shutting_down") from None
            except Exception as exc:  # noqa: BLE001 - the model call failed (OOM of one batch, ...)
                # the cause's text stays in the server's log (the scheduler logs it): it can name the host's paths,
                # devices and memory, which are not the client's to read
                raise ApiError(500, f"the model call failed ({type(exc).__name__}); the server's log has the cause",
                               kind="server_error") from None
        result.cancel()  # nobody will read it (and its future is not left holding an unread exception)
        self.scheduler.cancel(job)
        if job.deadline > time.monotonic():
            raise ApiError(499, "the client closed the request", code="client_closed")
        raise ApiError(504, self._timeout_message(), kind="timeout", code="deadline_exceeded")

    def _timeout_message(self) -> str:
        return f"the request took longer than {self.limits.request_timeout_s:g} s (--request_timeout_s); its work was dropped"

    # ------------------------------------------------------------------ endpoints
    async def embeddings(self, req: Any, request: Request) -> JSONResponse:
        self.check_model(req.model, self.embedder_name, "embedding")
        if isinstance(req.input, str) and not req.input:
            raise ApiError(400, "input is empty", param="input")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        self.check_count(len(texts), "input")
        self.check_chars(texts, "input", allow_empty=False)
        is_query = req.input_type == "query"
        dims = req.dimensions or self.embedder.retrieval_config.truncate_dim  # None: all dimensions
        ids = await _tokenized(_in_slices, lambda part: self.embedder.tokenize(part, is_query=is_query), texts)
        embedder, batch_size = self.embedder, self.limits.model_batch_size
        max_tokens = self.limits.max_batch_tokens
        # the instruction's tokens left out of pooling (include_prompt=False): the same for every request of this
        # key (one instruction, one max length), so batches shared by requests keep it
        prompt_length = getattr(ids, "prompt_length", 0)

        def encode(batch: List[List[int]]) -> List[np.ndarray]:
            batch_ids = TokenIds(batch)
            batch_ids.prompt_length = prompt_length
            return list(embedder.encode_token_ids(batch_ids, batch_size=batch_size, max_tokens=max_tokens,
                                                  truncate_dim=embedder.embedding_dim, is_query=is_query).numpy())

        # full vectors are computed once per text and shared by requests of any size; each request truncates its own
        vectors = await self.run(("embed", is_query), ids, [len(x) for x in ids], encode, request)
        data = []
        matrix = embedder.truncate(torch.as_tensor(np.stack(vectors).astype(np.float32)), dims).numpy()  # once per request
        for i, vec in enumerate(matrix):
            value: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = int(sum(len(x) for x in ids))
        # a Response skips FastAPI's re-validation of the body (hundreds of floats a vector): the schema stays
        # declared by response_model, and the body is built to it here
        return JSONResponse({"object": "list", "data": data, "model": self.embedder_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def rerank(self, req: Any, request: Request) -> JSONResponse:
        self.check_model(req.model, self.reranker_name, "rerank")
        docs = [d if isinstance(d, str) else d.text for d in req.documents]
        self.check_count(len(docs), "documents")
        self.check_chars(docs, "documents")
        self.check_chars([req.query], "query")
        reranker, batch_size = self.reranker, self.limits.model_batch_size
        pairs = [(req.query, d) for d in docs]
        parts = await _tokenized(_in_slices, lambda part: [reranker.pair_units(part)], pairs)
        owners, units, offset = [], [], 0
        for part_owners, part_units in parts:
            owners.extend(o + offset for o in part_owners)
            units.extend(part_units)
            offset += TOKENIZE_SLICE

        max_tokens = self.limits.max_batch_tokens

        def score(batch: List[Any]) -> List[float]:
            return reranker.score_unit_list(batch, batch_size, max_tokens=max_tokens).tolist()

        unit_scores = await self.run(("rerank",), units, [reranker.unit_tokens(u) for u in units], score, request)
        raw = reranker.pair_scores(owners, unit_scores, len(docs))
        scores = reranker.pair_scores(owners, unit_scores, len(docs), normalize=True)
        order = rank_order(raw, req.top_n or len(docs))
        results = []
        for i in order:
            row: Dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
            if req.return_documents:
                row["document"] = {"text": docs[i]}
            results.append(row)
        return JSONResponse({"model": self.reranker_name, "results": results, "usage": {"total_documents": len(docs)}})

    def check_model(self, requested: Optional[str], served: Optional[str], what: str) -> None:
        if requested is not None and requested != served:
            raise ApiError(404, f"model {requested!r} is not served here; the {what} model is {served!r}", param="model",
                           code="model_not_found")

    def info(self) -> Dict[str, Any]:
        return {"version": __version__, "embedding": _model_info(self.embedder_name, self.embedder),
                "reranker": _model_info(self.reranker_name, self.reranker), "limits": dataclasses.asdict(self.limits),
                "stats": dict(self.scheduler.stats), "queued_items": self.scheduler.queued_items()}


def _in_slices(fn: Any, items: List[Any]) -> List[Any]:
    """``fn`` over slices of ``items``, results concatenated: each tokenizer call is short, so a small request's
    tokenization never waits long behind a huge one's."""
    out: List[Any] = []
    part = None
    for start in range(0, len(items), TOKENIZE_SLICE):
        part = fn(items[start : start + TOKENIZE_SLICE])
        out.extend(part)
    if isinstance(part, TokenIds):  # token ids keep their prompt_length (every slice's is the same)
        ids = TokenIds(out)
        ids.prompt_length = part.prompt_length
        return ids
    return out


async def _tokenized(*args: Any) -> Any:
    """Tokenize in a worker thread; a text the tokenizer cannot take is the request's fault: 400, not 500."""
    try:
        return await run_in_threadpool(*args)
    except (ValueError, TypeError, UnicodeError, RuntimeError) as exc:
        raise ApiError(400, f"the input could not be tokenized ({type(exc).__name__}: {exc})", code="tokenizer_error") from None


def _model_info(name: Optional[str], model: Any) -> Optional[Dict[str, Any]]:
    if model is None:
        return None
    config = dataclasses.asdict(model.retrieval_config)
    if config.get("lora_base"):  # an adapter's base by its folder's name: its path on this host is not the client's
        config["lora_base"] = config["lora_base"].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return {"id": name, "class": type(model).__name__, "config": config}


def _where(loc: Tuple[Any, ...]) -> str:
    """A pydantic error location as the request spells it: ``documents[1].text``, without ``body`` and without the
    union-member tags pydantic inserts (``str``, ``list[str]``, ``RerankDocument``)."""
    out = ""
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not ("[" in part or part[:1].isupper() or part in ("str", "int", "float", "bool")):
            out += f".{part}" if out else part
    return out


def _validation_error(exc: RequestValidationError) -> ApiError:
    """400 for malformed requests; 413 when a text or list is over the declared limits; 404 for an unknown model.

    A value that fits no member of a union (``input``: a string or a list of strings) gets one error per member;
    the deepest one names the actual problem (``input[1]`` is not a string, ``documents[0].text`` is too long)."""
    errors = exc.errors()
    kinds = {e.get("type") for e in errors}
    too_long = [e for e in errors if e.get("type") in ("string_too_long", "too_long")]
    first = max(too_long or errors, key=lambda e: len(e.get("loc", ())), default={})
    where = _where(tuple(first.get("loc", ())))
    message = f"{where or 'body'}: {str(first.get('msg', 'invalid request')).removeprefix('Value error, ')}"
    if first.get("loc", ())[-1:] == ("model",) and first.get("type") == "literal_error":
        return ApiError(404, f"model {first.get('input')!r} is not served here", param="model", code="model_not_found")
    if first.get("type") == "too_long":  # a list over max_length: said as check_count says it
        ctx = first.get("ctx", {})
        message = (f"{where} has {ctx.get('actual_length')} items; this server takes at most {ctx.get('max_length')} "
                   "per request (--max_batch_size)")
    if kinds & {"string_too_long", "too_long"}:
        return ApiError(413, message, param=where or None, code="too_large")
    if "json_invalid" in kinds:
        return ApiError(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
    return ApiError(400, message, param=where or None)


def create_app(embedder: Any = None, reranker: Any = None, embedder_name: Optional[str] = None,
               reranker_name: Optional[str] = None, limits: Optional[ServerLimits] = None) -> Any:
    """The ASGI app serving an :class:`AutoModelForEmbedding` and/or a reranker (at least one).

    The returned app is a FastAPI app wrapped in :class:`Guard`; the FastAPI app is its ``.app`` attribute
    and the :class:`Service` its ``.service``."""
    if embedder is None and reranker is None:
        raise ValueError("serve at least one model: an embedder, a reranker, or both")
    limits = limits or ServerLimits()
    embedder_name = embedder_name or ("embedder" if embedder is not None else None)
    reranker_name = reranker_name or ("reranker" if reranker is not None else None)
    service = Service(embedder, reranker, embedder_name, reranker_name, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # the call in progress may finish (bounded: with stall detection off, by the default stall time)
        service.scheduler.close(timeout_s=limits.stall_s or ServerLimits.stall_s)

    app = FastAPI(title="retrievals", version=__version__, lifespan=lifespan)
    app.state.service = service
    _install_errors(app)
    _install_routes(app, service)
    guarded = Guard(app, limits, service.metrics)
    guarded.service = service  # type: ignore[attr-defined]
    return guarded


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers with this, then re-raises; Guard swallows the re-raise so the connection stays open
        return error_response(ApiError(500, f"internal error ({type(exc).__name__}); the server keeps serving",
                                       kind="server_error"))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "")
        media = kind.split(";")[0].strip().lower()
        whole_body = any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors())  # no JSON object was read
        if whole_body and not (media == "application/json" or media.startswith("application/") and media.endswith("+json")):
            # FastAPI reads a body as JSON only when it says so (a guard against cross-site requests): curl -d sends
            # a form, and the error would otherwise say the body is not an object
            return error_response(ApiError(400, f"send the body as JSON with the header Content-Type: application/json "
                                                f"(got {kind[:60]!r})", code="unsupported_content_type"))
        return error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if isinstance(exc.__cause__, _BodyTooLarge):  # a body without Content-Length, over the limit while read
            return error_response(_BodyTooLarge.error(request.app.state.service.limits.max_request_bytes))
        if exc.status_code == 400:
            detail = f"the body could not be parsed ({detail})"
        return error_response(ApiError(exc.status_code, detail, kind=kind, headers=getattr(exc, "headers", None)))


def _install_routes(app: FastAPI, service: Service) -> None:
    # the model's own size, and the sizes it was trained to serve (Matryoshka): anything else is a schema error (400)
    # (and the size a truncate_dim in its config makes the default)
    dims = sorted({int(service.embedder.embedding_dim), *service.embedder.retrieval_config.matryoshka_dims,
                   *([service.embedder.retrieval_config.truncate_dim] if service.embedder.retrieval_config.truncate_dim else [])},
                  reverse=True) if service.embedder is not None else []
    models = request_models(service.limits, service.embedder_name, dims, service.reranker_name)

    # its 503 is the health body itself ("unhealthy" and the reason), not the error envelope: declared as such, so
    # the schema says what a probe or client reading /health actually receives
    @app.get("/health", response_model=HealthResponse, responses={503: {
        "model": HealthResponse, "description": "Unhealthy (status \"unhealthy\"): the scheduler's worker is not "
                                                "running, or one model call has run longer than stall_s; reason says which"}})
    async def health() -> Any:
        ok, reason = service.scheduler.health()
        body = {"status": "ok" if ok else "unhealthy", "reason": reason, "queued_items": service.scheduler.queued_items()}
        return body if ok else JSONResponse(status_code=503, content=body)

    @app.get("/v1/models")
    async def list_models() -> Dict[str, Any]:
        data = [{"id": name, "object": "model", "created": service.started, "owned_by": "retrievals", "type": kind}
                for name, kind in ((service.embedder_name, "embedding"), (service.reranker_name, "rerank")) if name is not None]
        return {"object": "list", "data": data}

    @app.get("/info")
    async def info() -> Dict[str, Any]:
        return service.info()

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    common = error_responses(400, 404, 413, 500, 503, 504)
    if "embeddings" in models:
        EmbeddingRequest = models["embeddings"]

        @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=common)
        async def embeddings(req: EmbeddingRequest, request: Request) -> Any:  # type: ignore[valid-type]
            return await service.embeddings(req, request)

    if "rerank" in models:
        RerankRequest = models["rerank"]

        async def rerank(req: RerankRequest, request: Request) -> Any:  # type: ignore[valid-type]
            return await service.rerank(req, request)

        app.post("/v1/rerank", response_model=RerankResponse, responses=common, response_model_exclude_none=True)(rerank)
        app.post("/rerank", response_model=RerankResponse, responses=common, include_in_schema=False,
                 response_model_exclude_none=True)(rerank)
