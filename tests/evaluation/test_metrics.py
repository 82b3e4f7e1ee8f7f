import random

import pytest

from retrievals.evaluation.metrics import evaluate_run
from retrievals.utils import UsageError

from ..conftest import needs

pytrec_eval = needs("pytrec_eval")


def trec(run, qrels, k):
    measures = {"map", "recip_rank", f"ndcg_cut.{k}", f"P.{k}", f"recall.{k}"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    mean = lambda key: sum(v[key] for v in per_query.values()) / len(per_query)  # noqa: E731
    cut = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k]) for q, docs in run.items()}
    rr_cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    return {"map": mean("map"), "mrr": mean("recip_rank"), f"ndcg@{k}": mean(f"ndcg_cut_{k}"), f"precision@{k}": mean(f"P_{k}"),
            f"recall@{k}": mean(f"recall_{k}"), f"mrr@{k}": sum(v["recip_rank"] for v in rr_cut.values()) / len(rr_cut)}


@pytest.mark.parametrize("seed", range(5))
def test_random_runs_match_trec_eval(seed):
    rng = random.Random(seed)
    qrels, run = {}, {}
    for q in range(20):
        docs = [f"d{i}" for i in range(50)]
        judged = rng.sample(docs, rng.randint(1, 8))
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 2, 3]) for d in judged}
        qrels[f"q{q}"][judged[0]] = max(1, qrels[f"q{q}"][judged[0]])
        run[f"q{q}"] = {d: float(rng.randint(0, 10)) for d in rng.sample(docs, rng.randint(1, 30))}  # many ties
    ours = evaluate_run(run, qrels, k_values=(10,))
    for key, value in trec(run, qrels, 10).items():
        assert ours[key] == pytest.approx(value, abs=1e-4), key


def test_edge_cases():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"x": 2}, "q3": {"n": 0}}
    run = {"q1": {"a": 0.9, "c": 0.5}}  # q2 not retrieved at all; q3 judged without a relevant doc: 0, as trec_eval
    ours = evaluate_run(run, qrels, k_values=(1, 10))
    theirs = trec({"q1": run["q1"], "q2": {"zzz": 0.0}, "q3": {"n": 0.3}}, qrels, 10)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-4), key
    assert ours["ndcg@10"] < 0.5  # nDCG counts the unretrieved positive b in the ideal ranking
    assert ours["hit@10"] == pytest.approx(1 / 3) and ours["hit@1"] <= 1.0


def test_ids_must_be_strings():
    """An int id never equals its string (every metric 0 without a word); mixed types cannot be ordered on a tie."""
    qrels = {"1": {"10": 1}}
    for run in ({1: {"10": 0.9}}, {"1": {10: 0.9, 11: 0.1}}, {"1": {10: 0.5, "11": 0.5}}):
        with pytest.raises(UsageError, match="is a int; ids are strings"):
            evaluate_run(run, qrels, (10,))
    with pytest.raises(UsageError, match="query id 1 is a int"):
        evaluate_run({"1": {"10": 0.9}}, {1: {"10": 1}}, (10,))
    with pytest.raises(TypeError, match="run must be a mapping"):
        evaluate_run(None, qrels, (10,))


def test_evaluate_embedder_map_uses_full_depth(tiny_bert):
    from retrievals import AutoModelForEmbedding
    from retrievals.evaluation import evaluate_embedder

    from ..conftest import corpus_lines

    lines = corpus_lines(40)
    corpus = {f"d{i}": t for i, t in enumerate(lines[:30])}
    queries = {f"q{i}": t for i, t in enumerate(lines[30:])}
    qrels = {q: {f"d{i}": 1} for i, q in enumerate(queries)}
    res = evaluate_embedder(AutoModelForEmbedding.from_pretrained(tiny_bert), corpus, queries, qrels, k_values=(1,))
    assert res["map"] >= res["mrr@1"] and res["map"] > 0  # every positive is within depth 30, so MAP > 0 for all
    assert res["recall@1"] <= 1.0


def test_corpus_and_qrels_readers_name_file_and_line(tmp_path):
    from retrievals.data.readers import DataError
    from retrievals.data.io import read_jsonl_texts, read_qrels

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "title": "Tax", "text": "card"}\n\n{"id": 2, "text": "renew"}\n')
    assert read_jsonl_texts(corpus) == {"d1": "Tax card", "2": "renew"}
    for bad, message in (('{"_id": "d3", "text": "ok"}\n{"_id": "d4"', "corpus.jsonl:2: invalid JSON"),
                         ('{"_id": "d3", "text": 5}\n', "corpus.jsonl:1: needs an '_id' (or 'id') and a string 'text'"),
                         ('["d3", "text"]\n', "corpus.jsonl:1: needs an '_id'")):
        corpus.write_text(bad)
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_jsonl_texts(corpus)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1 0 d2 2\n")
    assert read_qrels(qrels) == {"q1": {"d1": 1, "d2": 2}}
    qrels.write_text("q1 d1 yes\n")
    with pytest.raises(DataError, match="qrels.tsv:1: relevance 'yes' is not a number"):
        read_qrels(qrels)


def test_a_query_without_any_judgment_is_left_out_as_trec_eval_does():
    # an empty judgment dict (a corpus subset filtered the qrels) was a judged query scoring 0: every mean halved
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {}}
    run = {"q1": {"d1": 0.9, "d2": 0.5}, "q2": {"d1": 0.3}}
    ours = evaluate_run(run, qrels, k_values=(10,))
    for key, value in trec(run, qrels, 10).items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert ours["ndcg@10"] == 1.0 and ours["hit@10"] == 1.0
