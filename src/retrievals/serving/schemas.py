"""Typed requests and responses of the HTTP API, built from the server's limits so that ``/openapi.json``
states every field, limit and status: a request valid by the schema is never refused for a reason the
schema does not give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Dict, List, Literal, Optional, Type, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model, field_validator

from ..utils import UsageError, require

require("fastapi", "server")


@dataclass
class ServerLimits:
    """Request limits, batching and deadlines of one server (the CLI flags of ``pipelines.serve``)."""

    max_batch_size: int = 256  # inputs of one embeddings request, documents of one rerank request
    max_input_chars: int = 20000  # characters of one input text (query or document)
    model_batch_size: int = 32  # most inputs in one model call
    max_batch_tokens: int = 2048  # most padded tokens in one model call (longest input x inputs)
    max_queue_items: int = 8192  # texts or document windows waiting; beyond, 503 with Retry-After
    max_wait_ms: float = 2.0  # how long a lone small request waits for others to share its model call
    request_timeout_s: float = 60.0  # past it, 504 and the request's remaining work is dropped
    max_request_bytes: int = 64 * 1024 * 1024  # larger bodies get 413 before they are parsed
    stall_s: float = 120.0  # /health fails when one model call runs longer than this (0: never for that)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_input_chars", "model_batch_size", "max_batch_tokens", "max_queue_items",
                     "max_request_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "request_timeout_s", "stall_s"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_queue_items < self.max_batch_size:  # a request within max_batch_size would never be queued
            raise UsageError(f"max_queue_items ({self.max_queue_items}) must be >= max_batch_size ({self.max_batch_size}).")


def _text_error(value: str) -> Optional[str]:
    """Why a decoded JSON string cannot be tokenized, or None: lone surrogates (``"\\ud800"``) are not Unicode text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"invalid Unicode: lone surrogate at character {exc.start}"
    return None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """Every error, whatever its status: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


ERROR_STATUSES = {
    400: "Malformed request: invalid JSON, a wrong type, invalid Unicode, a dimension the model does not give",
    404: "Unknown route or model",
    405: "Method not allowed",
    413: "Body, item count or text longer than the server's limits (or more document windows than the queue holds)",
    500: "Internal error (a bug): the server keeps serving",
    503: "Queue full (Retry-After says when to retry) or server shutting down",
    504: "The request's deadline (request_timeout_s) passed; its remaining work was dropped",
}


def error_responses(*statuses: int) -> Dict[Union[int, str], Dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": ERROR_STATUSES[s]} for s in sorted(statuses)}


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[List[float], str] = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: List[EmbeddingData]
    model: str
    usage: Usage


class RerankDocumentOut(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(ge=0, le=1)
    document: Optional[RerankDocumentOut] = None


class RerankUsage(BaseModel):
    total_documents: int


class RerankResponse(BaseModel):
    model: str
    results: List[RerankResult]
    usage: RerankUsage


class HealthResponse(BaseModel):
    status: Literal["ok", "unhealthy"]
    reason: str
    queued_items: int


def _checked_text(max_chars: int, min_chars: int = 0) -> Any:
    return Field(min_length=min_chars, max_length=max_chars,
                 description=f"{'1 to ' if min_chars else 'at most '}{max_chars} characters of valid Unicode")


def request_models(limits: ServerLimits, embedder_name: Optional[str], embedding_dims: List[int],
                   reranker_name: Optional[str]) -> Dict[str, Type[BaseModel]]:
    """The request models of this server: its limits, served model names and dimensions in the schema."""
    # the item count is checked as the list is read (max_length), before any item is validated: a body within
    # max_request_bytes can hold millions of tiny items, each taking time on the event loop
    chars, items = limits.max_input_chars, limits.max_batch_size
    text = (str, _checked_text(chars))

    def no_surrogates(cls, value: Any) -> Any:
        for i, item in enumerate([value] if isinstance(value, str) else value or []):
            text_value = item if isinstance(item, str) else getattr(item, "text", "")
            problem = _text_error(text_value)
            if problem:
                raise UsageError(problem if isinstance(value, str) else f"item {i}: {problem}")
        return value

    def not_a_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # a bool is an int to Python and to pydantic's lax mode, not to JSON
            raise UsageError("Input should be a valid integer, not a boolean")
        return value

    def no_token_ids(cls, value: Any) -> Any:  # the OpenAI client may send pre-tokenized input: say so, plainly
        if isinstance(value, list) and value and all(isinstance(v, (int, list)) and not isinstance(v, bool) for v in value):
            raise UsageError("token-id input is not supported here: send the text (a string or a list of strings)")
        return value

    config = ConfigDict(extra="ignore")
    models: Dict[str, Type[BaseModel]] = {}
    if embedder_name is not None:
        model_field = Optional[Literal[embedder_name]]  # type: ignore[valid-type]
        dims_field = Optional[Literal[tuple(embedding_dims)]]  # type: ignore[valid-type]
        models["embeddings"] = create_model(
            "EmbeddingRequest", __config__=config,
            __validators__={"_input_unicode": field_validator("input")(no_surrogates),
                            "_input_text": field_validator("input", mode="before")(no_token_ids)},
            # an empty text is refused (400), as OpenAI's API does: its vector would be the special tokens'
            input=(Union[str, Annotated[List[str], Field(max_length=items)]], Field(
                description=f"a text or a list of 1 to {items} texts, each 1 to {chars} characters",
                json_schema_extra={"anyOf": [{"type": "string", "minLength": 1, "maxLength": chars},
                                             {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": chars},
                                              "minItems": 1, "maxItems": items}]})),
            model=(model_field, Field(default=None, description="the served embedding model's id")),
            encoding_format=(Literal["float", "base64"], "float"),
            dimensions=(dims_field, Field(default=None, description="vector size; only the model's own is served")),
            input_type=(Literal["query", "document"], Field(default="document", description="query: apply the query instruction")),
            user=(Optional[str], None),
        )
    if reranker_name is not None:
        document = create_model("RerankDocument", __config__=config, text=text)
        models["rerank"] = create_model(
            "RerankRequest", __config__=config,
            __validators__={"_query_unicode": field_validator("query", "documents")(no_surrogates),
                            "_top_n_not_bool": field_validator("top_n", mode="before")(not_a_bool)},
            query=(str, _checked_text(chars, min_chars=1)),
            documents=(List[Union[str, document]], Field(  # type: ignore[valid-type]
                max_length=items, description=f"1 to {items} documents, strings or {{text}} objects, each at most {chars} characters",
                json_schema_extra={"minItems": 1, "maxItems": items})),
            # lax parsing read "top_n": true as 1 and "return_documents": "yes" as true; 1.0 stays an integer, as
            # JSON Schema's "integer" (what /openapi.json declares) has it
            top_n=(Optional[int], Field(default=None, ge=1)),
            return_documents=(StrictBool, False),
            model=(Optional[Literal[reranker_name]], Field(default=None, description="the served reranker's id")),  # type: ignore[valid-type]
        )
    return models
