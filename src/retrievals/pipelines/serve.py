"""Serve an embedder and/or a reranker over HTTP: ``python -m retrievals.pipelines.serve --help``.

    python -m retrievals.pipelines.serve --model_name_or_path outputs/embed \\
        [--reranker_name_or_path outputs/rerank] --host 127.0.0.1 --port 8000

Any folder this library saves (or a plain transformers model) loads; see ``retrievals.serving.app``
for the endpoints. Needs ``pip install 'retrievals[server]'`` (FastAPI and uvicorn).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..utils import UsageError, at_least, require
from .cli import run_cli
from .model_flags import EmbedderFlags, RerankerFlags


@dataclass(kw_only=True)
class ServeArguments(EmbedderFlags, RerankerFlags):
    """--model_name_or_path: the embedder served at /v1/embeddings; --reranker_name_or_path: the reranker at /v1/rerank."""

    served_model_name: Optional[str] = field(default=None, metadata={"help": "Embedder id in requests (default: folder name)."})
    served_reranker_name: Optional[str] = field(default=None, metadata={"help": "Reranker id in requests (default: folder name)."})
    host: str = field(default="127.0.0.1")
    port: int = field(default=8000)
    max_batch_size: int = field(default=256, metadata={"help": "Most inputs (or documents) in one request."})
    max_input_chars: int = field(default=20000, metadata={"help": "Most characters in one input text."})
    model_batch_size: int = field(default=32, metadata={"help": "Batch size of model calls."})
    max_wait_ms: float = field(default=2.0, metadata={"help": "How long a model call waits for other requests to join."})
    max_batch_tokens: int = field(default=2048, metadata={"help": "Most padded tokens in one model call (longest x inputs): "
                                                                  "long requests run as many calls, short ones slip in between."})
    max_queue_items: int = field(default=8192, metadata={"help": "Texts or document windows waiting; beyond, 503 + Retry-After."})
    request_timeout_s: float = field(default=60.0, metadata={"help": "Per-request deadline: past it, 504 and its work is "
                                                                     "dropped (0: none)."})
    max_request_bytes: int = field(default=64 * 1024 * 1024, metadata={"help": "Larger request bodies get 413."})
    shutdown_timeout_s: float = field(default=10.0, metadata={"help": "On SIGTERM/SIGINT: stop accepting, let requests in "
                                                                      "flight finish this long, cancel the rest, exit."})
    stall_s: float = field(default=120.0, metadata={"help": "/health reports unhealthy when one model call runs longer "
                                                               "(0: never for that)."})

    def __post_init__(self) -> None:
        for flag in ("max_batch_size", "max_input_chars", "model_batch_size", "max_batch_tokens", "max_queue_items",
                     "max_request_bytes"):
            at_least(f"--{flag}", getattr(self, flag), 1)
        for flag in ("request_timeout_s", "shutdown_timeout_s", "stall_s"):
            if not getattr(self, flag) >= 0:
                raise UsageError(f"--{flag} must be >= 0, got {getattr(self, flag)}.")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be in [0, 65535], got {self.port}.")
        if not self.max_wait_ms >= 0:
            raise UsageError(f"--max_wait_ms must be >= 0, got {self.max_wait_ms}.")


def build_app(a: ServeArguments):
    """Load the models and make the FastAPI app."""
    from ..serving.app import ServerLimits, create_app

    if not (a.model_name_or_path or a.reranker_name_or_path):
        raise UsageError("pass --model_name_or_path (an embedder), --reranker_name_or_path (a reranker), or both")
    embedder = a.load_embedder()
    reranker = a.load_reranker()
    limits = ServerLimits(max_batch_size=a.max_batch_size, max_input_chars=a.max_input_chars,
                          model_batch_size=a.model_batch_size, max_wait_ms=a.max_wait_ms, max_batch_tokens=a.max_batch_tokens,
                          max_queue_items=a.max_queue_items, request_timeout_s=a.request_timeout_s,
                          max_request_bytes=a.max_request_bytes, stall_s=a.stall_s)
    return create_app(embedder, reranker,
                      a.served_model_name or (Path(a.model_name_or_path).name if a.model_name_or_path else None),
                      a.served_reranker_name or (Path(a.reranker_name_or_path).name if a.reranker_name_or_path else None),
                      limits)


def _main(a: ServeArguments) -> None:
    uvicorn = require("uvicorn", "server")
    app = build_app(a)
    # uvicorn handles SIGTERM/SIGINT: it stops accepting, waits up to the timeout for requests in flight, then
    # cancels them (their queued work is dropped) and runs the app's shutdown, which stops the scheduler.
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=a.shutdown_timeout_s,
                lifespan="on")


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli([ServeArguments], _main, argv)


if __name__ == "__main__":
    sys.exit(main())
