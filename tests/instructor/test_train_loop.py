"""The training loop in process, on a tiny model defined here: resume exactness, checkpoint retention, the best
checkpoint, freezing, optimizers, and a corpus too small for one batch."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from assignment import train
from lmkit import checkpoints, data, optim

V = 11


class BlocksLM(keras.Model):
    """Embedding -> residual tanh blocks (a list named `blocks`, as the transformer's) -> dropout -> Dense(V)."""

    def __init__(self, dim=16, num_blocks=2, dropout=0.1):
        super().__init__()
        init = keras.initializers.RandomNormal(stddev=0.3, seed=1)
        self.embedding = keras.layers.Embedding(V, dim, embeddings_initializer=init, name="embedding")
        self.blocks = [
            keras.layers.Dense(
                dim,
                activation="tanh",
                name=f"block_{i}",
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=2 + i),
            )
            for i in range(num_blocks)
        ]
        self.drop = keras.layers.Dropout(dropout, seed=7)
        self.head = keras.layers.Dense(V, name="head", kernel_initializer=keras.initializers.RandomNormal(seed=9))

    def call(self, tokens, training=False):
        x = self.embedding(tokens)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.drop(x, training=training))


def token_stream(n=3000, seed=0):
    """A learnable stream: mostly counting up modulo V, with some noise."""
    rng = np.random.default_rng(seed)
    ids = (np.arange(n) % V).astype(np.int32)
    noise = rng.random(n) < 0.2
    ids[noise] = rng.integers(0, V, noise.sum())
    return ids[: n * 9 // 10], ids[n * 9 // 10 :]


def config(**overrides):
    values = dict(
        steps=20,
        batch_size=4,
        seq_len=8,
        lr=1e-2,
        warmup_steps=3,
        eval_every=10,
        eval_batch_size=8,
        log_every=5,
        save_every_steps=5,
        save_every_minutes=0,
        keep_last=3,
        jit_compile=False,
    )
    values.update(overrides)
    return train.TrainConfig(**values)


def run(run_dir, cfg, **kwargs):
    train_ids, val_ids = token_stream()
    messages = []
    result = train.train(BlocksLM, train_ids, val_ids, cfg, run_dir, progress=False, log=messages.append, **kwargs)
    return result, messages


def weights(model):
    return [v.numpy() for v in model.weights]


def test_resumed_run_equals_straight_run(tmp_path):
    straight, _ = run(tmp_path / "straight", config())
    first, messages = run(tmp_path / "resumed", config(), stop_at=10)
    assert first["stopped"] and first["step"] == 10 and messages == ["starting from scratch"]
    resumed, messages = run(tmp_path / "resumed", config())
    assert messages[0].startswith("restored from step 10"), messages
    assert resumed["step"] == straight["step"] == 20
    assert int(resumed["optimizer"].iterations) == int(straight["optimizer"].iterations) == 20
    for a, b, v in zip(weights(straight["model"]), weights(resumed["model"]), straight["model"].weights):
        np.testing.assert_allclose(
            b,
            a,
            atol=1e-6,
            err_msg=f"{v.path} differs between the straight and the "
            "resumed run (dropout on, so the dropout RNG state must resume too)",
        )
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6)


def test_finished_run_is_not_trained_again(tmp_path):
    run(tmp_path, config(steps=5, eval_every=5))
    again, messages = run(tmp_path, config(steps=5, eval_every=5))
    assert again["already_done"] and messages[0].startswith("restored from step 5")
    more, _ = run(tmp_path, config(steps=8, eval_every=5))
    assert not more["already_done"] and more["step"] == 8


def test_retention_keeps_the_last_n_checkpoints_every_k_steps(tmp_path):
    result, _ = run(tmp_path, config(steps=20, save_every_steps=3, keep_last=2))
    ckpts = result["checkpoints"]
    assert ckpts.saved_steps == [18, 20]  # saves at 3, 6, ..., 18 and the final 20; only the last two kept
    on_disk = sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt-*.index"))
    assert on_disk == ["ckpt-18.index", "ckpt-20.index"]


def test_retention_saves_every_m_minutes(tmp_path, monkeypatch):
    clock = iter(float(60 * i) for i in range(10_000))  # each reading of the clock is one minute later
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: next(clock))
    result, _ = run(tmp_path, config(steps=7, save_every_steps=0, save_every_minutes=1.5, keep_last=10, eval_every=100))
    steps = result["checkpoints"].saved_steps
    assert len(steps) >= 3 and steps[-1] == 7, steps  # saved by time alone, not only at the end


