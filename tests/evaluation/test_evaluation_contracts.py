"""Input contracts of the evaluation functions, and ties that must not favour the relevant documents."""

import math

import pytest

from retrievals.data.readers import Record
from retrievals.evaluation import evaluate_run, rerank_run
from retrievals.evaluation.reranking import evaluate_reranking, score_candidates
from retrievals.evaluation.retrieval import evaluate_embedder
from retrievals.utils import UsageError


class Constant:
    """A ranker that cannot tell documents apart."""

    def compute_score(self, pairs, batch_size=32, show_progress_bar=False):
        return [0.0] * len(pairs)


class ByLength:
    def __init__(self):
        self.pairs = []

    def compute_score(self, pairs, batch_size=32, show_progress_bar=False):
        self.pairs += pairs
        return [float(len(d)) for _, d in pairs]


def test_reranking_ties_count_against_the_positives():
    # a constant scorer ranked its positive first on every tie (map 1.0): a tie is no win
    records = [Record(query="q", positives=["p"], negatives=["n1", "n2", "n3"])]
    got = evaluate_reranking(Constant(), records, k_values=(1, 10))
    assert got["mrr@1"] == 0.0 and got["mrr@10"] == pytest.approx(1 / 4) and got["map"] == pytest.approx(1 / 4)
    # a scorer that separates them still gets full marks
    perfect = evaluate_reranking(ByLength(), [Record(query="q", positives=["a long one"], negatives=["x", "yy"])], (1,))
    assert perfect["mrr@1"] == 1.0 and perfect["map"] == 1.0


def test_score_candidates_takes_a_string_as_one_document():
    ranker = ByLength()
    assert score_candidates(ranker, "q", "abc") == [3.0]
    assert ranker.pairs == [("q", "abc")]
    with pytest.raises(TypeError, match="documents"):
        score_candidates(ranker, "q", None)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_run_scores_are_refused(bad):
    # a nan compares false both ways: the ranking (and every metric) depended on the order of the dict
    with pytest.raises(UsageError, match=r"run\['q1'\]\['a'\]"):
        evaluate_run({"q1": {"a": bad, "b": 0.5, "c": 0.1}}, {"q1": {"b": 1}}, (1,))


@pytest.mark.parametrize("k", [0, -1, 1.5, "10", None, True])
def test_bad_cutoffs_are_refused(k):
    with pytest.raises((UsageError, TypeError), match="k_values"):
        evaluate_run({"q1": {"a": 1.0}}, {"q1": {"a": 1}}, (1, k))


def test_empty_cutoffs_give_the_uncut_metrics():
    got = evaluate_run({"q1": {"a": 1.0, "b": 0.5}}, {"q1": {"b": 1}}, ())
    assert got == {"map": 0.5, "mrr": 0.5}


def test_evaluate_embedder_checks_its_cutoffs_before_encoding():
    class Never:
        def encode_corpus(self, *a, **k):
            raise AssertionError("encoded before the arguments were checked")

        encode_queries = encode_corpus

    for bad in ((0,), ("10",), 5):
        with pytest.raises((UsageError, TypeError), match="k_values"):
            evaluate_embedder(Never(), {"d": "t"}, {"q": "t"}, {"q": {"d": 1}}, k_values=bad)


def test_rerank_run_contract():
    corpus, queries, run = {"d1": "a", "d2": "bb"}, {"q1": "q"}, {"q1": {"d1": 0.9, "d2": 0.5}}
    with pytest.raises(UsageError, match="top_k"):
        rerank_run(ByLength(), corpus, queries, run, top_k=-1)
    with pytest.raises(UsageError, match="'q9'.*queries"):
        rerank_run(ByLength(), corpus, queries, {"q9": {"d1": 1.0}})
    with pytest.raises(UsageError, match="'d7'.*corpus"):
        rerank_run(ByLength(), corpus, queries, {"q1": {"d7": 1.0}})
    assert rerank_run(ByLength(), corpus, queries, run, top_k=0) == {"q1": {}}
