"""CPU backends (ONNX Runtime, OpenVINO) against torch on tiny random models: same outputs, graphs exported once,
saved graphs used, a cache that never serves another model's graph, and clear refusals."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from retrievals import AutoModelForEmbedding
from retrievals.models.backends import graphs
from retrievals.models.backends.onnx import OnnxBackend
from retrievals.models.backends.openvino import OpenVINOBackend
from retrievals.models.rankers import AutoModelForRanking, ColBERT, CrossEncoder
from retrievals.utils import UsageError, state_digest

from ..conftest import corpus_lines, needs

TEXTS = corpus_lines(12) + ["a", "tax"]  # 3 to 30 words, and one-word texts: every batch is padded
PAIRS = [(TEXTS[i], TEXTS[-1 - i]) for i in range(8)]
MANY_PAIRS = [(q, d) for q, d in zip(corpus_lines(40), reversed(corpus_lines(40)))]
BACKENDS = ["onnx", "openvino"]


def requires(backend: str) -> None:
    needs("onnxruntime"), needs("onnxscript")  # every graph starts as an ONNX export
    if backend == "openvino":
        needs("openvino")


@pytest.fixture(scope="module", autouse=True)
def backend_cache(tmp_path_factory):
    """One cache for the module (a graph exported by one test serves the next), none of the user's."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("retrievals-cache")
        patch.setenv("RETRIEVALS_CACHE", str(folder))
        yield folder


@pytest.fixture
def count_exports(monkeypatch):
    calls = []
    original = graphs.export_onnx
    monkeypatch.setattr(graphs, "export_onnx", lambda *a, **k: calls.append(a[1].kind) or original(*a, **k))
    return calls


