"""`python -m lmrun train` and `python -m lmrun generate` end to end on the seconds-long 'tiny' config:
train, resume, already done, generate, TensorBoard logs, clear errors, fine-tuning with frozen layers.

The first training run and the fine-tuning run are real subprocesses; the other invocations call the same
`main(argv)` in this process (what `python -m` runs), which saves TensorFlow's start-up time.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import main

from lmkit import optim
from lmrun import cli, configs, generate, runs

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
TINY = ["--config", "tiny", "--no-progress", "--no-jit"]


def run_module(module, *args, expect=0, timeout=240):
    """Runs `python -m module args` from the repository root; returns the process after checking its exit code."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == expect, (
        f"`{module} {' '.join(map(str, args))}` exited {proc.returncode}, expected "
        f"{expect}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory trained by the CLI for 20 steps, and the output of that run."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = run_module("lmrun", "train", *TINY, "--run-dir", run_dir, "--sample-tokens", 20)
    return run_dir, proc.stdout


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_every_flag_has_help():
    for parser in (cli.build_parser(), generate.build_parser()):
        for action in parser._actions:
            assert action.help and len(action.help) > 10, f"{parser.prog}: {action.option_strings} has no help"
    out = run_module("lmrun", "train", "--help").stdout
    for flag in (
        "--model",
        "--config",
        "--preset",
        "--corpus",
        "--steps",
        "--run-dir",
        "--optimizer",
        "--init-from",
        "--freeze",
        "--strategy",
        "--overwrite",
    ):
        assert flag in out


def test_train_writes_a_complete_run_directory(trained):
    run_dir, out = trained
    assert "starting from scratch" in out
    assert "done: step 20 | val loss" in out and "val perplexity" in out and "tokens/s" in out
    assert "sample:\nThe " in out
    for name in ("config.json", "tokenizer.json", "history.jsonl", "ckpt/checkpoint", "best/checkpoint"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))


def test_tensorboard_logs_hold_scalars_and_samples(trained):
    import tensorflow as tf

    run_dir, _ = trained
    tags = set()
    for path in (run_dir / "logs").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    expected = {
        "train/loss",
        "train/perplexity",
        "train/grad_norm",
        "train/lr",
        "train/tokens_per_sec",
        "val/loss",
        "val/perplexity",
        "sample",
    }
    assert expected <= tags, f"missing TensorBoard tags: {expected - tags}"


def test_rerun_says_done_then_extends_and_generate_reads_the_run(trained, tmp_path, capsys):
    run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)  # the fixture's run stays as it is for the other tests
    again, _ = main(capsys, cli, *TINY, "--run-dir", copy, "--sample-tokens", 0)
    assert "restored from step 20" in again and "already trained to step 20 of 20" in again
    more, _ = main(capsys, cli, *TINY, "--run-dir", copy, "--sample-tokens", 0, "--steps", 24)
    assert "restored from step 20" in more and "done: step 24" in more
    first, _ = main(capsys, generate, "--run-dir", copy, "--max-new-tokens", 30, "--seed", 3)
    second, _ = main(capsys, generate, "--run-dir", copy, "--max-new-tokens", 30, "--seed", 3, "--checkpoint", "latest")
    assert first.startswith("The ") and len(first.rstrip("\n")) == len("The ") + 30, repr(first)
    assert second == first  # val loss still falls at step 24, so the best checkpoint is the latest; same seed
    _, missing = main(capsys, generate, "--run-dir", tmp_path / "nothing", expect=2)
    assert "not a run directory" in missing


def test_another_model_or_config_in_a_run_directory_is_a_clear_error(trained, capsys):
    run_dir, _ = trained
    _, other = main(capsys, cli, *TINY, "--run-dir", run_dir, "--model", "lstm", expect=2)
    assert "holds a run of another model or config" in other
    assert "model: 'lstm' here, 'transformer' in the run" in other
    assert "--run-dir" in other and "--overwrite" in other
    _, wider = main(capsys, cli, *TINY, "--run-dir", run_dir, "--d-model", 64, expect=2)
    assert "model_config.d_model: 64 here, 32 in the run" in wider


def test_overwrite_starts_again(tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(capsys, cli, *TINY, "--run-dir", run_dir, "--steps", 2, "--eval-every", 2, "--sample-tokens", 0)
    out, _ = main(
        capsys,
        cli,
        *TINY,
        "--run-dir",
        run_dir,
        "--model",
        "rnn",
        "--overwrite",
        "--steps",
        2,
        "--eval-every",
        2,
        "--sample-tokens",
        0,
    )
    assert "starting from scratch" in out and "done: step 2" in out
    assert '"model": "rnn"' in (run_dir / "config.json").read_text()


def test_corpus_too_small_for_one_batch_is_a_clear_error(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text("A short text.\n" * 4)
    _, err = main(capsys, cli, *TINY, "--corpus", corpus, "--run-dir", tmp_path / "run", expect=2)
    assert "too small for one batch" in err and "--batch-size" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_fine_tuning_keeps_frozen_weights_unchanged(trained, tmp_path):
    run_dir, _ = trained
    corpus = tmp_path / "other.txt"
    corpus.write_text("def add(x, y):\n    return x + y\n\n" * 200)
    tuned = tmp_path / "tuned"
    out = run_module(
        "lmrun",
        "train",
        *TINY,
        "--init-from",
        run_dir,
        "--corpus",
        corpus,
        "--freeze",
        "embeddings",
        1,
        "--run-dir",
        tuned,
        "--sample-tokens",
        0,
        "--steps",
        10,
        "--eval-every",
        10,
    ).stdout
    assert f"fine-tuning: starting at step 0 from the best weights of {run_dir}" in out and "frozen:" in out
    assert "starting from scratch" not in out and "(gpt2, " in out, out  # the source run's preset, not 'custom'
    source, _, _, _ = runs.load_run(run_dir, "best")
    result, _, config, _ = runs.load_run(tuned, "latest")
    assert config["init_from"] == str(run_dir) and config["freeze"] == {"embeddings": True, "first_layers": 1}
    changed = []
    for a, b in zip(source.variables, result.variables):
        name = a.path.split("/", 1)[1]
        if "embedding" in name or name.startswith("block_0/"):
            np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=f"frozen {name} changed")
        elif not np.array_equal(a.numpy(), b.numpy()):
            changed.append(name)
    assert any(name.startswith("block_1/") for name in changed), changed


@pytest.mark.parametrize("name", sorted(configs.CONFIGS))
def test_every_named_config_is_made_of_existing_options(name):
    """A misspelled setting would be dropped silently: every key must be a TrainConfig field, and the model build."""
    import dataclasses

    from lmkit.loop import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(configs.CONFIGS[name]["train"]) <= fields, set(configs.CONFIGS[name]["train"]) - fields
    settings = runs.resolve_settings(runs.RunRequest(config=name))
    model_config = runs.full_model_config("transformer", settings["model_config"], vocab_size=74)
    assert model_config["context_length"] == settings["train"]["seq_len"]
    assert TrainConfig.from_dict(settings["train"]).optimizer in optim.OPTIMIZERS


def test_lmrun_names_its_commands_and_refuses_an_unknown_one(capsys):
    from lmrun import __main__ as lmrun_main

    out, _ = main(capsys, lmrun_main, "--help")
    for command in ("train", "generate", "compare", "prepare", "data", "experiments"):
        assert f"python -m lmrun {command}" in out
    _, err = main(capsys, lmrun_main, "trian", expect=2)
    assert "unknown command 'trian'" in err and "train, generate" in err
    _, err = main(capsys, lmrun_main, expect=2)
    assert "python -m lmrun train" in err
