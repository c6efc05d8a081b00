"""Reliability: a run killed with SIGKILL resumes from its latest checkpoint with the same command and ends where a
run that was never killed ends; a kill in the middle of a checkpoint write never leaves an unreadable checkpoint;
Ctrl-C (SIGINT) saves a checkpoint before exiting."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from assignment import train
from lmkit import checkpoints
from lmrun import runs

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def command(run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "lmrun",
        "train",
        "--config",
        "tiny",
        "--no-progress",
        "--no-jit",
        "--sample-tokens",
        "0",
        "--run-dir",
        str(run_dir),
        *map(str, extra),
    ]


def latest_step(run_dir):
    path = tf.train.latest_checkpoint(str(Path(run_dir) / "ckpt"))
    return int(path.rsplit("-", 1)[1]) if path else 0


def wait_for(predicate, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be interrupted"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_sigkill_then_same_command_resumes_and_matches_an_unkilled_run(tmp_path):
    # 60 steps, so that a loaded machine still kills the run well before it ends (it is polled every 50 ms)
    args = ("--steps", 60, "--save-every-steps", 1, "--eval-every", 30)
    straight = subprocess.run(
        command(tmp_path / "straight", *args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        command(killed_dir, *args), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: latest_step(killed_dir) >= 6, proc)
    proc.send_signal(signal.SIGKILL)  # with a save every step, often in the middle of writing one
    proc.wait(timeout=30)
    killed_at = latest_step(killed_dir)
    assert 6 <= killed_at < 60

    resumed = subprocess.run(command(killed_dir, *args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    restored = [line for line in resumed.stdout.splitlines() if line.startswith("restored from step")]
    assert restored and int(restored[0].split()[3]) >= killed_at, resumed.stdout
    assert "done: step 60" in resumed.stdout

    a, _, _, _ = runs.load_run(tmp_path / "straight", "latest")
    b, _, _, _ = runs.load_run(killed_dir, "latest")
    for va, vb in zip(a.variables, b.variables):
        np.testing.assert_allclose(
            vb.numpy(),
            va.numpy(),
            atol=1e-5,
            err_msg=f"{va.path}: killed-and-resumed run differs from the straight run",
        )
    history = [json.loads(line) for line in (killed_dir / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [30, 60]  # an evaluation after the kill is not repeated


BIG_MODEL = textwrap.dedent("""
    import tensorflow as tf

    class Big(tf.keras.Model):  # 8 MB of weights: a save takes long enough to be killed halfway
        def __init__(self):
            super().__init__()
            self.w = self.add_weight(name="w", shape=(2048, 1024), initializer="zeros")

        def call(self, x):
            return x
""")

SAVER = BIG_MODEL + textwrap.dedent("""
    import sys
    from assignment.train import FUNCTIONS
    from lmkit import checkpoints

    model = Big()
    ckpts = checkpoints.Checkpoints(sys.argv[1], model, keep_last=2, save_every_steps=1, functions=FUNCTIONS)
    ckpts.restore()
    while True:
        ckpts.step.assign_add(1)
        model.w.assign(tf.fill(model.w.shape, float(int(ckpts.step))))
        ckpts.save()
        print(int(ckpts.step), flush=True)
""")


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_never_leaves_an_unreadable_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(tmp_path)],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(3):
            assert proc.stdout.readline(), "the saver died"
        time.sleep(rng.uniform(0, 0.2))  # land anywhere in a save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()

        namespace = {}
        exec(BIG_MODEL, namespace)
        model = namespace["Big"]()
        ckpts = checkpoints.Checkpoints(tmp_path, model, keep_last=2, functions=train.FUNCTIONS)
        step = ckpts.restore()  # raises if the checkpoint the index names is incomplete
        assert step is not None and step >= 3 * (attempt + 1)
        np.testing.assert_array_equal(model.w.numpy()[[0, -1], [0, -1]], [step, step])  # the weights of that step
        # A checkpoint that a kill left unreadable is set aside (renamed *.unreadable), never deleted: not a stray.
        left = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if not p.name.endswith(".unreadable"))
        listed = {Path(p).name for p in ckpts.latest.checkpoints}
        assert not [name for name in left if name.endswith("_temp")], f"unfinished writes left behind: {left}"
        strays = [name for name in left if name != "checkpoint" and name.split(".")[0] not in listed]
        assert not strays, f"files no checkpoint of the index owns: {strays} (index: {sorted(listed)})"
        for prefix in ckpts.latest.checkpoints:
            assert checkpoints.unreadable(prefix) is None, prefix
        ckpts.step.assign_add(1)
        ckpts.save()  # the next save drops what is beyond keep_last
        kept = [p for p in (tmp_path / "ckpt").iterdir() if not p.name.endswith(".unreadable")]
        assert len(ckpts.latest.checkpoints) == 2 and len(kept) == 1 + 2 * 2, sorted(p.name for p in kept)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_before_exiting(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        command(run_dir, "--steps", 100000, "--eval-every", 5, "--save-every-steps", 100000),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step 5:"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)  # saving and exiting on a loaded machine
    assert proc.returncode == 130, err
    interrupted = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    assert interrupted, out
    step = int(interrupted[0].split()[3].rstrip(":"))
    assert step >= 5 and latest_step(run_dir) == step
    assert "run the same command again to resume" in interrupted[0]