def test_best_checkpoint_keeps_the_lowest_validation_loss(tmp_path):
    model = BlocksLM()
    model(tf.zeros((1, 4), tf.int32))
    ckpts = checkpoints.Checkpoints(tmp_path, model, keep_last=2, functions=train.FUNCTIONS)
    saved = {}
    for step, val_loss in enumerate([3.0, 2.0, 2.5, 1.5, 1.8, 1.6], start=1):
        ckpts.step.assign(step)
        for v in model.trainable_variables:
            v.assign(tf.fill(v.shape, float(step)))
        improved = train.save_if_best(ckpts.best, val_loss, ckpts.best_val_loss, step)
        assert improved == (step in (1, 2, 4)), (step, val_loss)
        saved[step] = weights(model)
    assert tf.train.latest_checkpoint(str(tmp_path / "best")).endswith("best-4")
    assert len(list((tmp_path / "best").glob("best-*.index"))) == 1
    fresh = BlocksLM()
    fresh(tf.zeros((1, 4), tf.int32))
    checkpoints.load_weights(fresh, tmp_path, "best")
    for a, b in zip(weights(fresh), saved[4]):
        np.testing.assert_array_equal(a, b)


def test_generation_loads_the_best_checkpoint_through_restore_latest(tmp_path):
    """load_weights(..., restore_latest=...) loads best/ with part 5's restore_latest (the lecture's "load from
    them"), and falls back to the given reader when the newest best checkpoint does not read back."""
    model = BlocksLM()
    model(tf.zeros((1, 4), tf.int32))
    ckpts = checkpoints.Checkpoints(tmp_path, model, keep_last=2, functions=train.FUNCTIONS)
    ckpts.step.assign(7)
    for v in model.trainable_variables:
        v.assign(tf.fill(v.shape, 7.0))
    assert train.save_if_best(ckpts.best, 2.5, ckpts.best_val_loss, 7)
    calls = []

    def restore_latest(manager):
        calls.append(manager.latest_checkpoint)
        return train.restore_latest(manager)

    fresh = BlocksLM()
    fresh(tf.zeros((1, 4), tf.int32))
    path = checkpoints.load_weights(fresh, tmp_path, "best", restore_latest=restore_latest)
    assert calls == [path] and path.endswith("best-7")
    for a, b in zip(weights(fresh), weights(model)):
        np.testing.assert_array_equal(a, b)
    # A damaged newest best checkpoint: the given reader skips it and loads the latest one of ckpt/ instead.
    ckpts.save()
    data = next((tmp_path / "best").glob("best-7.data-*"))
    data.write_bytes(data.read_bytes()[:10])
    calls.clear()
    path = checkpoints.load_weights(fresh, tmp_path, "best", log=lambda line: None, restore_latest=restore_latest)
    assert calls == [] and path.endswith("ckpt-7")


def test_best_checkpoint_in_the_loop_matches_history(tmp_path):
    result, _ = run(tmp_path, config(steps=30, eval_every=5, lr=0.05))
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    best = min(history, key=lambda r: r["val_loss"])
    assert [r["step"] for r in history] == [5, 10, 15, 20, 25, 30]
    assert float(result["checkpoints"].best_val_loss) == pytest.approx(best["val_loss"])
    assert tf.train.latest_checkpoint(str(tmp_path / "best")).endswith(f"best-{best['step']}")


def test_freezing_keeps_frozen_weights_bit_identical(tmp_path):
    frozen_paths = []

    def setup(model):
        frozen_paths.extend(v.path for v in checkpoints.freeze(model, embeddings=True, first_layers=1))
        setup.before = {v.path: v.numpy().copy() for v in model.weights}

    result, _ = run(tmp_path, config(steps=10, weight_decay=0.5), setup_fn=setup)
    assert sorted(frozen_paths) == sorted(
        v.path for v in result["model"].embedding.weights + result["model"].blocks[0].weights
    )
    for v in result["model"].weights:
        if v.path in frozen_paths:
            np.testing.assert_array_equal(v.numpy(), setup.before[v.path], err_msg=f"frozen {v.path} changed")
        else:
            assert not np.array_equal(v.numpy(), setup.before[v.path]), f"trainable {v.path} did not change"


def test_freeze_rejects_more_layers_than_the_model_has():
    model = BlocksLM(num_blocks=2)
    model(tf.zeros((1, 4), tf.int32))
    with pytest.raises(ValueError, match="first 3 blocks/layers: the model has 2"):
        checkpoints.freeze(model, first_layers=3)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_trains(tmp_path, name):
    lr = {"sgd": 0.3}.get(name, 1e-2)
    result, _ = run(tmp_path, config(steps=30, eval_every=30, optimizer=name, lr=lr, save_every_steps=0))
    first_loss = np.log(V)
    assert result["val_loss"] < first_loss - 0.3, f"{name}: val loss {result['val_loss']:.3f} after 30 steps"


def test_corpus_too_small_for_one_batch_is_a_clear_error(tmp_path):
    with pytest.raises(data.CorpusTooSmall, match="too small for one batch.*needs at least 33 training tokens"):
        train.train(BlocksLM, np.arange(20) % V, np.arange(20) % V, config(), tmp_path, progress=False)
    assert not (tmp_path / "ckpt").exists()


def test_random_windows_restart_anywhere():
    ids = np.arange(500, dtype=np.int32)
    whole = [tuple(t.numpy() for t in b) for b in data.random_windows(ids, 3, 8, seed=5).take(6)]
    tail = [tuple(t.numpy() for t in b) for b in data.random_windows(ids, 3, 8, seed=5, start=4).take(2)]
    for (x, y), (x2, y2) in zip(whole[4:], tail):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    x, y = whole[0]
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])  # labels are the inputs shifted by one


