import json

import pytest

from retrievals.data import DataError, EmbeddingCollator, TextIdsCollator, TrainDataset, load_records
from retrievals.data.dataset import sample_negatives

from ..conftest import needs


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_string_and_list_fields(tmp_path):
    f = write(tmp_path / "d.jsonl", [
        json.dumps({"query": "q1", "positive": "a single positive text", "negative": "one negative"}),
        json.dumps({"query": "q2", "positive": ["p1", "p2"], "negative": ["n1", "n2", "n3"]}),
    ])
    recs = load_records(f)
    assert recs[0].positives == ["a single positive text"]  # never split into characters
    assert recs[0].negatives == ["one negative"]
    assert recs[1].positives == ["p1", "p2"] and len(recs[1].negatives) == 3
    assert recs[1].origin.endswith("d.jsonl:2")


def test_custom_keys_json_array_and_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([{"q": "x", "pos": ["y"], "neg": []}]))
    write(folder / "b.jsonl", [json.dumps({"q": "z", "pos": "w"})])
    recs = load_records(str(folder), query_key="q", positive_key="pos", negative_key="neg")
    assert [r.query for r in recs] == ["x", "z"]


def test_datasets_dataset_source():
    datasets = needs("datasets")
    ds = datasets.Dataset.from_list([{"query": "q", "positive": ["p"], "negative": ["n"]}])
    assert load_records(ds)[0].negatives == ["n"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"positive": ["p"]}', "d.jsonl:2: missing field 'query'"),
        ('{"query": "q", "positive": []}', "d.jsonl:2: field 'positive' is empty"),
        ('{"query": "q", "positive": ""}', "d.jsonl:2: field 'positive' is empty"),
        ('{"query": "q", "positive": [1]}', "d.jsonl:2: field 'positive'[0] must be a string"),
        ('{"query": "q", "positive": ["p"], "negative": 3}', "d.jsonl:2: field 'negative' must be a string or a list"),
        ('{"query": "q", "positive": ["p"]', "d.jsonl:2: invalid JSON"),
        ('["not", "an", "object"]', "d.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_input_names_file_line_field(tmp_path, line, message):
    f = write(tmp_path / "d.jsonl", [json.dumps({"query": "ok", "positive": "ok"}), line])
    with pytest.raises(DataError) as err:
        load_records(f)
    assert message in str(err.value)


def test_missing_negatives_when_group_needs_them(tmp_path):
    f = write(tmp_path / "d.jsonl", [json.dumps({"query": "q", "positive": "p"})])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'negative' is missing \(found fields: \['positive', 'query'\]\) "
                                        r"but train_group_size"):
        load_records(f, min_negatives=1)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(str(tmp_path / "nope.jsonl"))


def test_group_sampling(tmp_path):
    import random

    rng = random.Random(0)
    assert sorted(sample_negatives(["a", "b", "c"], 3, rng)) == ["a", "b", "c"]  # without replacement
    short = sample_negatives(["a", "b"], 5, rng)
    assert len(short) == 5 and set(short) == {"a", "b"}  # with replacement when short
    f = write(tmp_path / "d.jsonl", [json.dumps({"query": f"q{i}", "positive": ["p1", "p2"], "negative": ["n1", "n2", "n3"]}) for i in range(4)])
    ds = TrainDataset(load_records(f), train_group_size=3, seed=1)
    item = ds[0]
    assert len(item["documents"]) == 3 and item["documents"][0] in {"p1", "p2"}
    assert len(set(item["documents"][1:])) == 2
    assert ds[0] == ds[0]  # deterministic for (seed, epoch, index)
    unfolded = TrainDataset(load_records(f), train_group_size=1, unfold_each_positive=True)
    assert len(unfolded) == 8 and [unfolded[i]["documents"][0] for i in range(2)] == ["p1", "p2"]


def test_collator_uses_model_tokenization(tiny_bert):
    from retrievals import AutoModelForEmbedding

    model = AutoModelForEmbedding.from_pretrained(tiny_bert, query_instruction="query: ", query_max_length=8)
    batch = EmbeddingCollator(model.processor)([{"query": "tax card " * 20, "documents": ["fee", "office time day"]}])
    assert batch["query"]["input_ids"].shape == (1, 8)
    assert batch["document"]["input_ids"].shape[0] == 2
    assert batch["query"]["input_ids"][0].tolist() == model.tokenize(["tax card " * 20], is_query=True)[0]