@pytest.fixture(scope="module")
def cross_encoder_dir(tiny_bert, tmp_path_factory):
    """A tiny cross-encoder with a fixed head (a base folder gets a fresh head at every load), initialised wider
    than BERT's 0.02 so its scores differ between pairs (about 0.6 apart; at 0.02 they differ by 1e-4 and any
    ranking is noise), and a tokenizer that gives token type ids, as BERT's does (the test tokenizer leaves them out)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("ce")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig.from_pretrained(tiny_bert, initializer_range=0.3, num_labels=1)).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    tokenizer.save_pretrained(folder)
    return str(folder)


def encode_both(model) -> tuple:
    return model.encode(TEXTS, batch_size=4), np.stack([model.encode(t) for t in TEXTS])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_embedder_fp32_equals_torch(tiny_bert, backend, pooling):
    requires(backend)
    ref = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method=pooling, device="cpu")
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method=pooling, backend=backend)
    expected = ref.encode(TEXTS, batch_size=4)
    for got in encode_both(model):  # batched (padded) and one by one
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.allclose(np.linalg.norm(expected, axis=1), 1, atol=1e-5)
    assert state_digest(model) != state_digest(ref)  # index and shard caches keep the backends' vectors apart


def test_decoder_embedder_fp32_equals_torch(tiny_qwen):
    requires("onnx")  # left padding and position ids from the mask, through the graph
    ref = AutoModelForEmbedding.from_pretrained(tiny_qwen, device="cpu")
    model = AutoModelForEmbedding.from_pretrained(tiny_qwen, backend="onnx")
    assert model.backend_inputs() == ["input_ids", "attention_mask", "position_ids"]
    for got in encode_both(model):
        np.testing.assert_allclose(got, ref.encode(TEXTS, batch_size=4), atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_encoder_fp32_equals_torch(cross_encoder_dir, backend):
    requires(backend)
    ref = CrossEncoder.from_pretrained(cross_encoder_dir, device="cpu")
    model = AutoModelForRanking.from_pretrained(cross_encoder_dir, backend=backend)
    assert model.backend_inputs() == ["input_ids", "attention_mask", "token_type_ids"]
    expected = ref.compute_score(PAIRS, batch_size=3)
    np.testing.assert_allclose(model.compute_score(PAIRS, batch_size=3), expected, atol=1e-4)
    np.testing.assert_allclose([model.compute_score(p) for p in PAIRS], expected, atol=1e-4)
    assert [r.index for r in model.rerank(PAIRS[0][0], TEXTS)] == [r.index for r in ref.rerank(PAIRS[0][0], TEXTS)]


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_qwen"])
def test_onnx_runtime_gets_fused_kernels(model_fixture, request):
    """The graph ONNX Runtime runs has its fused attention and (skip) layer-norm kernels: its session optimizer
    does not recognise the dynamo export's attention (unfused, MiniLM encoded at 0.84x sentence-transformers'
    ONNX speed). The outputs are checked against torch by the tests above."""
    requires("onnx")
    import onnx

    model = AutoModelForEmbedding.from_pretrained(request.getfixturevalue(model_fixture), backend="onnx")
    graph = onnx.load(str(model.inference_backend.folder / "model.onnx"), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    assert ops & {"Attention", "MultiHeadAttention", "GroupQueryAttention"}, sorted(ops)
    assert ops & {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}, sorted(ops)
    if model_fixture == "tiny_bert":  # int8: the attention's query, key and value projections are int8 products
        int8 = AutoModelForEmbedding.from_pretrained(request.getfixturevalue(model_fixture), backend="onnx",
                                                     backend_precision="int8")
        graph = onnx.load(str(int8.inference_backend.folder / "model.onnx"), load_external_data=False).graph
        ops = [node.op_type for node in graph.node]
        layers = AutoConfig.from_pretrained(request.getfixturevalue(model_fixture)).num_hidden_layers
        assert "MultiHeadAttention" in ops and "Attention" not in ops, sorted(set(ops))
        assert ops.count("MatMulInteger") == 6 * layers  # q, k, v, output, and the two feed-forward products


def test_graphs_made_by_many_threads_at_once(tiny_bert, tmp_path, monkeypatch):
    """Four threads load a model with fp32 and int8 ONNX graphs into an empty cache at once: each precision's graph
    is fused its own way (the int8 pass swaps a step of onnxscript's pipeline while it runs) and every thread's model
    encodes as one loaded alone does (exports take turns: torch.export fails when two run at once)."""
    requires("onnx")
    import onnx
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("RETRIEVALS_CACHE", str(tmp_path / "cache"))
    precisions = ["fp32", "int8", "fp32", "int8"]

    def load(precision):
        model = AutoModelForEmbedding.from_pretrained(tiny_bert, backend="onnx", backend_precision=precision)
        graph = onnx.load(str(model.inference_backend.folder / "model.onnx"), load_external_data=False).graph
        return model.encode(TEXTS), {node.op_type for node in graph.node}

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(load, precisions))
    alone = {p: load(p)[0] for p in ("fp32", "int8")}
    for precision, (vectors, ops) in zip(precisions, results):
        np.testing.assert_allclose(vectors, alone[precision], atol=1e-6)
        assert ("Attention" in ops) == (precision == "fp32") and ("MultiHeadAttention" in ops) == (precision == "int8")


def wrong_fusion(optimize_for_ort):
    """A fusion pass that returns a graph computing something else: one weight matrix doubled."""
    import onnx_ir as ir

    def fuse(model):
        fused, counts = optimize_for_ort(model)
        name, value = next((n, v) for n, v in fused.graph.initializers.items() if len(v.const_value.shape) == 2)
        value.const_value = ir.tensor(2 * value.const_value.numpy(), name=name)
        return fused, counts
    return fuse


@pytest.mark.parametrize("failure", ["raises", "wrong outputs"])
def test_a_failed_fusion_keeps_the_export(tiny_bert, tmp_path, monkeypatch, caplog, failure):
    """An architecture onnxscript's fusion pass fails on, or fuses into a graph with other outputs, still runs:
    the unfused export, the same outputs as torch, and a warning."""
    requires("onnx")
    from onnxscript.rewriter import ort_fusions

    monkeypatch.setenv("RETRIEVALS_CACHE", str(tmp_path / "cache"))
    broken = (wrong_fusion(ort_fusions.optimize_for_ort) if failure == "wrong outputs"
              else lambda model: (_ for _ in ()).throw(ValueError("no pattern")))
    monkeypatch.setattr(ort_fusions, "optimize_for_ort", broken)
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, backend="onnx")
    expected = ("ValueError: the fused graph's outputs differ from the export's by" if failure == "wrong outputs"
                else "ValueError: no pattern")
    assert "ONNX Runtime fusions not used (" + expected in caplog.text
    np.testing.assert_allclose(model.encode(TEXTS), AutoModelForEmbedding.from_pretrained(tiny_bert, device="cpu").encode(TEXTS),
                               atol=1e-4)
    assert sorted(p.name for p in model.inference_backend.folder.iterdir()) == ["backend.json", "model.onnx", "model.onnx.data"]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = lambda x: np.argsort(np.argsort(x.ravel()))  # noqa: E731
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_is_close_and_ranks_alike(tiny_bert, cross_encoder_dir, backend):
    """Dynamic int8 quantization: embeddings within 0.05 of torch per coordinate of a unit vector, cross-encoder
    scores within half their spread across pairs, and rankings correlate (Spearman >= 0.95)."""
    requires(backend)
    ref = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", device="cpu")
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", backend=backend, backend_precision="int8")
    expected, got = ref.encode(TEXTS), model.encode(TEXTS)
    assert np.abs(got - expected).max() < 0.05
    assert spearman(got[:4] @ got[4:].T, expected[:4] @ expected[4:].T) >= 0.95
    ce_ref = CrossEncoder.from_pretrained(cross_encoder_dir, device="cpu")
    ce = CrossEncoder.from_pretrained(cross_encoder_dir, backend=backend, backend_precision="int8")
    scores, ce_expected = np.array(ce.compute_score(MANY_PAIRS)), np.array(ce_ref.compute_score(MANY_PAIRS))
    assert np.abs(scores - ce_expected).max() < 0.5 * ce_expected.std() and spearman(scores, ce_expected) >= 0.95


def test_bf16_is_openvino_only_and_close(tiny_bert):
    requires("openvino")
    with pytest.raises(UsageError, match="bf16.*not available with backend='onnx'"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, backend="onnx", backend_precision="bf16")
    try:
        model = AutoModelForEmbedding.from_pretrained(tiny_bert, backend="openvino", backend_precision="bf16")
    except UsageError as exc:  # a CPU without bf16 instructions is told so
        assert "no bf16 instructions" in str(exc)
        return
    ref = AutoModelForEmbedding.from_pretrained(tiny_bert, device="cpu")
    assert np.abs(model.encode(TEXTS) - ref.encode(TEXTS)).max() < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_graph_is_loaded_without_export(tiny_bert, tmp_path, backend, monkeypatch, count_exports):
    requires(backend)
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", device="cpu")
    model.save_pretrained(tmp_path / "m", backend=backend)
    recorded = json.loads((tmp_path / "m" / "retrievals_files.json").read_text())["files"]
    assert any(name.startswith(f"{backend}/model.") for name in recorded)  # checksummed with the weights
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "m").rglob("*"))
    monkeypatch.setenv("RETRIEVALS_CACHE", str(tmp_path / "empty-cache"))  # not served from the module's cache
    count_exports.clear()
    for cls in (OnnxBackend, OpenVINOBackend):
        monkeypatch.setattr(cls, "convert", classmethod(lambda *a: pytest.fail("converted again")))
    loaded = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"), backend=backend)
    assert count_exports == [] and not (tmp_path / "empty-cache").exists()
    assert loaded.inference_backend.folder == tmp_path / "m" / backend
    np.testing.assert_allclose(loaded.encode(TEXTS), model.encode(TEXTS), atol=1e-4)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "m").rglob("*")) == before
    loaded.save_pretrained(tmp_path / "again", backend=backend)  # copies the graph it runs: no export
    assert count_exports == [] and (tmp_path / "again" / backend / "backend.json").is_file()


def test_other_backend_of_a_saved_folder_goes_to_the_cache(tiny_bert, tmp_path, monkeypatch, count_exports):
    """OpenVINO from a folder holding an ONNX graph: converted from that graph into the cache, the folder untouched."""
    requires("openvino")
    AutoModelForEmbedding.from_pretrained(tiny_bert, device="cpu").save_pretrained(tmp_path / "m", backend="onnx")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "m").rglob("*"))
    monkeypatch.setenv("RETRIEVALS_CACHE", str(tmp_path / "cache"))
    count_exports.clear()
    model = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"), backend="openvino")
    assert count_exports == [] and model.inference_backend.folder.parent == tmp_path / "cache" / "backends"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "m").rglob("*")) == before


def test_a_saved_graph_of_an_older_format_is_not_used(tiny_bert, tmp_path, monkeypatch, caplog):
    """A folder saved by an older version (another graph format) still loads, through a new graph in the cache, with a
    warning that says how to update it; the folder is not touched."""
    requires("onnx")
    AutoModelForEmbedding.from_pretrained(tiny_bert, device="cpu").save_pretrained(tmp_path / "m", backend="onnx")
    key_file = tmp_path / "m" / "onnx" / "backend.json"
    key_file.write_text(json.dumps({**json.loads(key_file.read_text()), "format": 1}))
    before = {p: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    monkeypatch.setenv("RETRIEVALS_CACHE", str(tmp_path / "cache"))
    model = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"), backend="onnx")
    assert model.inference_backend.folder.parent == tmp_path / "cache" / "backends"
    assert "holds a graph in an older format (1;" in caplog.text and "backend='onnx') again" in caplog.text
    np.testing.assert_allclose(model.encode(TEXTS), AutoModelForEmbedding.from_pretrained(tiny_bert, device="cpu").encode(TEXTS),
                               atol=1e-4)
    assert {p: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()} == before


def test_cache_is_keyed_by_the_weights(tiny_bert, tmp_path, count_exports):
    """The same path saved again with other weights exports again and gives the new model's vectors."""
    requires("onnx")
    path = tmp_path / "model"
    first = AutoModelForEmbedding.from_pretrained(tiny_bert, device="cpu")
    first.save_pretrained(path)
    a = AutoModelForEmbedding.from_pretrained(str(path), backend="onnx").encode(TEXTS)
    AutoModelForEmbedding.from_pretrained(str(path), backend="onnx")  # same weights: served from the cache
    exports = len(count_exports)
    torch.manual_seed(1)
    with torch.no_grad():  # another tiny model: same architecture and config, other weights
        for parameter in first.backbone.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    first.save_pretrained(path)
    b = AutoModelForEmbedding.from_pretrained(str(path), backend="onnx").encode(TEXTS)
    assert len(count_exports) == exports + 1
    np.testing.assert_allclose(b, first.encode(TEXTS), atol=1e-4)
    assert np.abs(a - b).max() > 0.05


def test_refusals(tiny_bert, tmp_path):
    requires("onnx")
    for kwargs, message in [({"backend": "tensorrt"}, "Unknown backend 'tensorrt'"),
                            ({"backend": "onnx", "backend_precision": "fp8"}, "Unknown backend_precision 'fp8'"),
                            ({"backend_precision": "int8"}, "with torch, use dtype"),
                            ({"backend": "onnx", "device": "cuda"}, "runs on CPU"),
                            ({"backend": "onnx", "dtype": "bfloat16"}, "set backend_precision instead"),
                            ({"backend": "onnx", "use_lora": True}, "not LoRA adapters")]:
        with pytest.raises(UsageError, match=message):
            AutoModelForEmbedding.from_pretrained(tiny_bert, **kwargs)
    with pytest.raises(UsageError, match="not available for colbert models"):
        ColBERT.from_pretrained(tiny_bert, backend="onnx")
    from retrievals.models.sparse import SparseEmbedder

    SparseEmbedder.from_pretrained(tiny_bert).save_pretrained(tmp_path / "sparse")
    with pytest.raises(UsageError, match="not available for sparse models"):  # found through AutoModelForEmbedding
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "sparse"), backend="onnx")
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, backend="onnx")
    with pytest.raises(UsageError, match="cannot train"):
        model.train()
    batch = model.pad(model.tokenize(TEXTS[:2]))
    with pytest.raises(UsageError, match="inference only"):  # a training forward: gradients are asked for
        model(query=batch)
    for target in ("cuda", torch.bfloat16):
        with pytest.raises(UsageError, match="float32 graph on CPU"):
            model.to(target)
    with pytest.raises(UsageError, match="float32 graph on CPU"):
        model.cuda()
    assert model.to("cpu") is model and not model.training
    with pytest.raises(UsageError, match="cannot load other weights"):
        model.load_weights(tiny_bert)
    with pytest.raises(UsageError, match="Unknown backend"):
        model.save_pretrained(tmp_path / "x", backend="tflite")
    with pytest.raises(UsageError, match="with torch, use dtype"):
        model.save_pretrained(tmp_path / "x", backend_precision="int8")
    assert not (tmp_path / "x").exists()


