"""Tracking: the loop's TensorBoard events (the documented tags at the documented steps, read back without
TensorFlow) and `python -m lmrun train --wandb` offline (the same scalars, the config and the samples table, read
back from the run's .wandb file). Nothing here reaches the network: W&B runs with WANDB_MODE=offline."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checks import summary_values

from lmkit.tracking import last_logged_step, wandb_file_records

ROOT = Path(__file__).resolve().parents[2]


def history_rows(records):
    """`{step: {key: value}}` of the history records of a W&B run file."""
    rows = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = rows.setdefault(r.history.step.num, {})
            for item in r.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows


def offline_env(tmp):
    """The environment of a CLI run with W&B offline and every W&B folder inside `tmp`."""
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(tmp / "config"),
        WANDB_CACHE_DIR=str(tmp / "cache"),
        WANDB_DATA_DIR=str(tmp / "data"),
    )
    env.pop("WANDB_API_KEY", None)
    return env


def train_with_wandb(tmp, run_dir, *extra):
    """`python -m lmrun train --config tiny --wandb` into `run_dir`, offline; returns its standard output."""
    args = ["--config", "tiny", "--no-progress", "--no-jit", "--wandb", "--run-dir", str(run_dir), *map(str, extra)]
    proc = subprocess.run(
        [sys.executable, "-m", "lmrun", "train", *args],
        cwd=ROOT,
        env=offline_env(tmp),
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def finished_wandb_records(folder, timeout=30):
    """The records of the run file in the offline W&B `folder`, once W&B has written them up to the run's end (its
    `exit` record): `run.finish()` returns before W&B's own process has written the file out (seen: 7 bytes, the
    header alone, right after it returned)."""
    (run_file,) = Path(folder).glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        assert run_file.read_bytes()[:4] == b":W&B", f"{run_file} is not a W&B run file"
        records = wandb_file_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def wandb_sessions(run_dir):
    """Each offline W&B folder of `run_dir` (one per session, oldest first): (its run record, its history rows
    `{step: {key: value}}`)."""
    sessions = []
    for folder in sorted((Path(run_dir) / "wandb").glob("offline-run-*")):
        records = finished_wandb_records(folder)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        sessions.append((run, history_rows(records)))
    return sessions


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """A tiny CLI run with --wandb, offline, with every W&B folder inside the test's temporary folder."""
    tmp = tmp_path_factory.mktemp("wandb")
    run_dir = tmp / "run"
    return run_dir, train_with_wandb(tmp, run_dir, "--sample-tokens", 20)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_wandb_offline_run_has_the_scalars_the_config_and_the_samples(wandb_run):
    run_dir, stdout = wandb_run
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, f"expected one offline W&B run under {run_dir / 'wandb'}, found {folders}"
    folder = folders[0]
    assert f"wandb sync {folder}" in stdout, f"the run must say how to upload it:\n{stdout}"
    records = finished_wandb_records(folder)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    saved = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == saved["model"] and config["train"]["steps"] == 20, config.keys()
    assert config["model_config"] == json.loads(json.dumps(saved["model_config"]))
    rows = history_rows(records)
    assert sorted(rows) == [5, 10, 15, 20], (sorted(rows), kinds)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    for step in (5, 10, 15, 20):
        for tag in ("train/loss", "train/perplexity", "train/grad_norm", "train/lr", "train/tokens_per_sec"):
            assert tag in rows[step], f"{tag} missing at step {step}: {sorted(rows[step])}"
    for record in history:  # the validation scalars are history.jsonl's, at the evaluations
        row = rows[record["step"]]
        assert row["val/loss"] == pytest.approx(record["val_loss"], rel=1e-9)
        assert row["val/bits_per_char"] == pytest.approx(record["val_bits_per_char"], rel=1e-9)
        assert row["samples/_type"] == "table-file" and row["samples/nrows"] == len(
            [h for h in history if h["step"] <= record["step"]]
        )
    table = json.loads((folder / "files" / rows[20]["samples/path"]).read_text())
    assert table["columns"] == ["step", "tag", "text"]
    assert [row[:2] for row in table["data"]] == [[10, "sample"], [20, "sample"]]
    assert all(row[2].startswith("The ") for row in table["data"]), table["data"]


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_tensorboard_events_hold_the_documented_tags_at_the_documented_steps(wandb_run):
    run_dir, _ = wandb_run
    files = {p.name: p.read_bytes() for p in (run_dir / "logs").iterdir()}
    values = summary_values(files)
    train_tags = ["train/grad_norm", "train/loss", "train/lr", "train/perplexity", "train/tokens_per_sec"]
    val_tags = ["sample", "val/bits_per_char", "val/loss", "val/perplexity"]
    for step in (5, 10, 15, 20):
        tags = sorted(tag for s, tag, _, _ in values if s == step)
        assert tags == sorted(train_tags + (val_tags if step % 10 == 0 else [])), (step, tags)
    kinds = {tag: kind for _, tag, kind, _ in values}
    assert kinds["sample"] == "string" and all(kinds[t] == "float" for t in train_tags), kinds


