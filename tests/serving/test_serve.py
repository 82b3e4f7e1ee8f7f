"""The HTTP server, started as a subprocess on loopback with tiny saved models."""

import asyncio
import base64
import json
import time

import numpy as np
import pytest

from retrievals import AutoModelForEmbedding, AutoModelForRanking

from ..conftest import corpus_lines, needs, serve_subprocess

httpx = needs("httpx")
needs("fastapi")
needs("uvicorn")

TEXTS = corpus_lines(40)


@pytest.fixture(scope="module")
def models(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    emb = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_instruction="query: ")
    emb.save_pretrained(root / "emb")
    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=64)
    ranker.save_pretrained(root / "ce")
    return (AutoModelForEmbedding.from_pretrained(str(root / "emb")), AutoModelForRanking.from_pretrained(str(root / "ce")),
            root)


@pytest.fixture(scope="module")
def server(models):
    _, _, root = models
    with serve_subprocess("--model_name_or_path", str(root / "emb"), "--reranker_name_or_path", str(root / "ce"),
                          "--max_batch_size", "16", "--max_input_chars", "400", "--device", "cpu", threads=1) as (_, url):
        yield url


def test_health_models_info(server):
    assert httpx.get(server + "/health").json() == {"status": "ok", "reason": "ok", "queued_items": 0}
    models = httpx.get(server + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["emb", "ce"]
    assert all(isinstance(m["created"], int) and m["object"] == "model" for m in models["data"])  # OpenAI's Model
    info = httpx.get(server + "/info").json()
    assert info["embedding"]["config"]["pooling_method"] == "mean"
    assert info["embedding"]["config"]["query_instruction"] == "query: "
    assert info["reranker"]["config"]["model_type"] == "cross-encoder" and info["limits"]["max_batch_size"] == 16


def test_embeddings_equal_in_process_encode(server, models):
    emb = models[0]
    body = httpx.post(server + "/v1/embeddings", json={"input": TEXTS[:5], "model": "emb"}).json()
    assert body["object"] == "list" and body["model"] == "emb"
    n_tokens = sum(len(ids) for ids in emb.tokenize(TEXTS[:5]))
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    assert [d["index"] for d in body["data"]] == list(range(5))
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], emb.encode(TEXTS[:5]), atol=1e-5)

    b64 = httpx.post(server + "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, emb.encode(TEXTS[0]), atol=1e-5)

    query = httpx.post(server + "/v1/embeddings", json={"input": [TEXTS[1]], "input_type": "query"}).json()
    np.testing.assert_allclose(query["data"][0]["embedding"], emb.encode_queries([TEXTS[1]])[0], atol=1e-5)


def test_the_openai_client_works_against_it(server, models):
    openai = needs("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model="emb", input=TEXTS[:3])  # the client asks for base64 by default
    np.testing.assert_allclose([d.embedding for d in response.data], models[0].encode(TEXTS[:3]), atol=1e-5)
    assert response.usage.prompt_tokens > 0
    assert [(m.id, m.object, type(m.created)) for m in client.models.list()] == [("emb", "model", int), ("ce", "model", int)]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="a")


def test_rerank_equals_in_process_scores(server, models):
    ranker = models[1]
    docs = TEXTS[:6]
    body = httpx.post(server + "/v1/rerank", json={"query": TEXTS[10], "documents": docs, "top_n": 3,
                                                   "return_documents": True}).json()
    scores = ranker.compute_score([(TEXTS[10], d) for d in docs], normalize=True)
    best = sorted(range(6), key=lambda i: -scores[i])[:3]
    assert [r["index"] for r in body["results"]] == best
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [scores[i] for i in best], atol=1e-5)
    assert [r["document"]["text"] for r in body["results"]] == [docs[i] for i in best]
    alias = httpx.post(server + "/rerank", json={"query": TEXTS[10], "documents": [{"text": d} for d in docs]}).json()
    assert len(alias["results"]) == 6 and "document" not in alias["results"][0]
    assert [r["index"] for r in alias["results"]][:3] == best


@pytest.mark.parametrize("path, payload, status, words", [
    ("/v1/embeddings", b"{not json", 400, "json"),
    ("/v1/embeddings", {"model": "emb"}, 400, "input"),
    ("/v1/embeddings", {"input": 5}, 400, "input"),
    ("/v1/embeddings", {"input": []}, 400, "empty"),
    ("/v1/embeddings", {"input": ["a"] * 17}, 413, "at most 16"),
    ("/v1/embeddings", {"input": ["ok", "x" * 401]}, 413, "input[1]"),
    ("/v1/embeddings", {"input": "a", "model": "gpt-9"}, 404, "not served"),
    ("/v1/embeddings", {"input": "a", "dimensions": 7}, 400, "dimensions"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ("/v1/rerank", {"query": "q"}, 400, "documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n"),
    ("/v1/rerank", {"query": "q" * 401, "documents": ["a"]}, 413, "query"),
])
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, path, payload, status, words):
    if isinstance(payload, bytes):
        r = httpx.post(server + path, content=payload, headers={"content-type": "application/json"})
    else:
        r = httpx.post(server + path, json=payload)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words.lower() in error["message"].lower() and error["type"]
    assert httpx.post(server + "/v1/embeddings", json={"input": "still here"}).status_code == 200


def test_concurrent_clients_are_batched_without_errors(server, models):
    """A bounded load test on loopback: 48 clients x 4 requests, embeddings and rerank mixed."""
    before = httpx.get(server + "/info").json()["stats"]
    latencies, failures = [], []

    async def client(i: int, http) -> None:
        for j in range(4):
            if (i + j) % 2:
                path, payload = "/v1/embeddings", {"input": [TEXTS[(i + j) % 40], TEXTS[(i * 3 + j) % 40]]}
            else:
                path, payload = "/v1/rerank", {"query": TEXTS[i % 40], "documents": TEXTS[j : j + 3]}
            start = time.perf_counter()
            r = await http.post(server + path, json=payload)
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                failures.append(r.text)

    async def main() -> float:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            start = time.perf_counter()
            await asyncio.gather(*(client(i, http) for i in range(48)))
            return time.perf_counter() - start

    wall = asyncio.run(main())
    assert not failures, failures[:3]
    assert len(latencies) == 192
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    after = httpx.get(server + "/info").json()["stats"]
    jobs, calls = after["jobs"] - before["jobs"], after["model_calls"] - before["model_calls"]
    print(f"\nload test: 192 requests from 48 clients in {wall:.2f}s ({192 / wall:.1f} req/s); "
          f"latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
          f"{jobs} requests in {calls} model calls")
    assert jobs == 192 and calls < jobs  # requests arriving together shared model calls
    # a second look at correctness under load: the same answer as when alone
    body = httpx.post(server + "/v1/embeddings", json={"input": TEXTS[:2]}).json()
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], models[0].encode(TEXTS[:2]), atol=1e-5)
    assert json.dumps(after)  # stats stay JSON
