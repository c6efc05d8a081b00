"""Faults a careless user or a bad day causes: every bad flag is one line naming it, nothing is written; damaged,
deleted or truncated checkpoints recover from what is on disk instead of restarting; a full disk stops the run with
one line and keeps the last good checkpoint; a diverging run says so; and TensorFlow's start-up chatter is gone."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lmkit import checkpoints
from lmrun import cli, generate

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--config", "tiny", "--no-progress", "--no-jit", "--sample-tokens", "0"]


def run_cli(capsys, module, *args):
    """Calls `module.main(args)` in this process; returns (exit status, stdout, stderr)."""
    try:
        code = module.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"expected exit status 2, got {code}; stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error: ...' line, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"expected {needle!r} in the error line: {lines[0]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained for 20 steps (checkpoints at steps 10 and 20, best at the better one)."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    assert cli.main([*TINY, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture
def copy_of(trained, tmp_path):
    def make():
        target = tmp_path / f"run-{uuid.uuid4().hex[:6]}"
        shutil.copytree(trained, target)
        return target

    return make


BAD_TRAIN_FLAGS = [
    (["--val-fraction", "0"], "--val-fraction"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--keep-last", "0"], "--keep-last"),
    (["--freeze", "9"], "--freeze 9"),
    (["--freeze", "nonsense"], "--freeze"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--steps", "0"], "--steps"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--dropout", "1.5"], "--dropout"),
    (["--clip-norm", "0"], "--clip-norm"),
    (["--beta2", "1"], "--beta2"),
    (["--eval-every", "0"], "--eval-every"),
    (["--save-every-minutes", "-1"], "--save-every-minutes"),
    (["--save-every-steps", "-2"], "--save-every-steps"),
    (["--log-every", "0"], "--log-every"),
    (["--model", "gru"], "--model"),
    (["--config", "huge"], "--config"),
    (["--steps", "ten"], "--steps"),
    (["--preset", "gpt5"], "--preset"),
    (["--corpus", "/no/such/corpus.txt"], "/no/such/corpus.txt"),
    (["--set", "norm"], "--set"),
]


@pytest.mark.parametrize("flags, needle", BAD_TRAIN_FLAGS, ids=[" ".join(f) for f, _ in BAD_TRAIN_FLAGS])
def test_a_bad_training_flag_is_one_line_and_writes_nothing(flags, needle, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, cli, *TINY, "--run-dir", run_dir, *flags)
    assert_one_line_error(code, err, needle)
    assert not run_dir.exists(), f"a refused command left {sorted(p.name for p in run_dir.iterdir())}"


@pytest.fixture(scope="module")
def shards_of(trained, tmp_path_factory):
    """`shards_of(tokenizer)`: shards of a small text, by a new BPE ("bpe") or by the trained run's tokenizer."""
    from lmrun import prepare

    root = tmp_path_factory.mktemp("shards")
    (root / "text.txt").write_text("The with statement is used to wrap a block.\n" * 300)

    def make(tokenizer):
        if not (root / tokenizer).exists():
            source = trained / "tokenizer.json" if tokenizer == "run" else tokenizer
            prepare.prepare(root / "text.txt", root / tokenizer, str(source), vocab_size=300, progress=False)
        return root / tokenizer

    return make


@pytest.mark.parametrize("damage", ["another tokenizer", "no tokenizer.json in the run"])
def test_data_with_init_from_needs_the_run_s_tokenizer(damage, copy_of, shards_of, tmp_path, capsys):
    source = copy_of()
    if damage == "another tokenizer":
        data, needles = shards_of("bpe"), ["encoded by another tokenizer", "bpe", "char", "--tokenizer"]
    else:
        (source / "tokenizer.json").unlink()
        data, needles = shards_of("run"), ["cannot check", "tokenizer"]
    run_dir = tmp_path / "ft"
    code, _, err = run_cli(capsys, cli, *TINY, "--run-dir", run_dir, "--data", data, "--init-from", source)
    assert_one_line_error(code, err, str(data), str(source), *needles)
    assert not run_dir.exists(), f"a refused command left {sorted(p.name for p in run_dir.iterdir())}"


def test_data_with_init_from_fine_tunes_on_shards_of_the_run_s_tokenizer(trained, shards_of, tmp_path, capsys):
    run_dir = tmp_path / "ft"
    data = shards_of("run")
    code, out, err = run_cli(capsys, cli, *TINY, "--run-dir", run_dir, "--data", data, "--init-from", trained,
                             "--steps", 2)  # fmt: skip
    assert code == 0, err
    assert "fine-tuning: starting at step 0" in out and "done: step 2" in out, out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["init_from"] == str(trained) and config["data"] == str(data)


