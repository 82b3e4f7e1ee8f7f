"""torchrun on CPU (gloo): cross-device negatives and the seed command with 2 processes."""

import json
from pathlib import Path

import pytest
import torch

from retrievals import AutoModelForEmbedding

from ..conftest import run_torchrun, seed_embed_command

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def test_cross_device_gradients_match_single_process(tiny_bert, tmp_path):
    run_torchrun(1, str(HERE / "dist_grad_check.py"), tiny_bert, str(tmp_path / "one.pt"))
    run_torchrun(2, str(HERE / "dist_grad_check.py"), tiny_bert, str(tmp_path / "two.pt"))
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and len(one) > 10
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert sum(g.abs().sum() for g in one.values()) > 0


def test_colbert_cross_device_negatives_match_single_process(tiny_bert, tmp_path):
    """Rerankers share negatives across processes too: ColBERT's late-interaction loss, token vectors padded
    to a common length before gathering."""
    from retrievals import AutoModelForRanking

    AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=16, max_length=32).save_pretrained(tmp_path / "cb")
    run_torchrun(1, str(HERE / "dist_grad_check.py"), str(tmp_path / "cb"), str(tmp_path / "one.pt"), "colbert")
    run_torchrun(2, str(HERE / "dist_grad_check.py"), str(tmp_path / "cb"), str(tmp_path / "two.pt"), "colbert")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and any("colbert_linear" in n for n in one)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert sum(g.abs().sum() for g in one.values()) > 0


def test_seed_command_two_processes(tiny_bert, train_file, tmp_path):
    out = tmp_path / "out"
    run_torchrun(2, *seed_embed_command(tiny_bert, train_file, out, num_train_epochs="1", per_device_train_batch_size="4",
                                        use_inbatch_neg="true", negatives_cross_device="true", report_to="none"))
    model = AutoModelForEmbedding.from_pretrained(str(out))
    assert model.encode("tax card").shape == (32,)
    # one data-parallel run: 32 records in global batches of 2 x 4 (on CPUs each process used to run a training of
    # its own over every record, the same batches on both, rank 0's model saved)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_retrieve_encodes_shards_across_two_processes(tiny_bert, tmp_path):
    from retrievals.data.io import read_trec_run, save_beir

    from ..conftest import corpus_lines

    lines = corpus_lines(50)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:20] for i in range(5)},
              {f"q{i}": {f"d{i}": 1} for i in range(5)})
    common = ["--dataset", str(tmp_path / "beir"), "--model_name_or_path", tiny_bert, "--pooling_method", "mean",
              "--index_type", "exact", "--top_k", "10", "--shard_size", "10"]
    run_torchrun(2, "-m", "retrievals.pipelines.retrieve", *common, "--output", str(tmp_path / "two.trec"),
                 "--cache_dir", str(tmp_path / "cache2"))
    assert len(list((tmp_path / "cache2").rglob("shard-*.npy"))) == 5
    from retrievals.pipelines import retrieve

    assert retrieve.main([*common, "--output", str(tmp_path / "one.trec")]) == 0
    one, two = read_trec_run(tmp_path / "one.trec"), read_trec_run(tmp_path / "two.trec")
    assert one.keys() == two.keys()
    for q in one:
        assert list(one[q]) == list(two[q])


def test_encode_is_split_across_processes(tiny_bert, tmp_path):
    # the main process encoded everything while the others waited in a barrier with a timeout (--ddp_timeout): a long
    # corpus killed the job; now each encodes its part and the main process writes them in order
    import numpy as np

    from ..conftest import corpus_lines

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(corpus_lines(9)) + "\n")
    common = ["-m", "retrievals.pipelines.embed", "--model_name_or_path", tiny_bert, "--pooling_method", "mean",
              "--do_encode", "--encode_data", str(texts), "--encode_batch_size", "2"]
    run_torchrun(2, *common, "--output_dir", str(tmp_path / "two"))
    expected = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean").encode(corpus_lines(9))
    np.testing.assert_allclose(np.load(tmp_path / "two" / "embeddings.npy"), expected, atol=1e-5)