AIA_BDE_SAMPLE = """S:Section
P:Como peço o cartão?
R:No balcão.
VIN:Onde peço o cartão?
VUC:Onde peço o cartão?
VG1:Como solicito o cartão?
VG2:Como solicito o cartão?
P:Quanto custa?
R:Dez euros.
VG1:Quanto custa?
VG2:Qual é o preço?
VIN:Qual o custo?
"""


def test_aia_bde_query_tags_add_back_translations_without_changing_the_split(tmp_path):
    from retrievals.data.aia_bde import BACK_TRANSLATION_TAGS, QUERY_TAGS, parse_aia_bde, split_by_faq

    path = tmp_path / "aia.txt"
    path.write_text(AIA_BDE_SAMPLE, encoding="utf-8")
    plain = parse_aia_bde(path)
    assert [f.queries for f in plain] == [["Onde peço o cartão?", "Onde peço o cartão?"], ["Qual o custo?"]]  # as filed
    more = parse_aia_bde(path, QUERY_TAGS + BACK_TRANSLATION_TAGS)
    assert [f.queries for f in more] == [["Onde peço o cartão?", "Onde peço o cartão?", "Como solicito o cartão?"],
                                         ["Quanto custa?", "Qual é o preço?", "Qual o custo?"]]
    assert [f.document for f in more] == [f.document for f in plain]
    assert split_by_faq(more, 0.5, 3).train_faq_ids == split_by_faq(plain, 0.5, 3).train_faq_ids
    with pytest.raises(ValueError, match="unknown AIA-BDE query tags"):
        parse_aia_bde(path, ("VIN", "R"))


def test_dataset_hash_tells_apart_data_that_reads_alike_unescaped():
    # sections and texts were hashed unescaped: these pairs collided (an index records its corpus by this hash)
    from retrievals.data.io import dataset_hash

    assert dataset_hash({"d1": "x\nd2\ty"}, {}, {}) != dataset_hash({"d1": "x", "d2": "y"}, {}, {})
    assert dataset_hash({"d1": "a", "q1": "b"}, {}, {}) != dataset_hash({"d1": "a"}, {"q1": "b"}, {})
    assert dataset_hash({"d": "a"}, {"q": "b"}, {"q": {"d": 1}}) != dataset_hash({"d": "a"}, {"q": "b"}, {"q": {"d": 2}})
    assert dataset_hash({"b": "2", "a": "1"}, {}, {}) == dataset_hash({"a": "1", "b": "2"}, {}, {})  # order-free


def test_judged_queries_without_text_are_left_out_with_a_warning(tmp_path, caplog):
    # each counted as a query scoring 0 (a perfect run gave nDCG 0.5) and the report said "2 queries"
    from retrievals.data.io import load_beir, save_beir
    from retrievals.evaluation import evaluate_run

    save_beir(tmp_path, {"d1": "a", "d2": "b"}, {"q1": "a"}, {"q1": {"d1": 1}, "q2": {"d2": 1}})
    with caplog.at_level("WARNING"):
        corpus, queries, qrels = load_beir(tmp_path)
    assert qrels == {"q1": {"d1": 1}} and "judges 1 queries" in caplog.text and "'q2'" in caplog.text
    assert evaluate_run({"q1": {"d1": 1.0}}, qrels, (10,))["ndcg@10"] == 1.0


def test_negatives_equal_to_a_positive_are_dropped_with_one_warning(tmp_path, caplog):
    # scored as a negative of its own query, a positive held even a perfect embedder's loss at log 2
    f = write(tmp_path / "d.jsonl", [
        json.dumps({"query": "q1", "positive": "p", "negative": ["p", "n1"]}),
        json.dumps({"query": "q2", "positive": ["a", "b"], "negative": ["b", "n2", "a"]}),
        json.dumps({"query": "q3", "positive": "c", "negative": ["c "]}),  # another text: kept
    ])
    with caplog.at_level("WARNING", logger="retrievals"):
        records = load_records(f, min_negatives=1)
    assert [r.negatives for r in records] == [["n1"], ["n2"], ["c "]]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "dropped 3 negative(s) of 2 record(s)" in warnings[0]
    assert f"{f}:1 (1), {f}:2 (2)" in warnings[0]
    # a record left shorter than the group samples its negatives with repeats, as any short record does
    item = TrainDataset(records, train_group_size=4, seed=0)[0]
    assert item["documents"] == ["p", "n1", "n1", "n1"]
    # one left with none: the error of a record without negatives, saying why
    g = write(tmp_path / "e.jsonl", [json.dumps({"query": "q", "positive": "p", "negative": ["p", "p"]})])
    with pytest.raises(DataError, match=r"e.jsonl:1: field 'negative' is empty once its 2 negative\(s\) equal to a "
                                        r"positive are dropped but train_group_size needs 1"):
        load_records(g, min_negatives=1)
    assert load_records(g)[0].negatives == []  # no group to fill: read, with the warning