BAD_GENERATE_FLAGS = [
    (["--num-samples", "0"], "--num-samples"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--temperature", "-1"], "--temperature"),
    (["--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--checkpoint", "nonsense"], "--checkpoint nonsense"),
]


@pytest.mark.parametrize("flags, needle", BAD_GENERATE_FLAGS, ids=[" ".join(f) for f, _ in BAD_GENERATE_FLAGS])
def test_a_bad_generate_flag_is_one_line(flags, needle, trained, capsys):
    code, out, err = run_cli(capsys, generate, "--run-dir", trained, "--max-new-tokens", 5, *flags)
    assert_one_line_error(code, err, needle)
    assert not out


def test_generate_on_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, generate, "--run-dir", tmp_path / "nothing")
    assert_one_line_error(code, err, "not a run directory")


def test_a_diverging_run_stops_with_the_step_and_a_suggestion(tmp_path, capsys):
    code, _, err = run_cli(capsys, cli, *TINY, "--run-dir", tmp_path / "run", "--lr", "1e6", "--clip-norm", "1e9")
    assert_one_line_error(code, err, "diverged", "at step", "lower --lr")


def test_a_loss_too_large_to_log_still_ends_in_the_divergence_message(tmp_path, capsys):
    """--lr 1000 first gives finite losses above 1e11, whose perplexity no float32 scalar holds: the loop logs a
    capped value (it used to end in a ValueError traceback from tf.summary), then diverges as usual."""
    code, _, err = run_cli(capsys, cli, *TINY, "--run-dir", tmp_path / "run", "--lr", "1000", "--log-every", "1")
    assert_one_line_error(code, err, "diverged", "at step", "lower --lr")


def resume(capsys, run_dir, *extra):
    return run_cli(capsys, cli, *TINY, "--run-dir", run_dir, "--steps", 30, *extra)


def test_deleted_index_is_rebuilt_and_the_run_resumes(copy_of, capsys):
    run_dir = copy_of()
    (run_dir / "ckpt" / "checkpoint").unlink()
    code, out, err = resume(capsys, run_dir)
    assert code == 0, err
    assert "index was missing" in out and "restored from step 20" in out, out
    assert "starting from scratch" not in out


def test_garbled_index_is_rebuilt_and_the_run_resumes(copy_of, capsys):
    run_dir = copy_of()
    (run_dir / "ckpt" / "checkpoint").write_text("model_checkpoint_path: \x00\x00 garbage {{{")
    code, out, err = resume(capsys, run_dir)
    assert code == 0, err
    assert "index was damaged" in out and "restored from step 20" in out, out


def test_truncated_newest_checkpoint_falls_back_to_the_one_before(copy_of, capsys):
    run_dir = copy_of()
    (data,) = (run_dir / "ckpt").glob("ckpt-20.data-*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    code, out, err = resume(capsys, run_dir)
    assert code == 0, err
    assert f"skipping checkpoint {run_dir / 'ckpt' / 'ckpt-20'}" in out and "restored from step 10" in out, out
    assert sorted(p.name for p in (run_dir / "ckpt").glob("*.unreadable"))  # set aside, not deleted
    assert "done: step 30" in out


def test_generate_skips_a_truncated_checkpoint(copy_of, capsys):
    run_dir = copy_of()
    for data in (run_dir / "best").glob("best-*.data-*"):
        data.write_bytes(data.read_bytes()[:10])
    code, out, err = run_cli(capsys, generate, "--run-dir", run_dir, "--max-new-tokens", 5, "--seed", 0)
    assert code == 0, err
    assert "skipping checkpoint" in out + err and "/ckpt/ckpt-20" in err, err


def test_removed_checkpoints_folder_is_refused_not_restarted(copy_of, capsys):
    run_dir = copy_of()
    shutil.rmtree(run_dir / "ckpt")
    history = (run_dir / "history.jsonl").read_text()
    best = sorted(p.name for p in (run_dir / "best").iterdir())
    code, _, err = resume(capsys, run_dir)
    assert_one_line_error(code, err, "refusing to start from scratch", "--overwrite")
    assert (run_dir / "history.jsonl").read_text() == history and sorted(
        p.name for p in (run_dir / "best").iterdir()
    ) == best


def test_torn_history_line_does_not_block_a_resume(copy_of, capsys):
    run_dir = copy_of()
    with open(run_dir / "history.jsonl", "a") as f:
        f.write('{"step": 30, "val_lo')  # a kill in the middle of a write
    code, out, err = resume(capsys, run_dir)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30], steps


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_truncated_json_of_a_run_is_one_line_naming_it(name, copy_of, capsys):
    run_dir = copy_of()
    path = run_dir / name
    path.write_text(path.read_text()[:40])
    code, _, err = resume(capsys, run_dir)
    assert_one_line_error(code, err, name)
    code, _, err = run_cli(capsys, generate, "--run-dir", run_dir)
    assert_one_line_error(code, err, name)


