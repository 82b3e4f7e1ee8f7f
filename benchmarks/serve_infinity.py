"""Embedding server benchmark: our HTTP server vs Infinity (``infinity-emb``, torch engine), side by side in one run.

    .venv/bin/python benchmarks/serve_infinity.py [--rounds 3] [--requests 256] [--quick]
        [--infinity_bin /work/bench-venv/bin/infinity_emb] [--out benchmarks/results/serve_infinity.json]

Infinity lives in a venv of its own (its pins, transformers < 5 and sentence-transformers < 4, clash with ours):
see benchmarks/README.md. Same model folder (all-MiniLM-L6-v2 from PyPI, 256 tokens max, mean pooling, fp32), same
model batch size (32), CPU, loopback (127.0.0.1) only, offline. Each server runs as a subprocess on a free port,
only one at a time; the two take turns (ours, theirs, ours, theirs, ... for ``--rounds``) and each turn measures,
after a warm-up, with an async httpx client (closed loop: each client sends its next request when the last one is
answered):

* ``c1``, ``c8``, ``c32``: 1, 8 and 32 concurrent clients sending one AIA-BDE query (a short paraphrase question)
  per request: embeddings/s, p50 and p99 request latency;
* ``mixed``: one client sending ``--long_requests`` requests of 32 texts of about 256 tokens (FAQ documents)
  back to back while 8 clients send one-query requests: the one-text p50/p99 (how much short requests
  suffer behind long ones), the long requests' p50 and all embeddings/s.

Every load stops at ``--requests`` requests or ``--seconds`` seconds, whichever comes first. Reported: the best and
the median turn of each server, and ours/theirs for throughput (> 1: ours faster) and for p99 (< 1: ours lower).
Every server process (its whole process group) is killed at the end, also on errors and Ctrl-C. The defaults take
about 5 minutes on a 2-core CPU (each turn: ~6 s start, ~5 s warm-up, up to 3 x 8 s of loads and ~10-15 s of
mixed load); ``--quick`` (one round, 8 requests a load) about 30 s and checks the script, not the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from retrievals import __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402
from retrievals.data.aia_bde import parse_aia_bde  # noqa: E402
from timing import best_and_median  # noqa: E402  (benchmarks/timing.py, beside this script)

HOST, MODEL_NAME = "127.0.0.1", "minilm"
LONG_TOKENS, MIXED_SHORT_CLIENTS = 256, 8
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """One server subprocess in its own process group (so that workers it spawns die with it); use as a context
    manager: ``__exit__`` kills the group whatever happened."""

    def __init__(self, name: str, cmd: List[str], url: str, embed_path: str, log_dir: Path, env: Dict[str, str]) -> None:
        self.name, self.cmd, self.url, self.embed_url = name, cmd, url, url + embed_path
        self.log = log_dir / f"{name}.log"
        self.env, self.proc = env, None
        self.startup_s = None

    def __enter__(self) -> "Server":
        start = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        try:
            self._wait_healthy(start)
        except BaseException:
            self.stop()
            raise
        self.startup_s = round(time.perf_counter() - start, 1)
        return self

    def _wait_healthy(self, start: float, timeout: float = 300.0) -> None:
        import httpx

        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode} while starting:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} server not healthy after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.is_file() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def percentile_ms(latencies: List[float], q: float) -> Optional[float]:
    return round(float(np.percentile(latencies, q)) * 1000, 1) if latencies else None


async def closed_loop(http, url: str, make_body: Callable[[int], dict], clients: int, max_requests: int,
                      deadline: float, stop: Optional[asyncio.Event] = None) -> dict:
    """``clients`` concurrent clients, each sending its next request when the last one is answered, until
    ``max_requests`` are sent, ``deadline`` (perf_counter) passes or ``stop`` is set."""
    latencies: List[float] = []
    state = {"sent": 0, "texts": 0, "errors": 0, "first_error": None}

    async def client() -> None:
        while state["sent"] < max_requests and time.perf_counter() < deadline and not (stop and stop.is_set()):
            body = make_body(state["sent"])
            state["sent"] += 1
            start = time.perf_counter()
            try:
                r = await http.post(url, json=body)
                ok = r.status_code == 200 and len(r.json()["data"]) == len(body["input"])
            except Exception as exc:  # noqa: BLE001 - counted, the load goes on
                ok, r = False, exc
            if ok:
                latencies.append(time.perf_counter() - start)
                state["texts"] += len(body["input"])
            else:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or str(getattr(r, "text", r))[:300]

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    return {"requests": len(latencies), "errors": state["errors"], "first_error": state["first_error"],
            "texts": state["texts"], "seconds": round(seconds, 2), "latencies": latencies}


def summary(run: dict) -> dict:
    lat = run.pop("latencies")
    return {**run, "emb_per_s": round(run["texts"] / run["seconds"], 2) if run["seconds"] else 0.0,
            "p50_ms": percentile_ms(lat, 50), "p99_ms": percentile_ms(lat, 99)}


async def measure(server: Server, short: List[str], long: List[str], opts) -> dict:
    """Warm-up, then every load against one running server."""
    import httpx

    def one_text(i: int) -> dict:
        return {"input": [short[i % len(short)]], "model": MODEL_NAME}

    def long_batch(i: int) -> dict:
        return {"input": [long[(i * opts.long_batch + j) % len(long)] for j in range(opts.long_batch)], "model": MODEL_NAME}

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    out: Dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=opts.request_timeout, limits=limits) as http:
        url = server.embed_url
        # warm-up: every request shape once, then a short concurrent burst (not measured)
        for body in (one_text(0), long_batch(0), {"input": short[:8], "model": MODEL_NAME}):
            r = await http.post(url, json=body)
            r.raise_for_status()
        await closed_loop(http, url, one_text, 8, opts.warmup, time.perf_counter() + opts.seconds)
        # the same texts from both servers, to check that they embed alike
        r = await http.post(url, json={"input": short[:8] + long[:2], "model": MODEL_NAME})
        r.raise_for_status()
        out["vectors"] = [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]

        for clients in (1, 8, 32):
            run = await closed_loop(http, url, one_text, clients, opts.requests, time.perf_counter() + opts.seconds)
            out[f"c{clients}"] = summary(run)

        # mixed: one client sends long batches back to back while MIXED_SHORT_CLIENTS send one text each
        deadline = time.perf_counter() + opts.seconds + opts.long_requests * opts.long_seconds
        done = asyncio.Event()

        async def long_client() -> dict:
            try:
                return await closed_loop(http, url, long_batch, 1, opts.long_requests, deadline)
            finally:
                done.set()

        start = time.perf_counter()
        long_run, short_run = await asyncio.gather(
            long_client(), closed_loop(http, url, one_text, MIXED_SHORT_CLIENTS, opts.mixed_requests, deadline, stop=done))
        seconds = time.perf_counter() - start
        texts = long_run["texts"] + short_run["texts"]
        long_lat = long_run["latencies"]
        short_s = summary(short_run)
        out["mixed"] = {"emb_per_s": round(texts / seconds, 2), "p50_ms": short_s["p50_ms"], "p99_ms": short_s["p99_ms"],
                        "short_requests": short_s["requests"], "long_requests": len(long_lat),
                        "long_p50_ms": percentile_ms(long_lat, 50), "errors": short_s["errors"] + long_run["errors"],
                        "first_error": short_s["first_error"] or long_run["first_error"], "seconds": round(seconds, 2)}
    return out


def long_texts(model_path: str, faqs, n: int, tokens: int) -> List[str]:
    """``n`` texts of about ``tokens`` tokens (special tokens included): consecutive FAQ documents joined, cut at the
    token where the model's tokenizer would truncate."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the joined documents run past 512 tokens before they are cut: no warning
    tok = AutoTokenizer.from_pretrained(model_path)
    docs = [f.document for f in faqs]
    texts, i = [], 0
    while len(texts) < n:
        text = ""
        while len(tok(text, add_special_tokens=False)["input_ids"]) < tokens:
            text = f"{text} {docs[i % len(docs)]}".strip()
            i += 1
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        texts.append(text[: offsets[tokens - 3][1]])  # tokens - 2 content tokens + [CLS] + [SEP]
    return texts