def test_retrieve_cli_backend_flags(tiny_bert, tmp_path):
    requires("onnx")
    from retrievals.data.io import read_trec_run, save_beir
    from retrievals.pipelines import retrieve

    lines = corpus_lines(30)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)},
              {f"q{i}": " ".join(lines[i].split()[:4]) for i in range(0, 30, 5)}, {f"q{i}": {f"d{i}": 1} for i in range(0, 30, 5)})
    args = ["--dataset", str(tmp_path / "beir"), "--index_type", "exact", "--top_k", "5", "--model_name_or_path", tiny_bert,
            "--pooling_method", "mean"]
    assert retrieve.main(args + ["--output", str(tmp_path / "torch.trec"), "--device", "cpu"]) == 0
    assert retrieve.main(args + ["--output", str(tmp_path / "onnx.trec"), "--backend", "onnx"]) == 0
    torch_run, onnx_run = read_trec_run(tmp_path / "torch.trec"), read_trec_run(tmp_path / "onnx.trec")
    assert torch_run.keys() == onnx_run.keys()
    for query, docs in torch_run.items():
        assert [d for d in docs][:1] == [d for d in onnx_run[query]][:1]
        np.testing.assert_allclose([docs[d] for d in docs], [onnx_run[query][d] for d in onnx_run[query]], atol=1e-4)
    assert retrieve.main(args + ["--output", str(tmp_path / "x.trec"), "--backend", "onnx", "--backend_precision", "bf16"]) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedder_with_a_dense_layer_equals_torch(tiny_bert, tmp_path, backend):
    """The Dense layer runs after the graph, in the model's torch code, whatever the backend."""
    requires(backend)
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", device="cpu")
    model.fit_pca(TEXTS, TEXTS, dim=8)
    model.save_pretrained(tmp_path / "m")
    expected = model.encode(TEXTS, batch_size=4)
    for got in encode_both(AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"), backend=backend)):
        np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="fit_pca changes the model"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, backend=backend).fit_pca(TEXTS, TEXTS)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_saved_graph_folder_is_readable_as_the_umask_says(tiny_bert, tmp_path):
    # the cache entry was made by mkdtemp (0o700) and renamed, then copied into the saved model: owner-only
    requires("onnx")
    old = os.umask(0o022)
    try:
        model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
        with torch.no_grad():  # weights of its own: a graph this module's cache does not hold yet
            next(model.parameters()).add_(0.01)
        model.save_pretrained(tmp_path / "m", backend="onnx")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m" / "onnx").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "m" / "retrievals_config.json").stat().st_mode) == 0o644


