"""The ``retrievals`` console script: each subcommand is its ``python -m retrievals.pipelines.<name>``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retrievals import AutoModelForEmbedding
from retrievals.pipelines import commands

from ..conftest import corpus_lines


def test_usage_and_unknown_commands(capsys):
    assert commands.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("embed", "rerank", "retrieve", "build-hn", "evaluate", "serve", "demo"):
        assert f"  {name} " in out
    assert commands.main([]) == 2
    assert commands.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_version_and_a_subcommands_help_name_the_command_as_typed(capsys):
    # "retrievals retrieve --help" printed "usage: retrievals [-h] ..."; "retrievals help retrieve" the general usage
    import sys

    import retrievals

    assert commands.main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"retrievals {retrievals.__version__}"
    program = sys.argv[0]
    for argv in (["retrieve", "--help"], ["help", "retrieve"]):
        with pytest.raises(SystemExit) as exit_:
            commands.main(argv)
        assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage: retrievals retrieve [-h]")
        assert sys.argv[0] == program


def test_subcommand_runs_the_pipeline(tiny_bert, tmp_path):
    data = tmp_path / "texts.txt"
    texts = corpus_lines(4)
    data.write_text("\n".join(texts) + "\n")
    out = tmp_path / "enc"
    assert commands.main(["embed", "--model_name_or_path", tiny_bert, "--output_dir", str(out), "--do_encode",
                          "--encode_data", str(data)]) == 0
    import numpy as np

    np.testing.assert_allclose(np.load(out / "embeddings.npy"), AutoModelForEmbedding.from_pretrained(tiny_bert).encode(texts),
                               atol=1e-6)
    assert commands.main(["build_hn", "--negative_number", "0", "--model_name_or_path", tiny_bert, "--input_file", "x",
                          "--output_file", str(tmp_path / "y")]) == 2  # same flags and exit codes as the module


def test_console_script_is_installed():
    exe = shutil.which("retrievals", path=str(Path(sys.executable).parent))
    if exe is None:
        if os.environ.get("CI"):  # CI installs from scratch: a missing script is a broken install
            pytest.fail("the retrievals console script is not installed")
        pytest.skip("the package was installed before the console script existed: reinstall (pip install -e .)")
    result = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--max_batch_tokens" in result.stdout


def test_one_spelling_per_concept_and_the_old_ones_still_work():
    """--reranker_name_or_path and --dtype everywhere; --rerank_model, --reranker_model and --model_dtype stay aliases."""
    from transformers import HfArgumentParser

    from retrievals.pipelines import build_hn, embed, rerank, retrieve, serve
    from retrievals.training.arguments import DataArguments

    def parse(classes, argv):
        return HfArgumentParser(classes).parse_args_into_dataclasses(args=argv)[0]

    for spelling in ("--reranker_name_or_path", "--reranker_model", "--rerank_model"):
        assert parse((retrieve.RetrieveArguments,), ["--output", "o", spelling, "R"]).reranker_name_or_path == "R"
        assert parse((build_hn.HardNegativeArguments,), ["--model_name_or_path", "m", "--input_file", "i",
                                                          "--output_file", "o", spelling, "R"]).reranker_name_or_path == "R"
        assert parse((serve.ServeArguments,), [spelling, "R"]).reranker_name_or_path == "R"
    for spelling in ("--dtype", "--model_dtype"):
        assert parse((serve.ServeArguments,), ["--model_name_or_path", "m", spelling, "bfloat16"]).dtype == "bfloat16"
        for module in (embed, rerank):
            classes = [c for c in (getattr(module, "EmbedModelArguments", None), getattr(module, "RerankModelArguments", None)) if c]
            args = parse((classes[0], DataArguments), ["--model_name_or_path", "m", spelling, "bfloat16"])
            assert args.dtype == "bfloat16" and args.loading_kwargs()["dtype"] == "bfloat16"


def test_only_user_errors_become_one_line(tiny_bert, train_file, tmp_path, monkeypatch, capsys):
    """A wrong flag is one ``error:`` line and exit code 2; a bug (any other exception) keeps its traceback."""
    from retrievals.pipelines import embed

    argv = ["--model_name_or_path", tiny_bert, "--train_data", train_file, "--output_dir", str(tmp_path / "o"), "--do_train"]
    assert embed.main(argv + ["--temperature", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --temperature must be a finite number > 0")

    def bug(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(embed, "train", bug)
    with pytest.raises(ValueError, match="internal invariant"):
        embed.main(argv)
