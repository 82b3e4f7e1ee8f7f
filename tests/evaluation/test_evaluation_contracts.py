"""Input contracts of the evaluation functions, and ties that must not favour the relevant documents."""

import math

import numpy as np
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


def test_relevance_scores_and_rerank_settings_are_checked():
    # a nan or 0.5 relevance was taken (not relevant / a gain of 0.5, while read_qrels and trec_eval take whole
    # numbers), "1" failed in a comparison; a score past float's range was an unnamed OverflowError; rerank_run's
    # keep_rest="no" kept the rest, first_stage_weight=True was "weights[1]", and run=None an AttributeError
    from retrievals.evaluation import evaluate_run, rerank_run

    run = {"q": {"a": 2.0, "b": 1.0}}
    for relevance in (float("nan"), 0.5, "1", True, None):
        with pytest.raises(UsageError, match=r"qrels\['q'\]\['a'\] is .*: relevance must be a whole number"):
            evaluate_run(run, {"q": {"a": relevance}})
    assert evaluate_run(run, {"q": {"a": np.int64(1), "b": -1}}, (1,))["ndcg@1"] == 1.0
    assert evaluate_run(run, {"q": {"a": 1.0, "b": np.float64(0.0)}}, (1,))["ndcg@1"] == 1.0  # a pandas column
    for score in (10 ** 400, "2.0", True):
        with pytest.raises(UsageError, match=r"run\['q'\]\['a'\] is .*: scores must be finite numbers"):
            evaluate_run({"q": {"a": score}}, {"q": {"a": 1}})

    class Ranker:
        def compute_score(self, pairs, **kwargs):
            return [float(len(d)) for _, d in pairs]

    corpus, queries = {"a": "x", "b": "yy"}, {"q": "question"}
    with pytest.raises(TypeError, match="keep_rest must be True or False"):
        rerank_run(Ranker(), corpus, queries, run, top_k=1, keep_rest="no")
    for weight, error in ((True, TypeError), ("0.5", TypeError), (float("nan"), UsageError), (1.5, UsageError)):
        with pytest.raises(error, match="first_stage_weight"):
            rerank_run(Ranker(), corpus, queries, run, first_stage_weight=weight)
    with pytest.raises(TypeError, match="run must be a mapping"):
        rerank_run(Ranker(), corpus, queries, None)
    assert rerank_run(Ranker(), corpus, queries, run, top_k=1, keep_rest=np.bool_(False)) == {"q": {"a": 1.0}}