def test_a_served_graph_keeps_its_weights_and_its_key(tiny_bert, tmp_path):
    # load_state_dict and half() were accepted: the old graph went on serving while state_digest (the key of
    # indexes and shard caches) named the new weights, so an index of old vectors passed for the new model's
    requires("onnx")
    served = AutoModelForEmbedding.from_pretrained(tiny_bert, backend="onnx")
    other = AutoModelForEmbedding.from_pretrained(tiny_bert, device="cpu")
    with torch.no_grad():
        for parameter in other.backbone.parameters():
            parameter.add_(0.1)
    for call in (lambda: served.load_state_dict(other.state_dict()), served.half, served.bfloat16, served.double,
                 lambda: served.type(torch.float16)):
        with pytest.raises(UsageError, match="runs the float32 graph of the weights it was loaded with"):
            call()
    assert all(p.dtype == torch.float32 for p in served.parameters())
    other.save_pretrained(tmp_path / "other")
    fresh = AutoModelForEmbedding.from_pretrained(str(tmp_path / "other"), backend="onnx")
    with torch.no_grad():  # the torch module changed behind the graph's back: its key is no longer the graph's own
        for mine, theirs in zip(served.backbone.parameters(), other.backbone.parameters()):
            mine.copy_(theirs)
    assert np.abs(served.encode(TEXTS) - fresh.encode(TEXTS)).max() > 0.05  # what runs is still the old graph
    assert state_digest(served) != state_digest(fresh)
    assert served.inference_backend.graph_id and served.inference_backend.graph_id != fresh.inference_backend.graph_id