def test_train_dataset_names_a_bad_group_size_or_record():
    from retrievals.data import Record

    for bad in (2.5, True, "2"):
        with pytest.raises(TypeError, match=r"train_group_size .*must be an int"):
            TrainDataset([Record("q", ["p"], ["n"])], bad)
    with pytest.raises(ValueError, match="train_group_size .*must be >= 1, got 0"):
        TrainDataset([Record("q", ["p"], ["n"])], 0)
    with pytest.raises(ValueError, match=r"d.jsonl:3: query 'q' has no positive"):  # was an IndexError at its item
        TrainDataset([Record("q", ["p"], ["n"]), Record("q", [], ["n"], origin="d.jsonl:3")], 2)
    with pytest.raises(ValueError, match=r"records\[0\]: query 'q' has no negatives, but train_group_size 2 needs 1"):
        TrainDataset([Record("q", ["p"], [])], 2)
    assert TrainDataset([Record("q", ["p"], [])], 1)[0] == {"query": "q", "documents": ["p"]}
    with pytest.raises(TypeError, match=r"records\[0\] must be a Record"):
        TrainDataset([{"query": "q", "positive": ["p"]}], 1)


def test_collator_text_ids_are_equal_for_equal_texts():
    import hashlib

    import torch

    from retrievals.data.collator import hash_text_ids

    class Processor:  # the collator's processor contract, reduced to counting texts
        def tokenize(self, texts, is_query):
            return texts

        def pad(self, texts):
            return {"n": torch.tensor(len(texts))}

    items = [{"query": "q1", "documents": ["a", "n"]}, {"query": "q2", "documents": ["a", "m"]}]
    assert set(EmbeddingCollator(Processor())(items)) == {"query", "document"}  # off by default: model(**batch) works
    ids = TextIdsCollator(EmbeddingCollator(Processor()))(items)["document_text_ids"]
    assert ids.dtype == torch.long and ids.shape == (4,) and ids[0] == ids[2] and len(set(ids.tolist())) == 3
    # a digest, not Python's hash() (salted per process): every process gives a text the same id
    expected = int.from_bytes(hashlib.blake2b("a".encode(), digest_size=8).digest(), "little", signed=True)
    assert ids[0].item() == expected
    assert hash_text_ids(["\ud800"]).shape == (1,)  # a lone surrogate: still an id (the tokenizer names it)


def test_aia_bde_split_checks_its_fraction_and_counts_twin_faqs():
    # --test_fraction -0.3 swapped the sides, 0 crashed later in the metrics, 1.5 left nothing to train on; FAQs that
    # repeat another's text word for word can straddle the split (AIA-BDE v2.0 has five such pairs)
    import math

    from retrievals.data.aia_bde import FAQ, split_by_faq, twin_faqs
    from retrievals.utils import UsageError

    faqs = [FAQ(f"faq{i}", f"question {i % 6}", f"answer {i % 6}", [f"ask {i} a", f"ask {i} b"]) for i in range(8)]
    for fraction in (0, -0.3, 1, 1.5, math.nan, "0.3", True, 0.01):
        with pytest.raises(UsageError, match="test_fraction"):
            split_by_faq(faqs, fraction, 0)
    split = split_by_faq(faqs, 0.5, 5)  # seed 5: one pair straddles the split, one is held out whole
    groups = [("faq0", "faq6"), ("faq1", "faq7")]  # i % 6: 0 and 6, 1 and 7 share a document
    train = set(split.train_faq_ids)
    straddling = [g for g in groups if len(train & set(g)) == 1]
    whole = [g for g in groups if not train & set(g)]
    assert len(straddling) == len(whole) == 1
    assert twin_faqs(split) == {"twin_groups": 2, "straddling_groups": len(straddling),
                                "held_out_queries_with_a_training_twin": 2 * len(straddling),
                                "held_out_queries_with_a_held_out_twin": 4 * len(whole)}
    assert twin_faqs(split_by_faq(faqs[:6], 0.5, 1))["twin_groups"] == 0
