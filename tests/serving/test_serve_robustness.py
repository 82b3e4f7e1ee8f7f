"""The server under load, faults and hostile input: the scheduler alone, the app in process (schemathesis),
a real uvicorn server in a thread (connections, mixed load, cancellation, deadlines, a full queue) and as
a subprocess (SIGTERM). Traffic stays on loopback; every loop is bounded."""

import asyncio
import json
import signal
import socket
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from retrievals import AutoModelForEmbedding, AutoModelForRanking

from ..conftest import corpus_lines, free_port, needs, serve_subprocess

httpx = needs("httpx")
needs("fastapi")
uvicorn = needs("uvicorn")
needs("prometheus_client")

from retrievals.serving.app import create_app  # noqa: E402
from retrievals.serving.scheduler import DeadlineExceeded, JobCancelled, QueueFull, Scheduler  # noqa: E402
from retrievals.serving.schemas import ServerLimits  # noqa: E402

TEXTS = corpus_lines(40)
LONG = " ".join(corpus_lines(400))  # thousands of tokens: many windows for a 64-token reranker


# ---------------------------------------------------------------- the scheduler alone


def test_scheduler_splits_long_jobs_and_lets_short_ones_in():
    calls = []
    gate = threading.Event()

    def fn(items):
        gate.wait(5)
        calls.append(list(items))
        return [x * 10 for x in items]

    s = Scheduler(max_batch_tokens=40, max_batch_items=8, max_wait_ms=0)
    long_job = s.submit("k", list(range(100)), [10] * 100, fn)
    time.sleep(0.05)  # the first call (4 items of the long job) is running, held by the gate
    short_job = s.submit("k", [1000], [10], fn)
    gate.set()
    assert short_job.future.result(5) == [10000]
    assert long_job.future.result(10) == [x * 10 for x in range(100)]
    assert all(len(c) <= 4 for c in calls)  # 4 items x 10 tokens fill the 40-token budget
    short_call = next(i for i, c in enumerate(calls) if 1000 in c)
    assert short_call <= 1  # the short job rode in the very next call, not after the 100 items
    s.close()


def test_scheduler_survives_failures_cancellations_and_deadlines():
    s = Scheduler(max_batch_tokens=100, max_batch_items=2, max_queue_items=50, max_wait_ms=0)

    def boom(items):
        raise RuntimeError("out of memory in this batch")

    bad = s.submit("bad", ["x"], [1], boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        bad.future.result(5)
    slow = s.submit("slow", list(range(40)), [1] * 40, lambda xs: time.sleep(0.05) or list(xs))
    slow.future.cancel()  # the waiter gave up: its results must not kill the worker
    late = s.submit("late", list(range(40)), [1] * 40, lambda xs: time.sleep(0.05) or list(xs), timeout_s=0.1)
    with pytest.raises(DeadlineExceeded):
        late.future.result(5)
    with pytest.raises(QueueFull):
        s.submit("k", list(range(60)), [1] * 60, lambda xs: xs)
    assert s.submit("ok", [1, 2], [1, 1], lambda xs: [x + 1 for x in xs]).future.result(5) == [2, 3]
    assert s.health() == (True, "ok") and s.stats["failed_calls"] == 1 and s.stats["dropped_items"] > 0
    pending = s.submit("slow", list(range(40)), [1] * 40, lambda xs: time.sleep(0.05) or list(xs))
    s.close()
    with pytest.raises(JobCancelled):
        pending.future.result(5)
    assert s.health()[0] is False  # the worker stopped: /health says so


# ---------------------------------------------------------------- the app in process


@pytest.fixture(scope="module")
def served(tiny_bert, tiny_qwen):
    emb = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_instruction="query: ")
    ce = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=64)
    llm = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=512)
    return emb, ce, llm


