"""torchrun on CPU (gloo): cross-device negatives and the seed command with 2 processes."""

from pathlib import Path

import pytest
import torch

from retrievals import AutoModelForEmbedding

from .conftest import run_torchrun

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


def test_seed_command_two_processes(tiny_bert, train_file, tmp_path):
    out = tmp_path / "out"
    run_torchrun(2, "-m", "retrievals.pipelines.embed", "--output_dir", str(out), "--overwrite_output_dir",
             "--model_name_or_path", tiny_bert, "--do_train", "--train_data", train_file, "--positive_key", "positive",
             "--negative_key", "negative", "--learning_rate", "3e-5", "--fp16", "--num_train_epochs", "1",
             "--per_device_train_batch_size", "4", "--dataloader_drop_last", "True", "--query_max_length", "64",
             "--document_max_length", "512", "--train_group_size", "2", "--logging_steps", "100", "--temperature", "0.02",
             "--use_inbatch_neg", "true", "--negatives_cross_device", "true", "--report_to", "none")
    model = AutoModelForEmbedding.from_pretrained(str(out))
    assert model.encode("tax card").shape == (32,)
