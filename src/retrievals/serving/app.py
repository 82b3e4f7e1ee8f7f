"""The HTTP API (FastAPI): OpenAI-compatible embeddings, a hosted-API-style rerank endpoint, health and info.

    POST /v1/embeddings  {"input": str | [str], "model"?, "encoding_format"?: "float" | "base64",
                          "dimensions"?, "input_type"?: "query" | "document"}
    POST /v1/rerank      {"query": str, "documents": [str | {"text": str}], "top_n"?, "return_documents"?}
                         (also at /rerank) -> {"results": [{"index", "relevance_score", "document"?}], ...}
    GET  /health, /v1/models, /info

Errors come back as ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; a failed
request never stops the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Literal, Optional, Union

import numpy as np

from ..utils import require

require("fastapi", "server")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from .. import __version__  # noqa: E402
from .batcher import MicroBatcher  # noqa: E402


@dataclass
class ServerLimits:
    """Per-request limits (larger requests get 413) and how the model is called."""

    max_batch_size: int = 256  # inputs of one embeddings request, documents of one rerank request
    max_input_chars: int = 20000  # characters of one input text (query or document)
    model_batch_size: int = 32  # batch size of the model calls
    max_wait_ms: float = 2.0  # how long a model call waits for more requests to join it


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, kind: str = "invalid_request_error",
                 code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


class EmbeddingRequest(BaseModel):
    input: Union[str, List[str]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(default=None, ge=1)
    input_type: Literal["query", "document"] = "document"
    user: Optional[str] = None


class RerankDocument(BaseModel):
    text: str


class RerankRequest(BaseModel):
    query: str
    documents: List[Union[str, RerankDocument]]
    top_n: Optional[int] = Field(default=None, ge=1)
    return_documents: bool = False
    model: Optional[str] = None


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(status_code=exc.status,
                        content={"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}})


def _model_info(name: Optional[str], model: Any) -> Optional[Dict[str, Any]]:
    if model is None:
        return None
    return {"id": name, "class": type(model).__name__, "config": dataclasses.asdict(model.retrieval_config)}


def create_app(embedder: Any = None, reranker: Any = None, embedder_name: Optional[str] = None,
               reranker_name: Optional[str] = None, limits: Optional[ServerLimits] = None) -> FastAPI:
    """The app serving an :class:`AutoModelForEmbedding` and/or a reranker (at least one)."""
    if embedder is None and reranker is None:
        raise ValueError("serve at least one model: an embedder, a reranker, or both")
    limits = limits or ServerLimits()
    embedder_name = embedder_name or ("embedder" if embedder is not None else None)
    reranker_name = reranker_name or ("reranker" if reranker is not None else None)
    batcher = MicroBatcher(limits.max_batch_size, limits.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title="retrievals", version=__version__, lifespan=lifespan)
    app.state.batcher = batcher
    counters = {"requests": 0, "errors": 0}

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        counters["errors"] += 1
        return _error(ApiError(500, f"{type(exc).__name__}: {exc}", kind="server_error"))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        counters["errors"] += 1
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        counters["errors"] += 1
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where or 'body'}: {first.get('msg', 'invalid request')}"
        return _error(ApiError(400, message, param=where or None))

    def check_model(requested: Optional[str], served: Optional[str], what: str) -> None:
        if served is None:
            raise ApiError(404, f"this server has no {what} model", code="model_not_found")
        if requested is not None and requested != served:
            raise ApiError(404, f"model {requested!r} is not served here; the {what} model is {served!r}", param="model",
                           code="model_not_found")

    def check_sizes(texts: List[str], param: str) -> None:
        if not texts:
            raise ApiError(400, f"{param} is empty", param=param)
        if len(texts) > limits.max_batch_size:
            raise ApiError(413, f"{param} has {len(texts)} items; this server takes at most {limits.max_batch_size} "
                                "per request (--max_batch_size)", param=param)
        for i, text in enumerate(texts):
            if len(text) > limits.max_input_chars:
                raise ApiError(413, f"{param}[{i}] has {len(text)} characters; the limit is {limits.max_input_chars} "
                                    "(--max_input_chars)", param=f"{param}[{i}]")

    async def run(key: Any, items: List[Any], fn: Any) -> List[Any]:
        return await asyncio.wrap_future(batcher.submit(key, items, fn))

    @app.get("/health")
    async def health() -> Dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> Dict[str, Any]:
        data = [{"id": name, "object": "model", "owned_by": "retrievals", "type": kind}
                for name, kind in ((embedder_name, "embedding"), (reranker_name, "rerank")) if name is not None]
        return {"object": "list", "data": data}

    @app.get("/info")
    async def info() -> Dict[str, Any]:
        return {"version": __version__, "embedding": _model_info(embedder_name, embedder),
                "reranker": _model_info(reranker_name, reranker), "limits": dataclasses.asdict(limits),
                "stats": {**counters, **batcher.stats}}

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Dict[str, Any]:
        counters["requests"] += 1
        check_model(req.model, embedder_name, "embedding")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        check_sizes(texts, "input")
        if req.dimensions is not None and req.dimensions != embedder.embedding_dim:
            raise ApiError(400, f"dimensions={req.dimensions}: this model gives {embedder.embedding_dim}-dimensional "
                                "embeddings and does not shorten them", param="dimensions")
        is_query = req.input_type == "query"

        def encode(batch: List[str]) -> List[Any]:
            ids = embedder.tokenize(batch, is_query=is_query)  # once: for the vectors and the usage count
            vectors = embedder.encode_token_ids(ids, batch_size=limits.model_batch_size).numpy()
            return [(vector, len(seq)) for vector, seq in zip(vectors, ids)]

        out = await run(("embed", is_query), texts, encode)
        data = []
        for i, (vector, _) in enumerate(out):
            vec = np.asarray(vector, dtype=np.float32)
            value: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        n_tokens = int(sum(t for _, t in out))
        return {"object": "list", "data": data, "model": embedder_name,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    async def rerank(req: RerankRequest) -> Dict[str, Any]:
        counters["requests"] += 1
        check_model(req.model, reranker_name, "rerank")
        docs = [d if isinstance(d, str) else d.text for d in req.documents]
        check_sizes(docs, "documents")
        check_sizes([req.query], "query")

        def score(pairs: List[Any]) -> List[float]:
            return reranker.compute_score(pairs, batch_size=limits.model_batch_size, normalize=True)

        scores = await run(("rerank",), [(req.query, d) for d in docs], score)
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[: req.top_n or len(docs)]
        results = []
        for i in order:
            row: Dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
            if req.return_documents:
                row["document"] = {"text": docs[i]}
            results.append(row)
        return {"model": reranker_name, "results": results, "usage": {"total_documents": len(docs)}}

    app.post("/v1/rerank")(rerank)
    app.post("/rerank")(rerank)
    return app
