"""Training on token shards: `random_windows` reads a memory-mapped shard window by window and gives the batches
the same ids in memory give; `python -m lmrun train --data DIR` trains on BPE shards from
`python -m lmrun prepare`, resumes, and `generate` reads the run with its BPE tokenizer."""

import json

import numpy as np
import pytest
from cli_helpers import main

from assignment import preprocess
from lmkit import data
from lmrun import cli, generate, prepare

TINY = ["--config", "tiny", "--no-progress", "--no-jit", "--sample-tokens", 0]
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog, again and again.\n" for i in range(400))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    prepare.prepare(root / "corpus.txt", root / "bpe", "bpe", vocab_size=300, progress=False)
    return root / "bpe"


def test_random_windows_read_a_memmap_like_an_array(shards):
    shard = prepare.open_shard(shards / "train.bin")
    assert isinstance(shard, np.memmap)
    from_file = data.random_windows(shard, batch_size=4, seq_len=8, seed=2, start=3)
    in_memory = data.random_windows(np.array(shard), batch_size=4, seq_len=8, seed=2, start=3)
    for (x, y), (x_ref, y_ref) in zip(from_file.take(6), in_memory.take(6)):
        assert x.shape == (4, 8) and x.dtype == x_ref.dtype == np.int32
        assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
        assert np.array_equal(x[:, 1:], y[:, :-1]), "labels are the inputs shifted by one"


@pytest.mark.parametrize("max_batches", [0, 2])
def test_validation_batches_read_a_memmap_like_an_array(shards, max_batches):
    shard = prepare.open_shard(shards / "val.bin")
    from_file = list(data.validation_batches(shard, seq_len=8, batch_size=5, max_batches=max_batches))
    in_memory = list(data.validation_batches(np.array(shard), seq_len=8, batch_size=5, max_batches=max_batches))
    assert len(from_file) == len(in_memory) > 1
    for (x, y), (x_ref, y_ref) in zip(from_file, in_memory):
        assert x.shape == x_ref.shape and x.dtype == x_ref.dtype == np.int32
        assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)


@pytest.mark.timeout(300)
def test_train_on_bpe_shards_resume_and_generate(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    out, _ = main(capsys, cli, *TINY, "--data", shards, "--run-dir", run_dir, "--steps", 6, "--eval-every", 3)
    assert "done: step 6" in out, out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["tokenizer"] == "bpe" and config["vocab_size"] == 300 and config["data"] == str(shards)
    assert isinstance(preprocess.load_tokenizer(run_dir / "tokenizer.json"), preprocess.BPETokenizer)
    again, _ = main(capsys, cli, *TINY, "--data", shards, "--run-dir", run_dir, "--steps", 6)
    assert "already trained to step 6" in again, again
    _, err = main(capsys, cli, *TINY, "--run-dir", run_dir, "--steps", 6, expect=2)  # the corpus, not the shards
    assert "error:" in err
    text, _ = main(capsys, generate, "--run-dir", run_dir, "--max-new-tokens", 10, "--seed", 1)
    assert text.startswith("The "), text


def test_a_damaged_shard_is_a_clear_error(shards, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("meta.json", "tokenizer.json", "val.bin"):
        (broken / name).write_bytes((shards / name).read_bytes())
    (broken / "train.bin").write_bytes((shards / "train.bin").read_bytes()[:-2])
    _, err = main(capsys, cli, *TINY, "--data", broken, "--run-dir", tmp_path / "run", expect=2)
    assert "does not match its header" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists(), "nothing is written for a run that cannot start"
    _, err = main(capsys, cli, *TINY, "--data", tmp_path / "nowhere", "--run-dir", tmp_path / "run", expect=2)
    assert "--data" in err and "not a shard directory" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
