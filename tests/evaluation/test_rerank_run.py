"""rerank_run: the reranked list of each query's top k, optionally fused with the first stage's scores."""

import pytest

from retrievals.evaluation.retrieval import rerank_run
from retrievals.index import weighted_score_fusion
from retrievals.utils import UsageError

CORPUS = {f"d{i}": f"document {i}" for i in range(6)}
QUERIES = {"q1": "query one", "q2": "query two"}
FIRST = {"q1": {"d0": 0.9, "d1": 0.8, "d2": 0.7, "d3": 0.1}, "q2": {"d4": 0.5, "d5": 0.4}}


class Ranker:
    """Scores a document by its number: it prefers the first stage's last candidates."""

    def __init__(self):
        self.pairs = []

    def compute_score(self, pairs, batch_size=32, show_progress_bar=False):
        self.pairs += pairs
        return [float(doc.split()[-1]) for _, doc in pairs]


def test_reranks_only_the_top_k():
    ranker = Ranker()
    run = rerank_run(ranker, CORPUS, QUERIES, FIRST, top_k=3)
    assert run == {"q1": {"d0": 0.0, "d1": 1.0, "d2": 2.0}, "q2": {"d4": 4.0, "d5": 5.0}}
    assert len(ranker.pairs) == 5  # d3 (rank 4) is dropped, never scored


def test_first_stage_weight_fuses_normalised_scores():
    reranked = rerank_run(Ranker(), CORPUS, QUERIES, FIRST, top_k=3)
    top3 = {"q1": {"d0": 0.9, "d1": 0.8, "d2": 0.7}, "q2": FIRST["q2"]}
    for w in (0.25, 0.5, 0.75):
        fused = rerank_run(Ranker(), CORPUS, QUERIES, FIRST, top_k=3, first_stage_weight=w)
        assert fused == weighted_score_fusion([reranked, top3], weights=[1 - w, w])
    assert max(rerank_run(Ranker(), CORPUS, QUERIES, FIRST, top_k=3, first_stage_weight=1.0)["q1"].items(),
               key=lambda kv: kv[1])[0] == "d0"  # all weight on the first stage: its order back
    q1 = rerank_run(Ranker(), CORPUS, QUERIES, FIRST, top_k=3, first_stage_weight=0.5)["q1"]
    assert q1["d0"] == pytest.approx(0.5) and q1["d2"] == pytest.approx(0.5) and q1["d1"] == pytest.approx(0.5)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan")])
def test_weight_out_of_range_is_refused(weight):
    with pytest.raises(UsageError, match=r"first_stage_weight must be in \[0, 1\]"):
        rerank_run(Ranker(), CORPUS, QUERIES, FIRST, first_stage_weight=weight)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_first_stage_score_that_is_not_finite_is_refused(bad):
    # a nan first-stage score made the top k follow the run's dict order: arbitrary candidates, no error
    first = {"q1": {"d0": 0.9, "d1": bad, "d2": 0.7}}
    with pytest.raises(UsageError, match=r"run\['q1'\]\['d1'\] is .*: first-stage scores must be finite numbers"):
        rerank_run(Ranker(), CORPUS, QUERIES, first, top_k=2)


def test_cli_flag_is_checked_before_loading(tmp_path, capsys):
    from retrievals.pipelines import evaluate, retrieve

    assert evaluate.main(["--dataset", "aia-bde", "--output_dir", str(tmp_path / "r"), "--models", "a=/nope",
                          "--rerank_first_stage_weight", "2"]) == 2
    assert "--rerank_first_stage_weight must be in [0, 1]" in capsys.readouterr().err
    assert retrieve.main(["--output", str(tmp_path / "r.trec"), "--rerank_first_stage_weight", "-1"]) == 2
    assert "--rerank_first_stage_weight must be in [0, 1]" in capsys.readouterr().err


def test_evaluate_retrieves_as_deep_as_the_rerankers_are_told(tiny_bert, tmp_path, monkeypatch):
    # the first stage stopped at 100 documents: "--rerank_top_k 140" reranked 100 and the report said 140
    from retrievals.data.io import save_beir
    from retrievals.pipelines import evaluate

    from ..conftest import corpus_lines

    lines = corpus_lines(150)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:20] for i in range(3)},
              {f"q{i}": {f"d{i}": 1} for i in range(3)})
    seen = []
    real = evaluate.rerank_run

    def spy(model, corpus, queries, run, top_k, **kwargs):
        seen.append(min(len(docs) for docs in run.values()))
        return real(model, corpus, queries, run, top_k=top_k, **kwargs)

    monkeypatch.setattr(evaluate, "rerank_run", spy)
    assert evaluate.main(["--dataset", str(tmp_path / "beir"), "--output_dir", str(tmp_path / "r"), "--models",
                          f"b={tiny_bert}", "--rerankers", f"ce={tiny_bert}", "--first_stage", "b",
                          "--rerank_top_k", "140"]) == 0
    assert seen == [140]  # was 100


def test_settings_that_change_nothing_are_said_and_a_nan_ratio_refused(tiny_bert, tmp_path, caplog):
    from retrievals.data.io import save_beir
    from retrievals.pipelines import build_hn, evaluate
    from retrievals.utils import UsageError

    from ..conftest import corpus_lines

    lines = corpus_lines(20)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {"q0": lines[0][:20]}, {"q0": {"d0": 1}})
    with caplog.at_level("WARNING"):
        assert evaluate.main(["--dataset", str(tmp_path / "beir"), "--output_dir", str(tmp_path / "r"), "--models",
                              f"b={tiny_bert}", "--first_stage", "b", "--fusion_weights", "1", "2"]) == 0
    assert "--first_stage is set but there are no --rerankers" in caplog.text
    assert "--fusion_weights is set but there are no --hybrids" in caplog.text
    for ratio in (float("nan"), float("inf"), float("-inf")):  # a negative ratio is a strict filter: allowed
        with pytest.raises(UsageError, match="false_negative_ratio"):
            build_hn.HardNegativeArguments(model_name_or_path="m", input_file="-", output_file="-", false_negative_ratio=ratio)


def test_keep_rest_follows_the_reranked_with_the_rest_in_first_stage_order():
    # the retrieve and evaluate CLIs keep the depth they retrieved: a reranker over the top 20 of a top-100 run
    # wrote 20 documents, so the recall@100 printed beside it was recall@20
    from retrievals.data.io import rank

    ranker = Ranker()
    run = rerank_run(ranker, CORPUS, QUERIES, FIRST, top_k=2, keep_rest=True)
    assert rank(run["q1"]) == ["d1", "d0", "d2", "d3"] and rank(run["q2"]) == ["d5", "d4"]
    assert run["q1"]["d2"] < run["q1"]["d0"] and len(ranker.pairs) == 4  # the rest below, never scored
    fused = rerank_run(Ranker(), CORPUS, QUERIES, FIRST, top_k=2, keep_rest=True, first_stage_weight=0.5)
    assert rank(fused["q1"])[2:] == ["d2", "d3"] and set(fused["q1"]) == set(FIRST["q1"])