def test_wandb_is_offline_unless_set_up(monkeypatch, tmp_path):
    from lmkit import tracking

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    assert not tracking.wandb_configured()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert tracking.wandb_configured()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.wandb_configured()


@pytest.fixture(scope="module")
def resumed_wandb_run(tmp_path_factory):
    """A tiny CLI run with --wandb stopped at step 10 (--steps 10), then resumed to step 20 (--steps 20)."""
    tmp = tmp_path_factory.mktemp("wandb-resumed")
    run_dir = tmp / "run"
    first = train_with_wandb(tmp, run_dir, "--steps", 10, "--sample-tokens", 0)
    second = train_with_wandb(tmp, run_dir, "--steps", 20, "--sample-tokens", 0)
    assert "restored from step 10" in second, second
    return tmp, run_dir, first, second


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_a_resumed_run_is_one_wandb_run_with_both_sessions_losses(resumed_wandb_run):
    _, run_dir, _, second = resumed_wandb_run
    sessions = wandb_sessions(run_dir)
    assert len(sessions) == 2, f"expected one offline folder per session under {run_dir / 'wandb'}"
    first_id, second_id = [run.run_id for run, _ in sessions]
    assert first_id == second_id, "both sessions must write to the same W&B run"
    run_id = (run_dir / "wandb-id.txt").read_text().strip()
    assert run_id == first_id
    assert all(run.resume for run, _ in sessions), "offline sessions must record that they resume (for wandb sync)"
    (_, before), (_, after) = sessions
    assert sorted(before) == [5, 10] and sorted(after) == [15, 20], (sorted(before), sorted(after))
    history = {r["step"]: r for r in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines())}
    assert sorted(history) == [10, 20]
    for rows in (before, after):
        for step, row in rows.items():
            assert row["train/loss"] > 0 and row["_step"] == step, (step, row)
            if step in history:
                assert row["val/loss"] == pytest.approx(history[step]["val_loss"], rel=1e-9)
                assert row["train/loss"] == pytest.approx(history[step]["train_loss"], rel=1e-9)
    assert f"wandb sync {run_dir / 'wandb'}/offline-run-*-{run_id}" in second, second


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_overwrite_starts_a_new_wandb_run(resumed_wandb_run, tmp_path):
    tmp, resumed_dir, _, _ = resumed_wandb_run
    run_dir = tmp_path / "run"
    shutil.copytree(resumed_dir, run_dir)
    old_id = (run_dir / "wandb-id.txt").read_text().strip()
    train_with_wandb(tmp, run_dir, "--steps", 5, "--sample-tokens", 0, "--overwrite")
    new_id = (run_dir / "wandb-id.txt").read_text().strip()
    assert new_id != old_id
    ((run, rows),) = wandb_sessions(run_dir)
    assert run.run_id == new_id and sorted(rows) == [5]


def test_a_resumed_session_logs_only_after_the_last_step_wandb_has(monkeypatch, tmp_path):
    """Killed after logging step 15 with its checkpoint at 10, the resumed session repeats steps 11-15: W&B drops a
    step lower than one it has, so the tracker logs from step 16 on, into the same run."""
    from lmkit.tracking import WandbTracker

    for key, value in offline_env(tmp_path).items():
        if key.startswith("WANDB_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = WandbTracker(run_dir, {"steps": 20}, log=lambda line: None)
    for step in (5, 10, 15):
        first.log(step, {"train/loss": 5.0 - step / 10})
        if step == 10:
            first.log(step, {"val/loss": 4.5})  # the evaluation, at the same step: one row
    first.close()
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    finished_wandb_records(folder)  # as when a session starts after the process of the one before has ended
    time.sleep(1)  # W&B names a session's folder by the second it started
    messages = []
    second = WandbTracker(run_dir, {"steps": 20}, log=messages.append)
    for step in (15, 20):
        second.log(step, {"train/loss": 4.0 - step / 10})
    second.log(20, {"val/loss": 3.5})
    second.close()
    (run_a, rows_a), (run_b, rows_b) = wandb_sessions(run_dir)
    assert run_a.run_id == run_b.run_id, "both sessions must write to the same W&B run"
    assert run_a.run_id == (run_dir / "wandb-id.txt").read_text().strip()
    assert sorted(rows_a) == [5, 10, 15] and rows_a[10]["val/loss"] == 4.5
    assert sorted(rows_b) == [20], "a resumed session must not log again the steps W&B already has"
    assert rows_b[20]["train/loss"] == 2.0 and rows_b[20]["val/loss"] == 3.5
    assert any("wandb sync" in m and "offline-run-*-" in m for m in messages), messages
    assert any("W&B: step 15 ran again" in m for m in messages), messages
    # a killed session's file may end in the middle of a record: what reads back whole counts, the rest is ignored
    (path,) = sorted((run_dir / "wandb").glob("offline-run-*"))[1].glob("run-*.wandb")
    path.write_bytes(path.read_bytes()[:-50])

    assert last_logged_step(run_dir, run_a.run_id) in (15, 20)
