"""Eval during training (--eval_data) and the training curve drawn into the run folder."""

import json

from retrievals.training.curve import CURVE_NAME, RUNNING_CURVE_NAME, curve_points, write_training_curve
from tests.conftest import needs


def test_eval_during_training_draws_the_curve(tiny_bert, train_file, tmp_path):
    needs("matplotlib")
    from retrievals.pipelines import embed
    from retrievals.training.output_dir import read_manifest

    out = tmp_path / "out"
    assert embed.main(["--model_name_or_path", tiny_bert, "--train_data", train_file, "--eval_data", train_file,
                       "--output_dir", str(out), "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2",
                       "--logging_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none",
                       "--train_group_size", "2"]) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [h for h in history if "eval_map" in h]
    assert [h["step"] for h in evals] == [2, 4] and all(0 < h["eval_mrr@10"] <= 1 for h in evals)
    assert (out / CURVE_NAME).read_bytes()[:4] == b"\x89PNG"
    assert not (out / RUNNING_CURVE_NAME).exists()  # drawn during the run, replaced by the final curve
    assert CURVE_NAME in read_manifest(out)["written"]  # ours: a later --overwrite_output_dir run may replace it
    points = curve_points(history)
    assert [s for s, _ in points["eval_ndcg@10"]] == [2, 4] and [s for s, _ in points["loss"]] == [1, 2, 3, 4]


def test_curve_points_keep_only_numbers_with_a_step():
    history = [{"loss": 1.5, "step": 1}, {"eval_ndcg@10": 0.5, "eval_map": 0.4, "step": 2},
               {"train_runtime": 3.0, "step": 2}, {"loss": float("nan"), "step": 3}, {"loss": "x", "step": 4}, {"loss": 2.0}]
    points = curve_points(history)
    assert points["loss"][0] == (1, 1.5) and len(points["loss"]) == 2  # nan kept (a diverged run shows), "x" and step-less not
    assert points["eval_ndcg@10"] == [(2, 0.5)] and "train_runtime" not in points


def test_nothing_to_draw_writes_nothing(tmp_path):
    assert write_training_curve([], tmp_path / CURVE_NAME) is None
    assert not (tmp_path / CURVE_NAME).exists()


def test_loss_only_curve(tmp_path):
    needs("matplotlib")
    path = write_training_curve([{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}], tmp_path / CURVE_NAME)
    assert path.read_bytes()[:4] == b"\x89PNG"