def test_time_budget_stops_with_a_checkpoint_and_an_evaluation(tmp_path):
    cut, _ = run(tmp_path, config(steps=10_000, eval_every=10_000, time_budget_minutes=0.02))
    assert cut["out_of_time"] and cut["stopped"] and 0 < cut["step"] < 10_000
    assert cut["val_loss"] is not None and cut["checkpoints"].saved_steps[-1] == cut["step"]
    more, messages = run(tmp_path, config(steps=cut["step"] + 3, eval_every=10_000))
    assert messages[0].startswith(f"restored from step {cut['step']}") and more["step"] == cut["step"] + 3


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_schedule_free_trains_at_y_and_evaluates_at_the_average_x(compiled):
    """Schedule-free AdamW against the paper's recursion (Defazio et al., 2024, with Adam's step) on f(w) = |w|^2:
    z <- z - lr * g(y) / (sqrt(v_hat) + eps), x <- (1 - 1/t) x + z / t, y = (1 - b1) z + b1 x. The model holds y;
    `evaluation_weights` swaps in x and restores y."""
    b1, b2, lr, eps, warmup = 0.9, 0.99, 0.1, 1e-8, 3
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2, use_bias=False)])
    w0 = np.array([[1.0, -2.0]], np.float32)
    model.layers[0].kernel.assign(w0)
    optimizer = optim.make_optimizer(
        "schedulefree", lr, steps=100, warmup_steps=warmup, weight_decay=0.0, beta_1=b1, beta_2=b2
    )
    optimizer.build(model.trainable_variables)  # eagerly, as the loop does: z starts at the weights

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model.trainable_variables[0]))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    step = tf.function(step, jit_compile=True) if compiled else step
    z = x = y = w0.astype(np.float64)
    v = np.zeros_like(z)
    for t in range(1, 7):
        step()
        g = 2 * y
        v = b2 * v + (1 - b2) * g * g
        z = z - lr * min(t / warmup, 1.0) * g / (np.sqrt(v / (1 - b2**t)) + eps)
        x = (1 - 1 / t) * x + z / t
        y = (1 - b1) * z + b1 * x
        np.testing.assert_allclose(model.layers[0].kernel.numpy(), y, atol=1e-5, err_msg=f"y after step {t}")
    with optim.evaluation_weights(model, optimizer):
        np.testing.assert_allclose(model.layers[0].kernel.numpy(), x, atol=1e-5, err_msg="x, the evaluated weights")
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), y, atol=1e-5, err_msg="y after the evaluation")


def test_every_evaluation_has_its_checkpoint(tmp_path):
    """history.jsonl never runs ahead of ckpt/: a run whose ckpt/ is then lost is refused, not restarted over."""
    result, _ = run(tmp_path, config(steps=10, eval_every=5, save_every_steps=0, keep_last=5))
    assert result["checkpoints"].saved_steps == [5, 10]
    assert [r["step"] for r in result["history"]] == [5, 10]


def test_the_loops_evaluation_equals_evaluate_on_the_plain_model(tmp_path):
    """The loop evaluates through a compiled forward pass (dropout off), with the same loss as the eager model."""
    result, _ = run(tmp_path, config(steps=6, eval_every=6, eval_batch_size=5))
    _, val_ids = token_stream()
    plain, _ = train.evaluate(result["model"], data.validation_batches(val_ids, 8, 5))
    assert result["val_loss"] == pytest.approx(plain, abs=1e-5)


@pytest.mark.parametrize("sample_at_eval, expected", [(True, 2), (False, 0)])
def test_samples_at_evaluations_only_when_asked(tmp_path, sample_at_eval, expected):
    calls = []
    run(
        tmp_path,
        config(steps=10, eval_every=5, sample_at_eval=sample_at_eval),
        sample_fn=lambda m: calls.append(1) or "x",
    )
    assert len(calls) == expected


def test_a_full_disk_during_fits_own_save_is_one_error_and_leaves_no_debris(tmp_path, monkeypatch):
    """fit calls the managers' save itself (save_if_best's best.save); a save that a full disk breaks ends the run
    with the CheckpointError that names the folder, and what it half-wrote is gone."""
    import errno

    from lmkit import loop
    from lmkit.errors import CheckpointError

    def save_if_best_on_a_full_disk(manager, val_loss, best_val_loss, step):
        (tmp_path / "best" / f"best-{step}_temp").mkdir(parents=True)  # what an interrupted save leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train, "save_if_best", save_if_best_on_a_full_disk)  # what fit calls
    train_ids, val_ids = token_stream()
    with pytest.raises(CheckpointError) as error:
        loop.train(
            BlocksLM,
            train_ids,
            val_ids,
            config(steps=6, eval_every=3),
            tmp_path,
            functions=train.FUNCTIONS,
            progress=False,
            log=lambda line: None,
        )
    message = str(error.value)
    assert "could not write checkpoint best-3" in message and str(tmp_path / "best") in message, message
    assert "\n" not in message and not list((tmp_path / "best").glob("best-3*")), message