def test_orphans_of_an_interrupted_save_are_removed_and_complete_checkpoints_kept(copy_of, capsys):
    run_dir = copy_of()
    ckpt = run_dir / "ckpt"
    (ckpt / "ckpt-5.data-00000-of-00001").write_bytes(b"left by an interrupted deletion")
    (ckpt / "ckpt-25_temp").mkdir()
    (ckpt / "ckpt-25_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half a save")
    (ckpt / "checkpoint.tmp3f9a").write_text('model_checkpoint_path: "ckpt-2')  # an index write cut short
    messages = []
    complete = checkpoints.tidy(ckpt, "ckpt", messages.append)
    assert sorted(complete) == [10, 20]
    assert not (ckpt / "ckpt-5.data-00000-of-00001").exists() and not (ckpt / "ckpt-25_temp").exists()
    assert not (ckpt / "checkpoint.tmp3f9a").exists()
    assert messages and "interrupted" in messages[0]


def can_mount_tmpfs(path):
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True)
    return ok.returncode == 0


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not can_mount_tmpfs(disk):
        pytest.skip("needs root to mount a small tmpfs as a disk that fills")
    try:
        run_dir = disk / "run"
        code, _, err = run_cli(capsys, cli, *TINY, "--run-dir", run_dir, "--steps", 10)
        assert code == 0, err
        free = shutil.disk_usage(disk).free
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (free - 64 * 1024))  # leaves less than a checkpoint needs
        code, _, err = resume(capsys, run_dir)
        assert_one_line_error(code, err, "could not write checkpoint", "the disk is full", "MB free", "ckpt/ckpt-10")
        assert not list((run_dir / "ckpt").glob("*_temp*")), "the failed save left temporary files"
        assert checkpoints.newest_readable(run_dir / "ckpt", "ckpt").endswith("ckpt-10")
        filler.unlink()
        code, out, err = resume(capsys, run_dir)
        assert code == 0 and "restored from step 10" in out and "done: step 30" in out, out + err
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_no_tensorflow_start_up_lines_on_stderr(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    proc = subprocess.run(
        [sys.executable, "-m", "lmrun", "train", *TINY, "--run-dir", str(tmp_path / "run"), "--steps", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr
    noise = [
        line
        for line in proc.stderr.splitlines()
        if line.startswith(("I0000", "W0000", "E0000", "WARNING: All log messages")) or "cuInit" in line
    ]
    assert not noise, "TensorFlow's start-up lines reached the user:\n" + "\n".join(noise)


def test_a_config_json_that_does_not_fit_the_checkpoints_is_one_line(copy_of, capsys):
    run_dir = copy_of()
    config = json.loads((run_dir / "config.json").read_text())
    config["model_config"]["d_model"] = 48
    (run_dir / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, generate, "--run-dir", run_dir, "--max-new-tokens", 5)
    assert_one_line_error(code, err, "does not fit", "token_embedding has shape", "in the checkpoint")


@pytest.fixture(scope="module")
def student_release(tmp_path_factory):
    """The student release as `make student` builds it: every graded region a stub."""
    out = tmp_path_factory.mktemp("release") / "student"
    subprocess.run(
        [sys.executable, "-m", "grading", "build-student", "--out", str(out), "--no-zip", "--no-import-check"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.mark.timeout(600)
@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["lmrun", "train", *TINY], ["lmrun", "compare", "--config", "tiny", "--steps", "2", "--no-progress"]],
    ids=["train", "compare"],
)
def test_commands_on_the_stub_release_name_the_missing_todo_in_one_line(command, student_release, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            *command,
            *(["--run-dir"] if command[1] == "train" else ["--runs-dir"]),
            str(tmp_path / "runs"),
        ],
        cwd=student_release,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "not done yet", "CharTokenizer.fit", "preprocess.py, line")