@pytest.fixture(scope="module")
def app(served):
    emb, ce, _ = served
    return create_app(emb, ce, "emb", "ce", ServerLimits(max_batch_size=16, max_input_chars=400, max_request_bytes=200_000))


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("body, status, words", [
    ('{"input": "a\\ud800b"}', 400, "nicode"),
    ('{"input": ["ok", "x\\udfff"]}', 400, "nicode"),
    ('{"query": "q\\ud800", "documents": ["a"]}', 400, "nicode"),
    (b'{"input": "caf\xe9"}', 400, "body"),  # not UTF-8
    ("[" * 150_000 + "]" * 150_000, 413, "bytes"),  # deep nesting, and too large
    ("[" * 20_000 + "]" * 20_000, 400, "body"),  # deep nesting within the byte limit
    ('{"input": ' + json.dumps(["a"] * 20) + "}", 413, "at most 16"),
    # a value that fits no member of a union: the error names the member's actual problem, not "input.str"
    ('{"input": [[1, 2, 3]]}', 400, "token-id input is not supported"),
    ('{"input": [1, 2]}', 400, "token-id input is not supported"),
    ('{"input": ["ok", 5]}', 400, "input[1]: Input should be a valid string"),
    ('{"input": ""}', 400, "input is empty"),  # refused like OpenAI's API does
    ('{"input": ["a", ""]}', 400, "input[1] is empty"),
    ('{"query": "", "documents": ["a"]}', 400, "query: String should have at least 1 character"),
    ('{"query": "q", "documents": [{"text": "' + "x" * 401 + '"}]}', 413, "documents[0].text: String should have at most 400"),
    ('{"query": "q", "documents": ["ok", {"text": "a\\ud800"}]}', 400, "documents[1].text"),
    ('{"query": "q", "documents": ["ok", {"txt": "a"}]}', 400, "documents[1].text: Field required"),
    ('{"query": "q", "documents": ["a"], "top_n": true}', 400, "top_n"),  # not read as 1
    ('{"query": "q", "documents": ["a"], "return_documents": "yes"}', 400, "return_documents"),
])
def test_hostile_bodies_get_the_error_envelope(client, body, status, words):
    path = "/v1/rerank" if "query" in str(body) else "/v1/embeddings"
    r = client.post(path, content=body if isinstance(body, bytes) else body.encode(),
                    headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_a_body_not_sent_as_json_or_over_the_limit_in_chunks_is_named(client):
    for headers in ({}, {"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}):
        r = client.post("/v1/embeddings", content=b'{"input": "a"}', headers=headers)  # what curl -d sends, say
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_content_type", r.text
    r = client.post("/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text

    def chunks():  # no Content-Length: the limit is found while the body is read
        yield b'{"input": "'
        yield b"a" * 300_000
        yield b'"}'

    r = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_framework_errors_use_the_envelope(client):
    for method, path, status in (("GET", "/nope", 404), ("GET", "/v1/embeddings", 405), ("DELETE", "/health", 405)):
        r = client.request(method, path)
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    r = client.post("/v1/embeddings", json={"input": "a", "model": "gpt-9"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_a_tokenizer_error_is_the_requests_fault(client, app, monkeypatch):
    def refuse(texts, is_query=False):
        raise ValueError("this tokenizer cannot take that text")

    monkeypatch.setattr(app.service.embedder, "tokenize", refuse)
    r = client.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "tokenizer_error"
    monkeypatch.undo()
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


def test_a_failed_model_call_is_a_500_that_keeps_its_cause_in_the_log(client, app, monkeypatch, caplog):
    """The exception's text can name the host's paths and devices: the client gets its type, the log its text."""
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory in /srv/private/model")

    monkeypatch.setattr(app.service.embedder, "encode_token_ids", fail)
    with caplog.at_level("WARNING", logger="retrievals"):
        r = client.post("/v1/embeddings", json={"input": "a text no earlier test sent"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
    assert "RuntimeError" in r.text and "/srv/private" not in r.text
    assert "/srv/private/model" in caplog.text
    monkeypatch.undo()
    assert client.post("/v1/embeddings", json={"input": "a text no earlier test sent"}).status_code == 200


def test_settings_that_fit_no_text_are_refused_when_the_server_is_built(tiny_qwen):
    # an LLM reranker whose max_length is under its own prompt answered every request with a 400 telling the
    # client to "raise max_length", which only the operator can
    from retrievals.utils import UsageError

    with pytest.raises(UsageError, match="these settings leave no room for any text: max_length=8"):
        AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=8)  # refused at load
    llm = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm")
    llm.retrieval_config.max_length = 8  # settings changed after the load: refused when the server is built
    with pytest.raises(UsageError, match="the served model cannot take any text with its settings: max_length=8"):
        create_app(None, llm, None, "llm")


def test_metrics_and_schema(client):
    client.post("/v1/embeddings", json={"input": ["a", "b"]})
    text = client.get("/metrics").text
    for name in ("retrievals_queue_items", "retrievals_batch_tokens_bucket", "retrievals_request_seconds_bucket",
                 'retrievals_responses_total{endpoint="/v1/embeddings",status="200"}'):
        assert name in text, name
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "404", "413", "500", "503", "504"} <= set(post["responses"])
    request = json.dumps(schema["components"]["schemas"]["EmbeddingRequest"])
    assert '"maxItems": 16' in request and '"maxLength": 400' in request


def test_user_text_is_never_read_as_control_tokens(served):
    """A document spelling out a special token is text: no special token id appears in its tokens."""
    emb, ce, llm = served
    for model in (ce, llm):
        tok = model.tokenizer
        specials = set(tok.all_special_ids) - {tok.unk_token_id}  # an unknown character is no control token
        for token in tok.all_special_tokens:
            owners, units = model.pair_units([("query " + token, "document " + token + " end")])
            plain_owners, plain_units = model.pair_units([("query", "document end")])
            ids = units[0][0] if isinstance(units[0], tuple) else units[0]
            plain = plain_units[0][0] if isinstance(plain_units[0], tuple) else plain_units[0]
            assert sum(i in specials for i in ids) == sum(i in specials for i in plain), (type(model).__name__, token)
    for token in emb.tokenizer.all_special_tokens:
        ids = emb.tokenize(["text " + token])[0]
        control = set(emb.tokenizer.all_special_ids) - {emb.tokenizer.unk_token_id}
        assert sum(i in control for i in ids) == 2, token  # only [CLS] and [SEP] of the template


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_nothing(app, mode):
    """Schemathesis (driven through hypothesis here: its pytest loader does not run under pytest 9) sends
    examples built from /openapi.json to every operation: no 500, statuses and bodies as declared,
    schema-invalid requests rejected (negative mode), schema-valid ones accepted (positive mode)."""
    schemathesis = needs("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation.modes import GenerationMode

    from schemathesis.config import SchemathesisConfig

    # 413 is how this API rejects a request over its declared limits (items, characters)
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": [400, 401, 403, 404, 406, 413, 422, 428]}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/embeddings", "/v1/rerank", "/health", "/metrics"}
    for operation in operations:
        if mode == "negative" and operation.method.upper() != "POST":
            continue  # a GET without parameters has no invalid request to build
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        def check(case):
            case.call_and_validate()

        check()


def test_an_unhealthy_health_body_is_what_the_schema_declares(served):
    """/health's 503 body is the health body ({"status": "unhealthy", "reason", "queued_items"}), but /openapi.json
    declared the error envelope for it: a client generated from the schema could not read it."""
    schemathesis = needs("schemathesis")
    from fastapi.testclient import TestClient

    emb, _, _ = served
    app = create_app(emb, None, "emb")  # its own app: the shared one's worker must keep running
    with TestClient(app) as client:
        declared = client.get("/openapi.json").json()["paths"]["/health"]["get"]["responses"]
        app.service.scheduler.close(timeout_s=5)  # the worker stops: /health must say so
        r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unhealthy" and "worker" in r.json()["reason"], r.text
    assert declared["503"]["content"] == declared["200"]["content"]  # the same body, healthy or not
    schemathesis.openapi.from_asgi("/openapi.json", app)["/health"]["GET"].validate_response(r)  # raises if not


# ---------------------------------------------------------------- a real server in a thread


class ThreadServer:
    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


def test_a_500_keeps_the_connection(served, monkeypatch):
    emb, ce, _ = served
    app = create_app(emb, None, "emb")

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    with ThreadServer(app) as url:
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            def request(body: bytes) -> bytes:
                sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next(l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")).split(b":")[1])
                while len(rest) < length:
                    rest += sock.recv(65536)
                return head.split(b"\r\n")[0] + b" " + rest

            with monkeypatch.context() as patch:
                patch.setattr(app.service, "embeddings", broken)
                first = request(b'{"input": "a"}')
            assert first.startswith(b"HTTP/1.1 500") and b'"server_error"' in first
            assert request(b'{"input": "a"}').startswith(b"HTTP/1.1 200")  # same socket: not dropped


def test_short_requests_stay_fast_during_a_maximum_rerank(served):
    """Mixed load: a maximum-size rerank request (every document at the character limit, many windows
    each) runs while one-text embedding requests keep arriving; they answer within the bound, no errors."""
    emb, ce, _ = served
    limits = ServerLimits(max_batch_size=64, max_input_chars=len(LONG), max_batch_tokens=2048, max_queue_items=100_000)
    app = create_app(emb, ce, "emb", "ce", limits)
    with ThreadServer(app) as url:
        async def scenario():
            async with httpx.AsyncClient(timeout=120) as http:
                big = asyncio.ensure_future(http.post(url + "/v1/rerank", json={"query": TEXTS[0], "documents": [LONG] * 64}))
                await asyncio.sleep(1.0)  # let it tokenize and start
                assert not big.done(), "the long request should still be running"
                latencies = []
                for i in range(12):
                    start = time.perf_counter()
                    r = await http.post(url + "/v1/embeddings", json={"input": TEXTS[i]})
                    latencies.append(time.perf_counter() - start)
                    assert r.status_code == 200, r.text
                long_running = not big.done()
                response = await big
                return latencies, long_running, response

        latencies, overlapped, response = asyncio.run(scenario())
    assert response.status_code == 200 and len(response.json()["results"]) == 64
    print(f"\nshort requests during a maximum rerank: p50 {np.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms (overlapped: {overlapped})")
    assert overlapped and max(latencies) < 1.0


def test_disconnects_deadlines_and_a_full_queue(served):
    emb, ce, _ = served
    units = len(ce.pair_units([(TEXTS[0], LONG)])[1]) * 64  # one request's document windows
    limits = ServerLimits(max_batch_size=64, max_input_chars=len(LONG), max_batch_tokens=1024,
                          max_queue_items=int(units * 1.5), request_timeout_s=1.0)
    app = create_app(emb, ce, "emb", "ce", limits)
    service = app.service
    body = {"query": TEXTS[0], "documents": [LONG] * 64}
    with ThreadServer(app) as url:
        # a deadline: 504, and the rest of the work is dropped
        r = httpx.post(url + "/v1/rerank", json=body, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        dropped = service.scheduler.stats["dropped_items"]
        assert dropped > 0
        # a client that gives up: its work is dropped too
        limits.request_timeout_s = 0
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/rerank", json=body, timeout=0.5)
        deadline = time.monotonic() + 20  # the server is still tokenizing when the client leaves
        while service.scheduler.stats["dropped_items"] == dropped and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.scheduler.stats["dropped_items"] > dropped
        time.sleep(0.5)
        assert service.scheduler.queued_items() == 0
        # a full queue: 503 with Retry-After, while the first long request is still queued
        async def flood():
            async with httpx.AsyncClient(timeout=60) as http:
                first = asyncio.ensure_future(http.post(url + "/v1/rerank", json=body))
                await asyncio.sleep(1.0)
                second = await http.post(url + "/v1/rerank", json=body)
                first.cancel()
                return second

        second = asyncio.run(flood())
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "queue_full"
        assert httpx.get(url + "/health").json()["status"] == "ok"
        assert httpx.post(url + "/v1/embeddings", json={"input": "after all that"}).status_code == 200


# ---------------------------------------------------------------- a subprocess server and SIGTERM


@pytest.mark.slow
def test_sigterm_stops_within_the_shutdown_timeout(tiny_bert, tmp_path):
    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=64)
    ranker.save_pretrained(tmp_path / "ce")
    with serve_subprocess("--reranker_name_or_path", str(tmp_path / "ce"), "--max_input_chars", str(len(LONG)),
                          "--shutdown_timeout_s", "2", "--request_timeout_s", "0", "--max_queue_items", "100000") as (proc, url):
        result: Future = Future()

        def long_request():
            try:
                result.set_result(httpx.post(url + "/v1/rerank", json={"query": "q", "documents": [LONG] * 256}, timeout=120))
            except Exception as exc:  # noqa: BLE001 - the server may close the connection: that is the point
                result.set_result(exc)

        threading.Thread(target=long_request, daemon=True).start()
        time.sleep(2.0)
        assert proc.poll() is None and not result.done()
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - stopped
        print(f"\nSIGTERM with a long request in flight: exited in {took:.1f} s (code {proc.returncode})")
        assert took < 2 + 10  # the shutdown timeout, plus one model call and interpreter exit


def test_dimensions_are_served_for_trained_sizes(served):
    from fastapi.testclient import TestClient

    emb, _, _ = served
    emb.retrieval_config.matryoshka_dims = [32, 16]
    try:
        app = create_app(emb, None, "emb")
        with TestClient(app) as client:
            r = client.post("/v1/embeddings", json={"input": [TEXTS[0], TEXTS[1]], "dimensions": 16})
            assert r.status_code == 200, r.text
            vectors = np.array([d["embedding"] for d in r.json()["data"]])
            np.testing.assert_allclose(vectors, emb.encode([TEXTS[0], TEXTS[1]], truncate_dim=16), atol=1e-5)
            assert client.post("/v1/embeddings", json={"input": "a", "dimensions": 8}).status_code == 400
            prop = client.get("/openapi.json").json()["components"]["schemas"]["EmbeddingRequest"]["properties"]["dimensions"]
            enums = [option.get("enum") for option in prop.get("anyOf", [prop]) if option.get("enum")]
            assert enums and sorted(enums[0]) == [16, 32], prop
    finally:
        emb.retrieval_config.matryoshka_dims = []


def test_a_truncate_dim_in_the_config_is_a_served_size(tiny_bert):
    from fastapi.testclient import TestClient

    emb = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", truncate_dim=16)
    with TestClient(create_app(emb, None, "emb")) as client:
        default = client.post("/v1/embeddings", json={"input": TEXTS[0]}).json()["data"][0]["embedding"]
        asked = client.post("/v1/embeddings", json={"input": TEXTS[0], "dimensions": 16})
        assert asked.status_code == 200, asked.text
        assert len(default) == 16 and asked.json()["data"][0]["embedding"] == default
        full = client.post("/v1/embeddings", json={"input": TEXTS[0], "dimensions": emb.embedding_dim})
        assert full.status_code == 200 and len(full.json()["data"][0]["embedding"]) == emb.embedding_dim


def test_served_vectors_leave_the_instruction_out_of_pooling_as_encode_does(tiny_bert):
    """include_prompt=False: the server's token ids went through slices and the scheduler's batches, which once lost
    how many leading tokens are the instruction, so the served query vectors pooled it."""
    from fastapi.testclient import TestClient

    emb = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_instruction="query: ",
                                                include_prompt=False)
    with TestClient(create_app(emb, None, "emb")) as client:
        r = client.post("/v1/embeddings", json={"input": TEXTS[:3], "input_type": "query"})
        assert r.status_code == 200, r.text
        served = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(served, emb.encode_queries(TEXTS[:3]), atol=1e-5)
    pooled = emb.encode(["query: " + t for t in TEXTS[:3]])  # what the server returned before
    assert np.abs(served - pooled).max() > 1e-3


def test_served_queries_of_an_inference_free_sparse_model_are_its_queries(tiny_bert):
    """Inference-free queries are term weights, not a forward pass: the server called the forward pass for them."""
    from fastapi.testclient import TestClient

    from retrievals.models.sparse import SparseEmbedder

    model = SparseEmbedder.from_pretrained(tiny_bert, query_max_length=16, document_max_length=32, query_inference_free=True)
    with TestClient(create_app(model, None, "sparse")) as client:
        for input_type, expected in (("query", model.encode_queries(TEXTS[:2])), ("document", model.encode(TEXTS[:2]))):
            r = client.post("/v1/embeddings", json={"input": TEXTS[:2], "input_type": input_type})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], expected, atol=1e-5)


def test_a_request_larger_than_the_queue_gets_413_not_a_retry_forever(served):
    """More document windows than the queue ever holds: 503 + Retry-After would be answered the same way forever."""
    from fastapi.testclient import TestClient

    from retrievals.serving.scheduler import JobTooLarge

    _, ce, _ = served
    windows = len(ce.pair_units([(TEXTS[0], LONG)])[1])
    limits = ServerLimits(max_batch_size=4, max_input_chars=len(LONG), max_queue_items=max(4, windows - 1))
    with TestClient(create_app(None, ce, None, "ce", limits)) as client:
        r = client.post("/v1/rerank", json={"query": TEXTS[0], "documents": [LONG]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_items", r.text
        assert "max_queue_items" in r.json()["error"]["message"] and "retry-after" not in r.headers
        assert client.post("/v1/rerank", json={"query": TEXTS[0], "documents": [TEXTS[1]]}).status_code == 200
    s = Scheduler(max_batch_tokens=100, max_batch_items=2, max_queue_items=5, max_wait_ms=0)
    with pytest.raises(JobTooLarge, match="at most 5"):
        s.submit("k", list(range(6)), [1] * 6, lambda xs: xs)
    s.close()
    with pytest.raises(Exception, match="max_queue_items .* must be >= max_batch_size"):
        ServerLimits(max_batch_size=64, max_queue_items=32)


def test_relevance_scores_stay_within_the_declared_range(tiny_bert):
    """The schema declares relevance_score in [0, 1]; ColBERT's normalised (cos + 1) / 2 came back as 1.0000001 for a
    document equal to the query (float32 rounding in a batch), a body a client validating by the schema refuses."""
    from fastapi.testclient import TestClient

    from retrievals.serving.schemas import RerankResponse

    colbert = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", max_length=64, colbert_dim=-1)
    with TestClient(create_app(None, colbert, None, "colbert")) as client:
        r = client.post("/v1/rerank", json={"query": TEXTS[4], "documents": TEXTS[:16]})
    assert r.status_code == 200, r.text
    scores = [row["relevance_score"] for row in r.json()["results"]]
    assert all(0.0 <= s <= 1.0 for s in scores), max(scores)
    assert r.json()["results"][0] == {"index": 4, "relevance_score": 1.0}  # the query itself, still first
    RerankResponse.model_validate(r.json())  # raises if a score is out of range


def test_rerank_ranks_by_the_raw_scores_when_their_sigmoids_tie(tiny_bert):
    # the server sorted by relevance_score (float32 sigmoid, exactly 1.0 above about 17): a confident model's or an
    # LLM's strong documents came back in the order they were sent, and top_n=1 gave the first one sent
    from fastapi.testclient import TestClient

    from ..models.rankers.test_rankers import confident_cross_encoder

    ce = confident_cross_encoder(tiny_bert)
    docs = corpus_lines(8)
    raw = ce.compute_score([("tax card", d) for d in docs])
    best_first = sorted(range(len(docs)), key=lambda i: -raw[i])
    assert best_first != list(range(len(docs))) and len(set(raw)) == len(docs)
    with TestClient(create_app(None, ce, None, "ce")) as client:
        body = client.post("/v1/rerank", json={"query": "tax card", "documents": docs}).json()
        assert [r["index"] for r in body["results"]] == best_first
        assert [r["relevance_score"] for r in body["results"]] == [1.0] * len(docs)
        top = client.post("/v1/rerank", json={"query": "tax card", "documents": docs, "top_n": 1}).json()
        assert [r["index"] for r in top["results"]] == best_first[:1]


@pytest.mark.parametrize("path, field, bad", [("/v1/embeddings", "input", "x\udfff"), ("/v1/embeddings", "input", 7),
                                              ("/v1/rerank", "documents", "x\udfff"), ("/v1/rerank", "documents", 7)])
def test_too_many_items_are_refused_before_any_item_is_read(client, path, field, bad):
    # the count was checked after every item had been validated (the surrogate check encodes each): a body within
    # max_request_bytes of millions of tiny items held the event loop for seconds before its 413. An item past the
    # limit that is itself bad shows which check came first.
    body = {field: ["ok"] * 16 + [bad]} | ({"query": "q"} if path == "/v1/rerank" else {})
    response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["message"] == (f"{field} has 17 items; this server takes at most 16 per request "
                                                   "(--max_batch_size)")


def test_info_names_an_adapters_base_without_its_host_path(tiny_bert, tmp_path):
    # /info sent every client the absolute path of a LoRA model's base (500 bodies hide exception texts for that reason)
    needs("peft")
    from fastapi.testclient import TestClient

    tuned = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", use_lora=True)
    tuned.save_pretrained(tmp_path / "adapter")
    served = AutoModelForEmbedding.from_pretrained(str(tmp_path / "adapter"))
    assert served.retrieval_config.lora_base == tiny_bert  # the model itself keeps the path it loads from
    with TestClient(create_app(served, None, "emb")) as client:
        response = client.get("/info")
    assert response.json()["embedding"]["config"]["lora_base"] == tiny_bert.rstrip("/").rsplit("/", 1)[-1]
    assert str(tmp_path) not in response.text and tiny_bert not in response.text


@pytest.mark.parametrize("stall_s", [0.05, 0.0])
def test_health_reports_a_stalled_model_call_and_stall_s_0_turns_that_off(tiny_bert, stall_s):
    # nothing tested the stall report; and stall_s=0 was accepted but made every busy moment "unhealthy" (a
    # liveness probe would restart a healthy server under load), where 0 means "off" for --request_timeout_s
    from fastapi.testclient import TestClient

    emb = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    started, release, original = threading.Event(), threading.Event(), emb.encode_token_ids

    def blocked(*args, **kwargs):
        started.set()
        release.wait(30)
        return original(*args, **kwargs)

    emb.encode_token_ids = blocked
    with TestClient(create_app(emb, None, "emb", limits=ServerLimits(stall_s=stall_s))) as client:
        call = threading.Thread(target=lambda: client.post("/v1/embeddings", json={"input": "tax fee"}))
        call.start()
        try:
            assert started.wait(30)
            time.sleep(0.1)  # the call has now run longer than 0.05 s
            health = client.get("/health")
        finally:
            release.set()
            call.join(30)
        after = client.get("/health")
    if stall_s:
        assert health.status_code == 503 and "model call has been running" in health.json()["reason"]
    else:
        assert health.status_code == 200, health.json()
    assert after.status_code == 200
