"""The sparse (SPLADE) embedder, its inverted index, the FLOPS loss, and training/retrieval through the CLIs."""

import json

import numpy as np
import pytest
import torch

from retrievals.index import Index, SparseIndex
from retrievals.losses import FlopsRegularizedLoss, InfoNCELoss
from retrievals.models.sparse import SparseEmbedder

from ..conftest import corpus_lines

TEXTS = corpus_lines(9)


@pytest.fixture(scope="module")
def sparse_model(tiny_bert, tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sparse") / "m"
    SparseEmbedder.from_pretrained(tiny_bert, query_max_length=16, document_max_length=32).save_pretrained(folder)
    return str(folder)


def test_sparse_vectors_batched_equal_single_and_reload(sparse_model, tmp_path):
    model = SparseEmbedder.from_pretrained(sparse_model)
    batched = model.encode_sparse(TEXTS, batch_size=4)
    single = [model.encode_sparse(t) for t in TEXTS]
    assert all(v and min(v.values()) > 0 for v in batched)
    for a, b in zip(batched, single):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)
    dense = model.encode(TEXTS[:2])
    assert dense.shape == (2, model.embedding_dim) and dense.min() >= 0
    assert set(np.flatnonzero(dense[0]).tolist()) == set(batched[0])
    pruned = model.encode_sparse(TEXTS[0], top_k=3)
    assert len(pruned) == 3 and set(pruned) <= set(batched[0])
    assert min(pruned.values()) >= sorted(batched[0].values())[-3] - 1e-6
    model.save_pretrained(tmp_path / "again")
    again = SparseEmbedder.from_pretrained(str(tmp_path / "again")).encode_sparse(TEXTS)
    assert all(a.keys() == b.keys() for a, b in zip(again, batched))
    with pytest.raises(ValueError, match="holds a 'sparse' model"):
        from retrievals import AutoModelForEmbedding

        AutoModelForEmbedding.from_pretrained(sparse_model)


def test_sparse_index_scores_are_exact_dot_products(sparse_model, tmp_path):
    model = SparseEmbedder.from_pretrained(sparse_model)
    docs = model.encode(TEXTS, convert_to_tensor=True)
    queries = model.encode(TEXTS[:3], is_query=True, convert_to_tensor=True)
    index = SparseIndex(model.encode_sparse(TEXTS), [f"d{i}" for i in range(len(TEXTS))])
    scores, ids = index.search(model.encode_sparse(TEXTS[:3], is_query=True), 4)
    expected = queries @ docs.T
    for row in range(3):
        for score, doc in zip(scores[row], ids[row]):
            assert score == pytest.approx(float(expected[row, int(doc[1:])]), rel=1e-4)
        assert list(scores[row]) == sorted(scores[row], reverse=True)
    index.save(tmp_path / "idx")
    assert Index.load(tmp_path / "idx").search(queries[0], 4)[1] == index.search(queries[0], 4)[1]


def test_flops_regularizer_matches_hand_computed():
    q = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    d = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 1.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    base = InfoNCELoss(temperature=1.0)
    loss = FlopsRegularizedLoss(base, query_weight=0.1, document_weight=0.01)
    flops_q = 0.5 ** 2 + 0.0 + 2.0 ** 2  # mean weight per term, squared, summed
    flops_d = 0.75 ** 2 + 1.0 ** 2 + 0.5 ** 2
    assert loss(q, d).item() == pytest.approx(base(q, d).item() + 0.1 * flops_q + 0.01 * flops_d, rel=1e-6)
    assert loss.get_config_dict()["name"] == "flops"
    with pytest.raises(ValueError, match="must be >= 0"):
        FlopsRegularizedLoss(base, query_weight=-1)


def test_sparse_training_and_retrieval_through_the_clis(sparse_model, train_file, tmp_path):
    from retrievals.data.io import read_trec_run, save_beir
    from retrievals.pipelines import embed, retrieve

    from ..training.test_training import cli

    out = tmp_path / "trained"
    assert embed.main(cli(sparse_model, train_file, out, "--max_steps", "3", "--model_type", "sparse",
                          "--query_flops_weight", "1e-3")) == 0
    assert json.loads((out / "retrievals_config.json").read_text())["model_type"] == "sparse"
    record = json.loads((out / "retrievals_fingerprint.json").read_text())
    assert record["loss"]["name"] == "flops" and record["loss"]["loss"]["temperature"] == 1.0
    lines = corpus_lines(30)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:25] for i in range(5)},
              {f"q{i}": {f"d{i}": 1} for i in range(5)})
    run_file = tmp_path / "run.trec"
    assert retrieve.main(["--dataset", str(tmp_path / "beir"), "--model_name_or_path", str(out), "--index_type", "sparse",
                          "--top_k", "10", "--output", str(run_file)]) == 0
    run = read_trec_run(run_file)
    assert len(run) == 5 and all(len(docs) == 10 for docs in run.values())
    assert embed.main(cli(sparse_model, train_file, tmp_path / "x", "--model_type", "sparse", "--pooling_method", "mean")) == 2