def package_versions(python: str, names: List[str]) -> Dict[str, Optional[str]]:
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    try:
        return json.loads(subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60).stdout)
    except Exception:  # noqa: BLE001 - versions are informative only
        return {n: None for n in names}


def min_cosine(a: List[List[float]], b: List[List[float]]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return round(float((x * y).sum(axis=1).min()), 6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="turns of each server (ours, theirs, ours, theirs, ...)")
    p.add_argument("--requests", type=int, default=256, help="most requests of each load (c1, c8, c32; mixed: short ones)")
    p.add_argument("--seconds", type=float, default=8.0, help="most seconds of each load")
    p.add_argument("--long_requests", type=int, default=3, help="long requests in the mixed load")
    p.add_argument("--long_batch", type=int, default=32, help="texts in a long request")
    p.add_argument("--long_seconds", type=float, default=10.0, help="time allowed per long request (mixed load)")
    p.add_argument("--warmup", type=int, default=32, help="one-text requests of the warm-up burst")
    p.add_argument("--batch_size", type=int, default=32, help="model batch size of both servers")
    p.add_argument("--request_timeout", type=float, default=120.0)
    p.add_argument("--python", default=sys.executable, help="python that runs our server")
    p.add_argument("--infinity_bin", default="/work/bench-venv/bin/infinity_emb")
    p.add_argument("--quick", action="store_true", help="tiny numbers: a smoke run of the script, not a measurement")
    p.add_argument("--out", default=None, help="default benchmarks/results/serve_infinity.json (--quick: a temp file)")
    opts = p.parse_args()
    if opts.quick:
        opts.rounds, opts.requests, opts.seconds, opts.warmup = 1, 8, 3.0, 4
        opts.long_requests, opts.long_batch = 1, 4
    opts.mixed_requests = opts.requests
    if opts.rounds < 1 or opts.requests < 1:
        p.error("--rounds and --requests must be >= 1")
    if not Path(opts.infinity_bin).is_file():
        p.error(f"{opts.infinity_bin} not found: install infinity-emb in its own venv (benchmarks/README.md)")
    out_path = Path(opts.out or (Path(tempfile.gettempdir()) / "serve_infinity_quick.json" if opts.quick
                                 else Path(__file__).parent / "results" / "serve_infinity.json"))

    model_path = str(fetch("all-MiniLM-L6-v2"))
    faqs = parse_aia_bde(fetch("aia-bde"))
    short = [q for f in faqs for q in f.queries]
    random.Random(0).shuffle(short)
    long = long_texts(model_path, faqs, max(opts.long_batch, 2) * max(opts.long_requests, 1), LONG_TOKENS)

    env = {**os.environ, **OFFLINE_ENV}
    src = str(Path(__file__).resolve().parents[1] / "src")
    ours_env = {**env, "PYTHONPATH": os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    theirs_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    log_dir = Path(tempfile.mkdtemp(prefix="serve-bench-"))

    def ours(port: int) -> Server:
        cmd = [opts.python, "-m", "retrievals.pipelines.serve", "--model_name_or_path", model_path,
               "--served_model_name", MODEL_NAME, "--host", HOST, "--port", str(port), "--device", "cpu",
               "--dtype", "float32", "--model_batch_size", str(opts.batch_size)]
        return Server("retrievals", cmd, f"http://{HOST}:{port}", "/v1/embeddings", log_dir, ours_env)

    def theirs(port: int) -> Server:
        # --no-vector-disk-cache: Infinity caches results by request in SQLite by default, which would answer the
        # repeated texts of a benchmark from disk; --no-model-warmup: both servers get the same warm-up from here
        cmd = [opts.infinity_bin, "v2", "--model-id", model_path, "--served-model-name", MODEL_NAME, "--engine", "torch",
               "--device", "cpu", "--dtype", "float32", "--batch-size", str(opts.batch_size), "--host", HOST,
               "--port", str(port), "--no-vector-disk-cache", "--no-model-warmup", "--log-level", "warning"]
        return Server("infinity", cmd, f"http://{HOST}:{port}", "/embeddings", log_dir, theirs_env)

    def on_signal(signum, frame):  # SIGTERM: unwind, so that the running server's __exit__ kills it
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    loads = ("c1", "c8", "c32", "mixed")
    turns: Dict[str, List[dict]] = {"retrievals": [], "infinity": []}
    startup: Dict[str, List[float]] = {"retrievals": [], "infinity": []}
    vectors: Dict[str, Any] = {}
    started = time.perf_counter()
    for rnd in range(opts.rounds):
        for name, make in (("retrievals", ours), ("infinity", theirs)):
            server = make(free_port())
            print(f"round {rnd + 1}/{opts.rounds}: {name} ...", flush=True)
            with server:
                result = asyncio.run(measure(server, short, long, opts))
                if server.proc.poll() is not None:
                    raise RuntimeError(f"{name} server died during the run:\n{server.tail()}")
            vectors[name] = result.pop("vectors")
            startup[name].append(server.startup_s)
            turns[name].append(result)
            print("  startup %.1f s; " % server.startup_s + "; ".join(
                f"{k} {result[k]['emb_per_s']} emb/s p50 {result[k]['p50_ms']} p99 {result[k]['p99_ms']} ms"
                f"{' ERRORS %d' % result[k]['errors'] if result[k]['errors'] else ''}" for k in loads), flush=True)

    summaries: Dict[str, Any] = {}
    for load in loads:
        s: Dict[str, Any] = {}
        for metric, best in (("emb_per_s", max), ("p50_ms", min), ("p99_ms", min)):
            values = {name: [t[load][metric] for t in turns[name] if t[load][metric] is not None] for name in turns}
            if all(values.values()):
                s[metric] = best_and_median(values, best=best)
        s["throughput_ratio"] = s.get("emb_per_s", {}).get("ratio")
        s["p99_ratio"] = s.get("p99_ms", {}).get("ratio")
        s["errors"] = {name: sum(t[load]["errors"] for t in turns[name]) for name in turns}
        if load == "mixed":
            s["long_p50_ms"] = {name: [t[load]["long_p50_ms"] for t in turns[name]] for name in turns}
        summaries[load] = s

    versions = {"retrievals": __version__, **package_versions(opts.python, ["torch", "transformers", "fastapi", "uvicorn"])}
    infinity_python = str(Path(opts.infinity_bin).with_name("python"))
    theirs_versions = package_versions(infinity_python, ["infinity-emb", "torch", "transformers", "sentence-transformers",
                                                         "fastapi", "uvicorn"])
    versions.update({"infinity-emb": theirs_versions.pop("infinity-emb"),
                     **{f"{k} (infinity venv)": v for k, v in theirs_versions.items()}})
    results = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(),
                    "processor": platform.processor() or None, "python": platform.python_version()},
        "versions": versions,
        "date": datetime.date.today().isoformat(),
        "quick": opts.quick,
        "settings": {
            "model": "all-MiniLM-L6-v2 (retrievals.assets, one folder for both)", "max_tokens": 256, "precision": "fp32",
            "device": "cpu", "model_batch_size": opts.batch_size, "rounds": opts.rounds, "requests_per_load": opts.requests,
            "seconds_per_load": opts.seconds, "short_texts": f"{len(short)} AIA-BDE queries, one per request, shuffled (seed 0)",
            "mixed": f"1 client x {opts.long_requests} requests of {opts.long_batch} texts of ~{LONG_TOKENS} tokens "
                     f"(FAQ documents) + {MIXED_SHORT_CLIENTS} one-text clients (at most {opts.mixed_requests} requests); "
                     "p50/p99 are the one-text requests'",
            "client": "httpx.AsyncClient, closed loop, loopback",
            "ours_cmd": " ".join(ours(0).cmd).replace(model_path, "MINILM").replace(opts.python, "python"),
            "theirs_cmd": " ".join(theirs(0).cmd).replace(model_path, "MINILM").replace(opts.infinity_bin, "infinity_emb"),
            "order": "ours, theirs, ours, theirs, ... one server running at a time; best and median turn"},
        "agreement_min_cosine": min_cosine(vectors["retrievals"], vectors["infinity"]),
        "startup_s": startup,
        "loads": summaries,
        "turns": turns,
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")

    def cell(load: str, metric: str, name: str) -> str:
        m = summaries[load].get(metric)
        return f"{m[name]} ({m['median'][name]})" if m else "-"

    print(f"\nall-MiniLM-L6-v2, CPU ({os.cpu_count()} cores), batch {opts.batch_size}, {opts.rounds} round(s): best (median)")
    print("| load | ours emb/s | infinity emb/s | ratio | ours p50 / p99 ms | infinity p50 / p99 ms | p99 ratio |")
    print("|---|---|---|---|---|---|---|")
    for load in loads:
        s = summaries[load]
        print(f"| {load} | {cell(load, 'emb_per_s', 'retrievals')} | {cell(load, 'emb_per_s', 'infinity')} | "
              f"{s['throughput_ratio']} | {cell(load, 'p50_ms', 'retrievals')} / {cell(load, 'p99_ms', 'retrievals')} | "
              f"{cell(load, 'p50_ms', 'infinity')} / {cell(load, 'p99_ms', 'infinity')} | {s['p99_ratio']} |")
    print(f"(mixed: one-text requests' latency beside long ones; smallest cosine between the two servers' vectors "
          f"{results['agreement_min_cosine']}; startup s {startup}; {results['wall_minutes']} min)")
    errors = {load: s["errors"] for load, s in summaries.items() if any(s["errors"].values())}
    if errors:
        print(f"ERRORS: {errors}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