def test_a_killed_exports_scratch_is_swept(tiny_bert, tmp_path, monkeypatch):
    # a killed export left .tmp-* (about twice the model) in the cache for good
    import socket
    import subprocess
    import sys

    requires("onnx")
    monkeypatch.setenv("RETRIEVALS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "backends"
    root.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    killed = root / f".tmp-{host}-{int(dead.stdout)}-abc"
    running = root / f".tmp-{host}-{os.getpid()}-abc"  # a live export's (this process stands for it)
    elsewhere = root / ".tmp-other-host-1-abc"
    for folder in (killed, running, elsewhere):
        (folder / "export").mkdir(parents=True)
        (folder / "export" / "model.onnx").write_bytes(b"half a graph")
    AutoModelForEmbedding.from_pretrained(tiny_bert, backend="onnx")
    assert not killed.exists() and running.exists() and elsewhere.exists()
    old = 2 * 24 * 3600
    os.utime(elsewhere, (elsewhere.stat().st_atime - old, elsewhere.stat().st_mtime - old))
    graphs.sweep_scratch(root)
    assert not elsewhere.exists() and running.exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-")] == [running.name]



def test_a_save_that_drops_a_shipped_graph_says_so(tiny_bert, tmp_path, caplog):
    requires("onnx")
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, device="cpu")
    model.save_pretrained(tmp_path / "m", backend="onnx")
    with caplog.at_level("WARNING"):
        model.save_pretrained(tmp_path / "m")
    assert "the onnx graph of the earlier save there is removed" in caplog.text
    assert not (tmp_path / "m" / "onnx").exists()
