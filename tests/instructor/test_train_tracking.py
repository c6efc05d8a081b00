"""Tracking: the loop's TensorBoard events (the documented tags at the documented steps, read back without
TensorFlow) and `python -m lmrun train --wandb` offline (the same scalars, the config and the samples table, read
back from the run's .wandb file). Nothing here reaches the network: W&B runs with WANDB_MODE=offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checks import summary_values

ROOT = Path(__file__).resolve().parents[2]


def wandb_records(path):
    """The protocol-buffer records of a W&B run file (`run-<id>.wandb`): a 7-byte header (`:W&B`, a magic number,
    a version), then LevelDB-log records in blocks of 32 KiB, each a 7-byte header (CRC, length, type: 1 full,
    2 first, 3 middle, 4 last) and its data; a block's tail shorter than a header is padding."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file (starts {data[:7]!r})"
    at, records, pending = 7, [], b""
    while at + 7 <= len(data):
        left = 32768 - at % 32768
        if left < 7:
            at += left
            continue
        length, kind = int.from_bytes(data[at + 4 : at + 6], "little"), data[at + 6]
        if kind == 0:  # zero padding at the end of the file
            break
        pending += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """A tiny CLI run with --wandb, offline, with every W&B folder inside the test's temporary folder."""
    tmp = tmp_path_factory.mktemp("wandb")
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
    run_dir = tmp / "run"
    args = ["--config", "tiny", "--no-progress", "--no-jit", "--wandb", "--run-dir", str(run_dir)]
    proc = subprocess.run(
        [sys.executable, "-m", "lmrun", "train", *args, "--sample-tokens", "20"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir, proc.stdout


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_wandb_offline_run_has_the_scalars_the_config_and_the_samples(wandb_run):
    run_dir, stdout = wandb_run
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, f"expected one offline W&B run under {run_dir / 'wandb'}, found {folders}"
    folder = folders[0]
    assert f"wandb sync {folder}" in stdout, f"the run must say how to upload it:\n{stdout}"
    (run_file,) = folder.glob("run-*.wandb")
    records = wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    saved = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == saved["model"] and config["train"]["steps"] == 20, config.keys()
    assert config["model_config"] == json.loads(json.dumps(saved["model_config"]))
    rows = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = rows.setdefault(r.history.step.num, {})
            for item in r.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
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
