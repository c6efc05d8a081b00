"""Scale-out: the loop under `tf.distribute.MirroredStrategy` on two logical CPU devices (in a subprocess, since the
CPU must be split before TensorFlow starts) trains the same weights as one device, and the CLI runs with it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from assignment import train

    V, SEEN = 11, []

    class BlocksLM(keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding = keras.layers.Embedding(V, 16, embeddings_initializer=keras.initializers.RandomNormal(
                stddev=0.3, seed=1))
            self.blocks = [keras.layers.Dense(16, activation="tanh", kernel_initializer=keras.initializers.RandomNormal(
                stddev=0.3, seed=2 + i)) for i in range(2)]
            self.head = keras.layers.Dense(V, kernel_initializer=keras.initializers.RandomNormal(seed=9))

        def call(self, tokens, training=False):
            SEEN.append(tokens.shape[0])  # at trace time: the batch each replica sees
            x = self.embedding(tokens)
            for block in self.blocks:
                x = x + block(x)
            return self.head(x)

    rng = np.random.default_rng(0)
    ids = (np.arange(3000) % V).astype(np.int32)
    noise = rng.random(3000) < 0.2
    ids[noise] = rng.integers(0, V, noise.sum())
    cfg = train.TrainConfig(steps=12, batch_size=8, seq_len=8, lr=1e-2, warmup_steps=2, eval_every=6,
                            clip_norm=1e6, jit_compile=False, save_every_steps=6, log_every=3, eval_batch_size=8)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    mirrored = train.train(BlocksLM, ids[:2700], ids[2700:], cfg, sys.argv[1] + "/mirrored", strategy=strategy,
                           progress=False, log=lambda message: None)
    replica_batches = sorted(set(SEEN))
    single = train.train(BlocksLM, ids[:2700], ids[2700:], cfg, sys.argv[1] + "/single", progress=False,
                         log=lambda message: None)
    diff = max(float(np.max(np.abs(a.numpy() - b.numpy())))
               for a, b in zip(mirrored["model"].variables, single["model"].variables))
    replicas_agree = all(
        np.array_equal(*[r.numpy() for r in strategy.experimental_local_results(v.value)])
        for v in mirrored["model"].variables)
    print(json.dumps(dict(replicas=strategy.num_replicas_in_sync, replica_batches=replica_batches, diff=diff,
                          replicas_agree=replicas_agree, val_loss=[mirrored["val_loss"], single["val_loss"]],
                          steps=[mirrored["step"], single["step"]])))
""")


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_mirrored_strategy_on_two_cpus_trains_the_same_weights_as_one_device(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert 4 in result["replica_batches"], f"each replica should see half the batch of 8: {result}"
    assert result["replicas_agree"], "the two replicas' copies of the weights differ"
    assert result["steps"] == [12, 12]
    assert result["diff"] < 1e-5, f"mirrored and single-device weights differ by {result['diff']:.2g}"
    assert abs(result["val_loss"][0] - result["val_loss"][1]) < 1e-5


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_cli_trains_and_samples_under_mirrored_strategy(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmrun",
            "train",
            "--config",
            "tiny",
            "--no-progress",
            "--strategy",
            "mirrored",
            "--cpu-replicas",
            "2",
            "--steps",
            "2",
            "--eval-every",
            "2",
            "--sample-tokens",
            "5",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "done: step 2" in proc.stdout and "sample:\nThe " in proc.stdout


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_multi_worker_strategy_with_two_local_workers_matches_one_device(tmp_path, capsys):
    from lmrun import cli

    args = [
        "--config",
        "tiny",
        "--no-progress",
        "--steps",
        "4",
        "--eval-every",
        "4",
        "--sample-tokens",
        "0",
        "--clip-norm",
        "1000",
    ]  # no clipping: each replica clips its own gradient, one device the whole
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lmrun",
                "train",
                *args,
                "--strategy",
                "multiworker",
                "--run-dir",
                str(tmp_path / "multi"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})),
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=500) for w in workers]
    for w, (_out, err) in zip(workers, outputs):
        assert w.returncode == 0, err
    assert cli.main([*args, "--no-jit", "--run-dir", str(tmp_path / "single")]) == 0
    single = capsys.readouterr().out

    def val_loss(out):
        return float(out.split("done: step 4 | val loss ")[1].split()[0])

    assert val_loss(outputs[0][0]) == val_loss(outputs[1][0]) == val_loss(single)
    left = sorted(p.name for p in (tmp_path / "multi").iterdir())
    assert left == ["best", "ckpt", "config.json", "history.jsonl", "logs", "tokenizer.json"], left
