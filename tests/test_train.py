"""Part 5 (20 points with the hidden tests): `train_step` and `evaluate`, checked on a tiny model defined here;
then the loop's checkpoints and tracking (`make_managers`, `restore_latest`, `save_due`, `save_if_best`,
`write_summaries`) on small trackables and clocks the tests choose, the event files read back without TensorFlow;
last `fit`, the loop, on a stand-in for the given Run whose losses and clock the tests choose.

The model is an embedding followed by a dense projection to the vocabulary, so these tests depend on no other
part of the assignment. The test draws its weights with NumPy and sends them; the probes give them to the tiny
model and return only what the student's code returned, the weights read back before it ran (which must be the
ones sent) and the weights after it. Every expected value is computed here with NumPy from the test's own weights:
the loss, the gradients of the mean token cross-entropy (written out by hand for this model), their global norm,
and the updates: an SGD step with learning rate `lr` moves every weight by exactly `-lr * (clipped) gradient`, and
Adam steps are replayed with Keras's Adam formula.
"""

import math

import numpy as np
import pytest
from checks import assert_close, assert_shape, summary_values
from reference_tiny import (
    NAMES,
    T,
    V,
    assert_weights_sent,
    model_weights,
    reference_gradients,
    reference_logits,
    reference_token_losses,
    tiny_model,
)

# ---------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return plain data (see grading/runtime/probes.py)
# ---------------------------------------------------------------------------------------------------------------


def train_steps(model_kwargs, weights, inputs, labels, optimizer, learning_rate, clip_norm, steps=1, compiled=False):
    """Probe: the tiny model given the test's `weights`, its weights read back, then `steps` calls of train_step
    (inside tf.function when `compiled`), each followed by the weights read back; returns the weights, and the type,
    length and values of what each call returned."""
    import keras
    import numpy as np
    import tensorflow as tf

    from assignment import train

    model, variables = tiny_model(weights, **model_kwargs)
    opt = getattr(keras.optimizers, optimizer)(learning_rate=learning_rate)
    before = [np.asarray(v) for v in variables]

    def step(x, y):
        return train.train_step(model, opt, x, y, clip_norm=clip_norm)

    if compiled:
        step = tf.function(step)  # the training loop compiles it
    outputs, after = [], []
    for _ in range(steps):
        out = step(tf.constant(inputs), tf.constant(labels))
        is_pair = isinstance(out, list | tuple)
        outputs.append(
            {
                "type": type(out).__name__,
                "values": [np.asarray(v) for v in out] if is_pair else np.asarray(out),
                "length": len(out) if is_pair else None,
            }
        )
        after.append([np.asarray(v) for v in variables])
    return {"before": before, "after": after, "outputs": outputs}


def evaluate_on(model_kwargs, weights, tensors, batch_size):
    """Probe: the tiny model given the test's `weights`, its weights read back, then train.evaluate(model,
    tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size)); returns the weights and, for each value evaluate
    returned, its type name and the value as a float when it is a float (else None)."""
    import numpy as np
    import tensorflow as tf

    from assignment import train

    model, variables = tiny_model(weights, **model_kwargs)
    before = [np.asarray(v) for v in variables]
    dataset = tf.data.Dataset.from_tensor_slices(tuple(tensors)).batch(batch_size)
    out = train.evaluate(model, dataset)
    values = [(type(v).__name__, float(v) if isinstance(v, float) else None) for v in out]
    return {"before": before, "values": values}


# ---------------------------------------------------------------------------------------------------------------
# The test's data and NumPy references
# ---------------------------------------------------------------------------------------------------------------


def batch(seed, size=3):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, V, (size, T)).astype(np.int32)
    labels = rng.integers(0, V, (size, T)).astype(np.int32)
    return inputs, labels


def global_norm(arrays):
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def clipped(grads, clip_norm):
    """The gradients scaled together to global norm `clip_norm` when theirs is larger (tf.clip_by_global_norm)."""
    norm = global_norm(grads)
    return [g * min(1.0, clip_norm / norm) for g in grads]


def adam_replay(weights, inputs, labels, learning_rate, clip_norm, steps):
    """Keras's Adam (beta_1 0.9, beta_2 0.999, epsilon 1e-7) on the clipped gradients, replayed in float64: returns
    the loss and gradient norm before each step and the weights after each step."""
    b1, b2, eps = 0.9, 0.999, 1e-7
    w = [np.asarray(x, np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    losses, norms, after = [], [], []
    for t in range(1, steps + 1):
        losses.append(reference_token_losses(w, inputs, labels).mean())
        grads = reference_gradients(w, inputs, labels)
        norms.append(global_norm(grads))
        lr_t = learning_rate * math.sqrt(1 - b2**t) / (1 - b1**t)
        for i, g in enumerate(clipped(grads, clip_norm)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            w[i] = w[i] - lr_t * m[i] / (np.sqrt(v[i]) + eps)
        after.append([x.copy() for x in w])
    return losses, norms, after


def _steps(student, weights, inputs, labels, optimizer, lr, clip_norm, model_kwargs=None, **kwargs):
    model_kwargs = dict(length=T, **(model_kwargs or {}))
    result = student.run(
        train_steps, model_kwargs, weights, inputs, labels, optimizer, lr, clip_norm, uses=(tiny_model,), **kwargs
    )
    assert_weights_sent(result["before"], weights, "before train_step")
    return result


def _pair(output):
    assert output["type"] in ("tuple", "list") and output["length"] == 2, "train_step must return (loss, grad_norm)"
    return output["values"]


def assert_sgd_update(before, after, grads, lr, what):
    """SGD with learning rate `lr` moves every weight by exactly -lr * the applied gradient."""
    assert len(after) == len(before), f"expected {len(before)} weights after train_step, got {len(after)}"
    for name, b, a, g in zip(NAMES, before, after, grads):
        assert_close(b - a, lr * g, f"update of {name} ({what})", atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "train.train_step: Returns `(loss, grad_norm)` after one optimizer update of `model` on one batch.",
    "train.train_step: loss: float32 scalar tensor, the weighted mean cross-entropy per token, computed *before* the",
    "train.train_step: grad_norm: float32 scalar tensor, the global norm of the gradients *before* clipping.",
)
def test_train_step_returns_scalar_loss_and_grad_norm(student):
    inputs, labels = batch(0)
    weights = model_weights(0)
    result = _steps(student, weights, inputs, labels, "SGD", 0.1, 1.0)
    loss, grad_norm = _pair(result["outputs"][0])
    assert_shape(loss, (), "loss (a scalar)")
    assert_shape(grad_norm, (), "grad_norm (a scalar)")
    assert np.isfinite(float(loss)) and np.isfinite(float(grad_norm)), "loss and grad_norm must be finite numbers"
    for name, value in (("loss", loss), ("grad_norm", grad_norm)):
        assert value.dtype == np.float32, f"{name} must be a float32 scalar tensor, got dtype {value.dtype}"
    grads = reference_gradients(weights, inputs, labels)
    assert_close(float(loss), reference_token_losses(weights, inputs, labels).mean(), "loss", atol=1e-5)
    assert_close(float(grad_norm), global_norm(grads), "grad_norm", rtol=1e-4)
    assert_sgd_update(
        weights, result["after"][0], clipped(grads, 1.0), 0.1, "one SGD(learning_rate=0.1) update, clip_norm 1.0"
    )


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "train.train_step: loss: float32 scalar tensor, the weighted mean cross-entropy per token, computed *before* the",
    "train.train_step: None means every token has weight 1.",
)
def test_train_step_loss_is_mean_token_cross_entropy_before_the_update(student):
    inputs, labels = batch(1)
    weights = model_weights(1)
    result = _steps(student, weights, inputs, labels, "SGD", 0.1, 1.0)
    expected = reference_token_losses(weights, inputs, labels).mean()
    loss, _ = _pair(result["outputs"][0])
    assert_close(
        float(loss),
        expected,
        "loss: the mean over all B*T tokens of the cross-entropy computed from the "
        "logits (from_logits=True), before the weights change",
        atol=1e-5,
    )


@pytest.mark.points(1)
@pytest.mark.clause("train.train_step: The model runs in training mode (`training=True`), so its dropout is active.")
def test_train_step_runs_the_model_in_training_mode(student):
    # The tiny model holds a test layer that adds 1.5 to every activation in training mode and nothing otherwise
    # (as dropout acts only in training mode, but deterministically), so the loss and the update of a training-mode
    # call are known exactly here.
    inputs, labels = batch(7)
    weights, shift = model_weights(7), 1.5
    result = _steps(student, weights, inputs, labels, "SGD", 0.5, 1000.0, model_kwargs={"shift": shift})
    loss, _ = _pair(result["outputs"][0])
    expected = reference_token_losses(weights, inputs, labels, shift).mean()
    inference = reference_token_losses(weights, inputs, labels).mean()
    assert abs(expected - inference) > 0.1  # the test's own premise: the two modes differ
    assert abs(float(loss) - inference) > 1e-3, (
        f"train_step's loss {float(loss):.6f} is the loss of the model in inference mode ({inference:.6f}): call "
        "the model with training=True inside the tape, or dropout (and every other training-only behaviour) never "
        "acts during training"
    )
    assert_close(float(loss), expected, "loss of the model called in training mode (training=True)", atol=1e-5)
    grads = reference_gradients(weights, inputs, labels, shift)
    assert global_norm(grads) < 1000.0
    assert_sgd_update(
        weights, result["after"][0], grads, 0.5, "SGD(learning_rate=0.5): the gradient of the training-mode loss"
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.train_step: Runs eagerly and inside `tf.function`",
    "train.train_step: Returns `(loss, grad_norm)` after one optimizer update of `model` on one batch.",
)
def test_train_step_inside_tf_function_applies_clipped_adam_steps(student):
    # Four compiled steps of keras.optimizers.Adam on one batch, replayed here: each step's loss and gradient norm,
    # and the weights after each step; the clip norm lies between the gradient norms of the steps, so some are
    # clipped and some are not.
    inputs, labels = batch(2)
    weights, lr, clip_norm, steps = model_weights(2), 0.05, 0.82, 4
    result = _steps(student, weights, inputs, labels, "Adam", lr, clip_norm, steps=steps, compiled=True)
    losses, norms, after = adam_replay(weights, inputs, labels, lr, clip_norm, steps)
    assert max(norms) > clip_norm > min(norms)  # the test's own premise: clipping acts on some steps only
    assert len(result["outputs"]) == steps
    for t, (output, got) in enumerate(zip(result["outputs"], result["after"]), start=1):
        loss, grad_norm = _pair(output)
        assert_close(float(loss), losses[t - 1], f"loss returned by compiled step {t}, before its update", atol=2e-5)
        assert_close(float(grad_norm), norms[t - 1], f"grad_norm returned by compiled step {t}", rtol=1e-4)
        for name, g, e in zip(NAMES, got, after[t - 1]):
            assert_close(
                g,
                e,
                f"{name} after compiled step {t} of Adam(learning_rate={lr}) on the gradients clipped to global "
                f"norm {clip_norm} (one optimizer.apply_gradients per call, on model.trainable_variables)",
                atol=1e-5,
                rtol=1e-4,
            )


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "train.train_step: The gradients of all trainable variables, taken together as one long vector, are scaled down"
)
def test_train_step_clips_gradients_to_the_global_norm(student):
    inputs, labels = batch(3)
    weights, clip_norm = model_weights(3, scale=3.0), 0.05  # large gradients
    result = _steps(student, weights, inputs, labels, "SGD", 1.0, clip_norm)
    grads = reference_gradients(weights, inputs, labels)
    norm = global_norm(grads)
    assert norm > 10 * clip_norm  # the test's own premise: these gradients must be clipped
    applied = [b - a for b, a in zip(weights, result["after"][0])]  # SGD with lr 1: the applied gradient
    assert_close(
        global_norm(applied), clip_norm, "global norm of the applied (clipped) gradients", atol=1e-6, rtol=1e-4
    )
    for got, g, name in zip(applied, grads, NAMES):
        assert_close(
            got,
            g * (clip_norm / norm),
            f"applied gradient of {name} (all gradients scaled by one "
            "factor, clip_norm / global_norm, so the direction is kept)",
            atol=1e-6,
            rtol=1e-4,
        )


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.train_step: grad_norm: float32 scalar tensor, the global norm of the gradients *before* clipping."
)
def test_train_step_reports_the_gradient_norm_before_clipping(student):
    inputs, labels = batch(4)
    weights = model_weights(4, scale=3.0)
    norm = global_norm(reference_gradients(weights, inputs, labels))
    assert norm > 0.05  # the test's own premise: the gradients are clipped
    result = _steps(student, weights, inputs, labels, "SGD", 1.0, 0.05)
    _, grad_norm = _pair(result["outputs"][0])
    assert_close(float(grad_norm), norm, "grad_norm: the global norm of all gradients before clipping", rtol=1e-4)
    # The embedding looked up with tf.gather, as in the transformer: its gradient is a tf.IndexedSlices whose rows
    # repeat for a repeated token (15 tokens of 7 ids here); the norm is that of the summed, dense gradient.
    result = _steps(student, weights, inputs, labels, "SGD", 1.0, 0.05, model_kwargs={"gather": True})
    _, grad_norm = _pair(result["outputs"][0])
    assert_close(
        float(grad_norm),
        norm,
        "grad_norm of a model whose embedding is looked up with tf.gather: its gradient is a tf.IndexedSlices "
        "with one row per token; the norm of the dense gradient (repeated rows summed, tf.convert_to_tensor) is "
        "wanted, not the norm of the separate rows",
        rtol=1e-4,
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.train_step: The gradients of all trainable variables, taken together as one long vector, are scaled down"
)
def test_train_step_applies_small_gradients_unchanged(student):
    inputs, labels = batch(5)
    weights = model_weights(5)
    result = _steps(student, weights, inputs, labels, "SGD", 0.5, 1000.0)
    grads = reference_gradients(weights, inputs, labels)
    assert global_norm(grads) < 1000.0
    assert_sgd_update(
        weights,
        result["after"][0],
        grads,
        0.5,
        "SGD(learning_rate=0.5) and a gradient norm below clip_norm: -0.5 * gradient, unclipped",
    )
    _, grad_norm = _pair(result["outputs"][0])
    assert_close(float(grad_norm), global_norm(grads), "grad_norm", rtol=1e-4)


def _evaluate(student, weights, inputs, labels, batch_size):
    """The values train.evaluate returned on the tiny model holding `weights`, as [(type name, float or None)]."""
    result = student.run(evaluate_on, dict(length=T), weights, [inputs, labels], batch_size, uses=(tiny_model,))
    assert_weights_sent(result["before"], weights, "before evaluate")
    return result["values"]


def _floats(values):
    assert len(values) == 2 and all(v is not None for _, v in values), (
        f"evaluate must return (loss, perplexity) as two Python floats, got {[name for name, _ in values]}: "
        "convert with float(...) (the training loop writes them to JSON and compares them with other runs)"
    )
    return [v for _, v in values]


def uneven_data(weights, sizes=(4, 4, 1)):
    """Returns (inputs, labels) of batches of `sizes` sequences and the per-token losses of the tiny model on them."""
    inputs, labels = batch(6, size=sum(sizes))
    labels[-1] = np.argmax(reference_logits(weights, inputs[-1:])[0], axis=-1)  # the short last batch: an easy one
    return inputs, labels, reference_token_losses(weights, inputs, labels)  # (N, T)


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "train.evaluate: the sum over all batches of `sum(w * ce)`, divided by the sum over all batches of `sum(w)`",
    "train.evaluate: this is not the mean of the per-batch means",
)
def test_evaluate_is_the_token_mean_over_uneven_batches(student):
    weights = model_weights(6)
    inputs, labels, losses = uneven_data(weights)
    expected = losses.mean()  # every token counted once
    mean_of_batch_means = np.mean([losses[:4].mean(), losses[4:8].mean(), losses[8:].mean()])
    assert abs(expected - mean_of_batch_means) > 0.05  # the test's own premise: the two differ
    loss, _ = _floats(_evaluate(student, weights, inputs, labels, 4))
    assert_close(
        loss,
        expected,
        "evaluate loss over batches of 4, 4 and 1 sequences: the mean over all "
        "tokens (not the mean of the per-batch means)",
        atol=1e-5,
    )


@pytest.mark.points(1)
@pytest.mark.clause("train.evaluate: `perplexity = exp(loss)`", "train.evaluate: `inf` once exp overflows a float")
def test_evaluate_perplexity_is_exp_of_the_loss(student):
    weights = model_weights(6)
    inputs, labels, losses = uneven_data(weights)
    loss, perplexity = _floats(_evaluate(student, weights, inputs, labels, 4))
    assert_close(perplexity, math.exp(losses.mean()), "perplexity = exp(mean token loss)", rtol=1e-5)
    assert_close(perplexity, math.exp(loss), "perplexity = exp(the loss evaluate returns)", rtol=1e-6)
    # Weights 100 times larger: logits of about 1e4, a loss far past 709.78, where exp overflows a float.
    large = [w * np.float32(100.0) for w in weights]
    expected = reference_token_losses(large, inputs, labels).mean()
    assert expected > 720  # the test's own premise
    loss, perplexity = _floats(_evaluate(student, large, inputs, labels, 4))
    assert_close(loss, expected, "evaluate loss of a model with weights 100 times larger", rtol=1e-5)
    assert perplexity == math.inf, (
        f"a loss of {loss:.0f} nats per token: exp(loss) overflows a float, so the perplexity is inf "
        f"(math.exp raises OverflowError there: catch it, or compare the loss with ~709.78); got {perplexity}"
    )


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "train.evaluate: Returns `(loss, perplexity)` of `model` over the whole `dataset`, as Python floats."
)
def test_evaluate_returns_python_floats(student):
    inputs, labels = batch(8, size=5)
    weights = model_weights(8)
    loss, perplexity = _floats(_evaluate(student, weights, inputs, labels, 2))
    expected = reference_token_losses(weights, inputs, labels).mean()
    assert_close(loss, expected, "the loss evaluate returns (the mean token cross-entropy)", atol=1e-5)
    assert_close(perplexity, math.exp(expected), "the perplexity evaluate returns", rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The loop's checkpoints and tracking: make_managers, restore_latest, save_due, save_if_best, write_summaries.
# The probes build small trackables (a Dense layer's weights, an Adam optimizer, a step variable), set them to
# values the test chose, call the student's function and return what is on disk or what was restored; every
# expected value is computed here.
# ---------------------------------------------------------------------------------------------------------------


def _trackables(dense_in, dense_out):
    """Probe helper: `(objects, best_objects, layer, optimizer)` as the given loop builds them (a step variable, the
    weights of a built Dense layer, an Adam optimizer built on them, the best validation loss), with fresh values."""
    import math

    import keras
    import tensorflow as tf

    layer = keras.layers.Dense(dense_out)
    layer.build((None, dense_in))
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(layer.trainable_variables)
    model = tf.Module()
    model.values = [v.value for v in layer.variables]
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_val_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
    objects = dict(step=step, model=model, optimizer=optimizer, best_val_loss=best_val_loss)
    best_objects = dict(step=step, val_loss=best_val_loss, model=model)
    return objects, best_objects, layer, optimizer


def optimizer_slots(dense_in, dense_out):
    """Probe: the shapes and dtypes of the Adam optimizer's variables on the Dense layer (given code only)."""
    _, _, _, optimizer = _trackables(dense_in, dense_out)
    return [(tuple(v.shape), v.dtype) for v in optimizer.variables]


def _set_state(objects, layer, optimizer, step, weights, slots):
    """Probe helper: assigns the test's step, layer weights and optimizer variables."""
    objects["step"].assign(step)
    for v, value in zip(layer.variables, weights):
        v.assign(value)
    for v, value in zip(optimizer.variables, slots):
        v.assign(value)


def _files(directory):
    import os

    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def managers_on_disk(keep_last, steps):
    """Probe: make_managers in a fresh folder, then `latest.save` and `best.save` numbered by each step; returns the
    managers' types, the file names in ckpt/ and best/, and the variable names in the newest files of each."""
    import tempfile

    import tensorflow as tf

    from assignment import train

    root = tempfile.mkdtemp()
    objects, best_objects, layer, optimizer = _trackables(3, 2)
    latest, best = train.make_managers(root, objects, best_objects, keep_last)
    for step in steps:
        objects["step"].assign(step)
        latest.save(checkpoint_number=step)
        best.save(checkpoint_number=step)
    return {
        "types": [type(latest).__name__, type(best).__name__],
        "ckpt": _files(root + "/ckpt"),
        "best": _files(root + "/best"),
        "ckpt_names": [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(root + "/ckpt"))],
        "best_names": [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(root + "/best"))],
    }


def resume(saves, fresh_step):
    """Probe: session 1 saves, for each `(step, weights, slots)` of `saves`, that state with `latest.save` (as the
    given loop does); session 2 builds new objects (step `fresh_step`, fresh weights), makes the managers on the same
    folder and calls restore_latest. Also restore_latest on a folder with no checkpoint. Returns what it returned
    and the values of the new objects, before and after."""
    import tempfile

    import numpy as np

    from assignment import train

    root = tempfile.mkdtemp()
    objects, best_objects, layer, optimizer = _trackables(3, 2)
    latest, _ = train.make_managers(root, objects, best_objects, 5)
    for step, weights, slots in saves:
        _set_state(objects, layer, optimizer, step, weights, slots)
        latest.save(checkpoint_number=step)

    def state(objects, layer, optimizer):
        return {
            "step": int(objects["step"]),
            "weights": [np.asarray(v) for v in layer.variables],
            "slots": [np.asarray(v) for v in optimizer.variables],
        }

    out = {}
    for name, folder in (("resumed", root), ("fresh", tempfile.mkdtemp())):
        objects, best_objects, layer, optimizer = _trackables(3, 2)
        objects["step"].assign(fresh_step)
        before = state(objects, layer, optimizer)
        latest, _ = train.make_managers(folder, objects, best_objects, 5)
        returned = train.restore_latest(latest)
        out[name] = {"returned": returned, "type": type(returned).__name__, "before": before}
        out[name].update(state(objects, layer, optimizer))
    return out


def best_checkpoints(evaluations):
    """Probe: for each `(step, val_loss, weights)` of `evaluations`, the layer gets those weights and the step, then
    save_if_best(best, val_loss, best_val_loss, step); returns what each call returned, best_val_loss after each,
    the files of best/, and what the newest best checkpoint holds (read back into new objects)."""
    import tempfile

    import numpy as np
    import tensorflow as tf

    from assignment import train

    root = tempfile.mkdtemp()
    objects, best_objects, layer, optimizer = _trackables(3, 2)
    _, best = train.make_managers(root, objects, best_objects, 2)
    returned, best_after = [], []
    for step, val_loss, weights in evaluations:
        _set_state(objects, layer, optimizer, step, weights, [])
        out = train.save_if_best(best, val_loss, objects["best_val_loss"], step)
        returned.append((type(out).__name__, bool(out)))
        best_after.append(float(objects["best_val_loss"].numpy()))
    path = tf.train.latest_checkpoint(root + "/best")
    restored = None
    if path is not None:
        objects, best_objects, layer, _ = _trackables(3, 2)
        tf.train.Checkpoint(**best_objects).restore(path).expect_partial()
        restored = {
            "step": int(best_objects["step"]),
            "val_loss": float(best_objects["val_loss"].numpy()),
            "weights": [np.asarray(v) for v in layer.variables],
        }
    return {"returned": returned, "best_after": best_after, "files": _files(root + "/best"), "restored": restored}


def save_decisions(cases):
    """Probe: save_due(*case) for each case; returns the type name and value of each answer."""
    from assignment import train

    return [(type(out).__name__, bool(out)) for out in (train.save_due(*case) for case in cases)]


def summaries_on_disk(calls):
    """Probe: a new tf.summary file writer, write_summaries(writer, step, scalars, texts) for each call, then the
    bytes of every file in its folder, read before the writer is closed."""
    import os
    import tempfile

    import tensorflow as tf

    from assignment import train

    logdir = tempfile.mkdtemp()
    writer = tf.summary.create_file_writer(logdir)
    for step, scalars, texts in calls:
        train.write_summaries(writer, step, scalars, texts)
    files = {}
    for folder, _, names in os.walk(logdir):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                files[os.path.relpath(os.path.join(folder, name), logdir)] = f.read()
    writer.close()
    return files


def random_state(rng, slots, dense_in=3, dense_out=2):
    """A layer's weights (kernel, bias) and values for every optimizer variable, drawn here from `rng`."""
    weights = [rng.normal(size=(dense_in, dense_out)).astype(np.float32), rng.normal(size=dense_out).astype(np.float32)]
    values = []
    for shape, dtype in slots:
        if "int" in dtype:
            values.append(np.asarray(rng.integers(1, 1000), dtype))
        else:
            values.append(np.abs(rng.normal(size=shape)).astype(dtype))
    return weights, values


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "train.make_managers: Returns `(latest, best)`: two `tf.train.CheckpointManager`s of a run directory.",
    "train.make_managers: saves a `tf.train.Checkpoint` of every entry of `objects` into `<directory>/ckpt/`",
    "train.make_managers: keeps only the newest `keep_last` checkpoints",
    "train.make_managers: saves a `tf.train.Checkpoint` of every entry of `best_objects` into `<directory>/best/`",
    "train.make_managers: keeps only the newest one.",
)
def test_managers_keep_only_the_newest_checkpoints(student):
    steps, keep_last = [10, 20, 30, 40, 50], 3
    out = student.run(managers_on_disk, keep_last, steps, uses=(_trackables, _files))
    assert out["types"] == ["CheckpointManager", "CheckpointManager"], (
        f"make_managers must return two tf.train.CheckpointManager, got {out['types']}"
    )
    for folder, name, kept in (("ckpt", "ckpt", steps[-keep_last:]), ("best", "best", steps[-1:])):
        indexes = sorted(f for f in out[folder] if f.endswith(".index"))
        expected = sorted(f"{name}-{s}.index" for s in kept)
        assert indexes == expected, (
            f"after saves at steps {steps} with keep_last={keep_last if folder == 'ckpt' else 1}, {folder}/ must "
            f"hold the checkpoints {expected} (files named {name}-<number>.*, the oldest deleted: max_to_keep); "
            f"it holds {indexes}"
        )
    for folder, wanted in (("ckpt", ("step", "model", "optimizer", "best_val_loss")), ("best", ("step", "val_loss"))):
        names = out[f"{folder}_names"]
        for key in wanted:
            assert any(n.split("/")[0] == key for n in names), (
                f"the checkpoints of {folder}/ must hold every object they are given, as "
                f"tf.train.Checkpoint(**objects) does; nothing named {key!r} in {sorted(names)[:8]}"
            )


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "train.restore_latest: Restores the newest checkpoint of `manager` and returns the step to resume at.",
    "train.restore_latest: gets the values it had when that checkpoint was saved",
    "train.restore_latest: the restored value of the checkpoint's `step` variable",
    "train.restore_latest: With no checkpoint yet (a fresh run), nothing changes and the step returned is 0.",
    "train.make_managers: Every one of them is saved and restored.",
)
def test_a_resumed_run_continues_at_the_saved_step_with_the_saved_state(student):
    rng = np.random.default_rng(50)
    slots = student.run(optimizer_slots, 3, 2, uses=(_trackables,))
    saves = []
    for step in (120, 240, 360):
        weights, values = random_state(rng, slots)
        saves.append((step, weights, values))
    out = student.run(resume, saves, 7, uses=(_trackables, _set_state))
    step, weights, values = saves[-1]
    resumed = out["resumed"]
    assert resumed["type"] == "int", f"restore_latest must return a Python int, got {resumed['type']}"
    assert resumed["returned"] == step, (
        f"after saves at steps {[s for s, _, _ in saves]}, restore_latest must return the saved step {step} (the "
        f"restored value of manager.checkpoint.step), got {resumed['returned']}"
    )
    assert resumed["step"] == step, f"the step variable must be restored to {step}, it holds {resumed['step']}"
    for got, want, name in zip(resumed["weights"], weights, ("kernel", "bias")):
        assert np.array_equal(got, want), f"the model's {name} must be restored exactly to the newest checkpoint's"
    for i, (got, want) in enumerate(zip(resumed["slots"], values)):
        assert np.array_equal(got, want), (
            f"optimizer variable {i} (of {len(values)}: its step count, Adam's moments) must be restored exactly: "
            "a resumed run without the optimizer's state takes different steps from a run never stopped. Is the "
            "optimizer in the checkpoint (tf.train.Checkpoint(**objects))?"
        )
    fresh = out["fresh"]
    assert fresh["type"] == "int" and fresh["returned"] == 0, (
        f"with no checkpoint in the folder, restore_latest must return 0, got {fresh['returned']!r}"
    )
    before = fresh["before"]
    unchanged = before["step"] == fresh["step"] and all(
        np.array_equal(a, b) for a, b in zip(before["weights"] + before["slots"], fresh["weights"] + fresh["slots"])
    )
    assert unchanged, "with no checkpoint, restore_latest must change nothing (a fresh run keeps its initial weights)"


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "train.save_if_best: Saves the best checkpoint when `val_loss` improves on the lowest validation loss so far",
    "train.save_if_best: True (a Python bool) after a save when `val_loss < best_val_loss`",
    "train.save_if_best: `best_val_loss` then holds `val_loss`.",
    "train.save_if_best: False otherwise, with nothing saved and `best_val_loss` unchanged.",
)
def test_the_best_checkpoint_holds_the_weights_of_the_lowest_validation_loss(student):
    rng = np.random.default_rng(51)
    losses = [3.2, 2.9, 3.0, 2.4, 2.6, 2.5, 3.1]
    evaluations = [(100 * (i + 1), loss, random_state(rng, [])[0]) for i, loss in enumerate(losses)]
    out = student.run(best_checkpoints, evaluations, uses=(_trackables, _set_state, _files))
    lowest, expected_returns, expected_best = np.inf, [], []
    for loss in losses:
        expected_returns.append(loss < lowest)
        lowest = min(lowest, loss)
        expected_best.append(lowest)
    assert all(name == "bool" for name, _ in out["returned"]), (
        f"save_if_best must return a Python bool, got {[name for name, _ in out['returned']]}"
    )
    got_returns = [value for _, value in out["returned"]]
    assert got_returns == expected_returns, (
        f"validation losses {losses}: save_if_best must return True exactly when the loss is lower than every "
        f"earlier one, {expected_returns}; got {got_returns}"
    )
    assert_close(out["best_after"], expected_best, "best_val_loss after each evaluation (the lowest so far)")
    best = int(np.argmin(losses))
    restored = out["restored"]
    assert restored is not None, "best/ holds no checkpoint after the evaluations"
    assert restored["step"] == evaluations[best][0] and restored["val_loss"] == losses[best], (
        f"the best checkpoint must be the one of step {evaluations[best][0]} (validation loss {losses[best]}, the "
        f"lowest); it is the one of step {restored['step']} (val_loss {restored['val_loss']}). Saved at every "
        "evaluation?"
    )
    for got, want, name in zip(restored["weights"], evaluations[best][2], ("kernel", "bias")):
        assert np.array_equal(got, want), f"the best checkpoint's {name} must be the weights of the lowest loss"


def expected_save(step, now, last_step, last_time, every_steps, every_minutes):
    """The test's own rule: due by step count or by time (seconds), never twice at one step."""
    by_steps = every_steps > 0 and step % every_steps == 0
    by_time = every_minutes > 0 and now - last_time >= 60 * every_minutes
    return (by_steps or by_time) and step != last_step


SAVE_CASES = [
    # (step, now, last_step, last_time, every_steps, every_minutes): clocks in seconds, chosen exact in binary
    (500, 1000.0, 499, 990.0, 500, 5.0),  # a multiple of every_steps
    (501, 1000.0, 500, 990.0, 500, 5.0),  # neither
    (501, 1300.0, 500, 1000.0, 500, 5.0),  # exactly 5 minutes later
    (502, 1299.5, 500, 1000.0, 500, 5.0),  # half a second short
    (7, 2000.0, 5, 1970.0, 0, 1.0),  # 2 steps but only 30 s: time is not counted in steps
    (9, 2090.0, 5, 1970.0, 0, 1.0),  # 120 s, off by step count
    (9, 2090.0, 5, 1970.0, 0, 0.0),  # both off
    (1000, 5000.0, 1000, 0.0, 500, 5.0),  # already saved at this step
    (3, 100.0, None, 0.0, 3, 0.0),  # never saved yet
    (4, 100.0, None, 70.0, 3, 0.5),  # 30 s = 0.5 min, the first save
    (4, 99.75, None, 70.0, 3, 0.5),  # 29.75 s
    (100, 1e6 + 90.0, 40, 1e6, 1000, 1.5),  # a clock far from 0: 90 s = 1.5 min
    (5, 130.0, 4, 120.0, 1, 0.0),  # every step
]


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "train.save_due: Returns True when the loop should save a checkpoint after `step`, as a Python bool.",
    "train.save_due: when `step` is a multiple of `every_steps` (0: never by step count)",
    "train.save_due: `now - last_time >= 60 * every_minutes`",
    "train.save_due: (0: never by time)",
    "train.save_due: Never twice at one step: False when `step == last_step`.",
)
def test_save_due_by_steps_or_by_time_on_the_given_clock(student):
    answers = student.run(save_decisions, SAVE_CASES)
    for case, (name, got) in zip(SAVE_CASES, answers):
        step, now, last_step, last_time, every_steps, every_minutes = case
        want = expected_save(*case)
        assert name == "bool", f"save_due must return a Python bool, got {name}"
        assert got == want, (
            f"save_due(step={step}, now={now}, last_step={last_step}, last_time={last_time}, every_steps="
            f"{every_steps}, every_minutes={every_minutes}) must be {want}: {now - last_time:g} s have passed since "
            f"the last save (the clock is in seconds; time is not counted in steps), and a save is never due twice "
            f"at one step; got {got}"
        )


SUMMARY_CALLS = [
    (10, {"train/loss": 3.25, "train/lr": 0.001}, None),
    (20, {"train/loss": 2.75, "train/lr": 0.002}, None),
    (20, {"val/loss": 2.875, "val/perplexity": 17.72}, {"sample": "The cat sat"}),
    (35, {"train/loss": 2.5}, {}),
]


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "train.write_summaries: Writes `scalars` and `texts` to TensorBoard at `step` through `writer`",
    "train.write_summaries: Each scalar `{tag: value}` is one `tf.summary.scalar(tag, value)`",
    "train.write_summaries: each text `{tag: text}` one `tf.summary.text(tag, text)`, all recorded at `step`.",
    "train.write_summaries: When this returns, the event file holds them (the writer is flushed)",
)
def test_write_summaries_records_every_tag_at_its_step_and_flushes(student):
    files = student.run(summaries_on_disk, SUMMARY_CALLS)
    assert isinstance(files, dict) and files, "no event file in the writer's folder"
    values = summary_values(files)
    expected = []
    for step, scalars, texts in SUMMARY_CALLS:
        expected += [(step, tag, "float", value) for tag, value in scalars.items()]
        expected += [(step, tag, "string", text) for tag, text in (texts or {}).items()]
    assert values, (
        "the event files hold no summary after write_summaries returned: flush the writer (writer.flush()), or the "
        "events wait in memory and a killed run loses them"
    )
    got = sorted((s, t, k) for s, t, k, _ in values)
    want = sorted((s, t, k) for s, t, k, _ in expected)
    assert got == want, (
        f"the event files must hold each tag once at the step it was written: (step, tag, kind) {want}; they hold {got}"
    )
    for (step, tag, kind, value), (_, _, _, written) in zip(sorted(expected), sorted(values)):
        if kind == "float":
            assert_close(written, np.float32(value), f"scalar {tag} at step {step}", rtol=1e-6)
        else:
            assert written == value, f"text {tag} at step {step}: expected {value!r}, got {written!r}"


# ---------------------------------------------------------------------------------------------------------------
# fit: the loop itself, run on a stand-in for the given `lmkit.loop.Run` whose data, losses and clock the test
# chooses. What fit does shows in its effects: the records it logs, and the checkpoints on disk with their values.
# ---------------------------------------------------------------------------------------------------------------


def fit_session(config, losses, val_losses, times, start=0, stop_after=None, final_at=None):
    """Probe: the student's fit on a stand-in Run; returns the records fit logged and the checkpoints it saved.

    The stand-in's "model" is one number, `value`: each train_step sets it to the new step, and inside
    `evaluation_weights()` it is negated (as schedule-free AdamW evaluates other weights than it trains). Batch k
    (the k-th of this session) has training loss `losses[step]`; the validation loss at a step is `val_losses[step]`
    when evaluate gets `run.forward` and the right validation data inside the evaluation weights, and 1000 more
    otherwise. The clock reads `times[step]`. `save_if_best`, `save_due` are the student's own; evaluate is the
    stand-in's."""
    import math
    import os
    import tempfile

    import numpy as np
    import tensorflow as tf

    from assignment import train
    from lmkit.loop import TrainConfig

    cfg = TrainConfig(**config)
    root = tempfile.mkdtemp()
    step_var = tf.Variable(start, dtype=tf.int64)
    value = tf.Variable(float(start), dtype=tf.float64)
    saves = tf.Variable(0, dtype=tf.int64)  # how many times run.save() was called, saved with each checkpoint
    best_val_loss = tf.Variable(math.inf, dtype=tf.float64)
    keep_all = dict(max_to_keep=None)
    latest = tf.train.CheckpointManager(
        tf.train.Checkpoint(step=step_var, value=value, saves=saves),
        os.path.join(root, "ckpt"),
        checkpoint_name="ckpt",
        **keep_all,
    )
    best = tf.train.CheckpointManager(
        tf.train.Checkpoint(step=step_var, value=value), os.path.join(root, "best"), checkpoint_name="best", **keep_all
    )
    logged, records = [], []

    class Forward:
        def __call__(self, inputs, training=False):
            raise AssertionError("the stand-in's forward is not called")

    forward = Forward()

    class StandInRun:
        def __init__(self):
            self.latest, self.best, self.best_val_loss, self.forward = latest, best, best_val_loss, forward
            self.final_step, self.window, self.evaluating = None, [], False

        @property
        def step(self):
            return int(step_var)

        def clock(self):
            return float(times[self.step])

        def batches(self):
            while self.step < cfg.steps and self.final_step is None:
                if stop_after is not None and self.step >= stop_after:
                    return
                yield np.full((1, 1), self.step + 1, np.int32), np.zeros((1, 1), np.int32)

        def train_step(self, inputs, labels):
            assert int(np.asarray(inputs)[0, 0]) == self.step + 1, "train_step got another batch than the next one"
            step_var.assign_add(1)
            value.assign(float(self.step))
            self.window.append(losses[self.step])
            return float(losses[self.step]), 1.0

        def is_final(self, step):
            if self.final_step is None and (step >= cfg.steps or step == final_at):
                self.final_step = step
            return self.final_step == step

        def train_scalars(self):
            window, self.window = self.window, []
            return {"train/loss": float(np.mean(window)) if window else float("nan"), "train/steps": float(len(window))}

        def log(self, step, scalars, texts=None):
            logged.append([int(step), {k: float(v) for k, v in scalars.items()}, dict(texts or {})])

        def evaluation_weights(self):
            run = self

            class Swap:
                def __enter__(self):
                    run.evaluating = True
                    value.assign(-value)

                def __exit__(self, *exc):
                    run.evaluating = False
                    value.assign(-value)

            return Swap()

        def validation_data(self, final=False):
            return ("all" if final else "capped",)

        def sample(self):
            return f"sample of {float(value):g}"

        def record(self, step, val_loss, val_perplexity, best):
            records.append([int(step), float(val_loss), float(val_perplexity), bool(best)])

        def save(self):
            saves.assign_add(1)
            return latest.save(checkpoint_number=self.step)

    run = StandInRun()

    def stand_in_evaluate(model, dataset):
        step = run.step
        right = (
            model is forward
            and tuple(dataset) == (("all" if run.final_step == step else "capped"),)
            and run.evaluating
            and float(value) == -step
        )
        loss = val_losses[step] + (0.0 if right else 1000.0)
        return loss, math.exp(min(loss, 700.0))

    real_evaluate, train.evaluate = train.evaluate, stand_in_evaluate
    try:
        train.fit(run, cfg)
    finally:
        train.evaluate = real_evaluate

    def saved(folder, name):
        kept = {}
        for path in tf.io.gfile.glob(os.path.join(root, folder, f"{name}-*.index")):
            prefix = path[: -len(".index")]
            reader = tf.train.load_checkpoint(prefix)
            count = int(reader.get_tensor("saves/.ATTRIBUTES/VARIABLE_VALUE")) if folder == "ckpt" else 0
            kept[int(prefix.rsplit("-", 1)[1])] = (float(reader.get_tensor("value/.ATTRIBUTES/VARIABLE_VALUE")), count)
        return sorted((step, *values) for step, values in kept.items())

    return {
        "logged": logged,
        "records": records,
        "ckpt": saved("ckpt", "ckpt"),
        "best": saved("best", "best"),
        "best_val_loss": float(best_val_loss),
        "step": run.step,
    }


def expected_fit(config, losses, val_losses, times, start=0, stop_after=None, final_at=None):
    """The test's own loop, on the same schedule as fit's docstring: the records logged per step `{step: {tag:
    value}}`, the texts per step, the evaluations `[(step, val_loss, best)]`, the steps saved in ckpt/ and best/."""
    c = config
    logged, texts, evaluations, saves, bests = {}, {}, [], [], []
    step, last_step, last_time, window, best = start, start, times[start], [], math.inf
    while step < c["steps"] and (stop_after is None or step < stop_after):
        step += 1
        window.append(losses[step])
        final = step >= c["steps"] or step == final_at
        evaluating = step % c["eval_every"] == 0 or final
        if step % c["log_every"] == 0 or evaluating:
            logged.setdefault(step, {}).update({"train/loss": float(np.mean(window)), "train/steps": len(window)})
            window = []
        if evaluating:
            val = val_losses[step]
            improved = val < best
            if improved:
                best = val
                bests.append(step)
            logged[step].update({"val/loss": val, "val/perplexity": math.exp(val)})
            texts[step] = {"sample": f"sample of {-step:g}"}
            evaluations.append((step, val, improved))
        due = expected_save(step, times[step], last_step, last_time, c["save_every_steps"], c["save_every_minutes"])
        if evaluating or due:
            saves.append(step)
            last_step, last_time = step, times[step]
        if final:
            break
    if step != last_step:
        saves.append(step)
    return dict(logged=logged, texts=texts, evaluations=evaluations, saves=saves, bests=bests, step=step)


def check_fit(student, what, config, losses, val_losses, times, **kwargs):
    """Runs fit on the stand-in and compares every effect with `expected_fit`; `what` names the schedule."""
    got = student.run(fit_session, config, losses, val_losses, times, **kwargs)
    want = expected_fit(config, losses, val_losses, times, **kwargs)
    assert got["step"] == want["step"], (
        f"{what}: fit must train until run.batches() ends (step {want['step']}); it stopped at step {got['step']}"
    )
    per_step, texts = {}, {}
    for step, scalars, text in got["logged"]:
        for tag, value in scalars.items():
            assert tag not in per_step.get(step, {}), f"{what}: {tag} logged twice at step {step}"
            per_step.setdefault(step, {})[tag] = value
        if text:
            texts.setdefault(step, {}).update(text)
    assert sorted(per_step) == sorted(want["logged"]), (
        f"{what}: records must be logged (run.log) at steps {sorted(want['logged'])}: every log_every steps and at "
        f"every evaluation (every eval_every steps and the final step); fit logged at {sorted(per_step)}"
    )
    for step, scalars in want["logged"].items():
        assert sorted(per_step[step]) == sorted(scalars), (
            f"{what}: at step {step} the records must be {sorted(scalars)} (run.train_scalars(), and at an "
            f"evaluation val/loss and val/perplexity); got {sorted(per_step[step])}"
        )
        for tag, value in scalars.items():
            hint = {
                "train/steps": "call run.train_scalars() once per log, so each log averages the steps since the last",
                "val/loss": "evaluate run.forward on run.validation_data(final=run.is_final(step)), inside "
                "run.evaluation_weights() (a wrong call adds 1000 here)",
            }.get(tag, "")
            assert_close(per_step[step][tag], value, f"{what}: {tag} at step {step} ({hint})", rtol=1e-9)
    assert texts == want["texts"], (
        f"{what}: the text sample (run.sample(), taken inside run.evaluation_weights()) must be logged at each "
        f"evaluation: expected {want['texts']}, got {texts}"
    )
    records = [(s, v, b) for s, v, _, b in got["records"]]
    assert records == want["evaluations"], (
        f"{what}: run.record(step, val_loss, val_perplexity, best) must end every evaluation, with best from "
        f"save_if_best: expected (step, val_loss, best) {want['evaluations']}, got {records}"
    )
    saved_steps = [s for s, _, _ in got["ckpt"]]
    assert saved_steps == want["saves"], (
        f"{what}: checkpoints (run.save()) must be saved at every evaluation, whenever save_due says so (last_step "
        f"and last_time: the step and clock of the last save, or where the loop started) and after the last step; "
        f"expected steps {want['saves']}, fit saved {saved_steps}"
    )
    for n, (step, saved_value, count) in enumerate(got["ckpt"], start=1):
        assert saved_value == step, (
            f"{what}: ckpt-{step} must hold the trained weights of step {step} (save outside "
            f"run.evaluation_weights()); it holds {saved_value:g}"
        )
        assert count == n, (
            f"{what}: ckpt-{step} was written by save number {count}, expected {n}: save once per step, never twice "
            f"at one step (after the loop, only when the last step was not just saved)"
        )
    assert [s for s, _, _ in got["best"]] == want["bests"], (
        f"{what}: the best checkpoint (save_if_best(run.best, ...)) must be saved at the evaluations that improve on "
        f"the lowest validation loss, {want['bests']}; saved at {[s for s, _, _ in got['best']]}"
    )
    for step, saved_value, _ in got["best"]:
        assert saved_value == -step, (
            f"{what}: best-{step} must hold the evaluation weights (save_if_best inside run.evaluation_weights()); "
            f"it holds {saved_value:g}, the trained weights are {step}"
        )


def _fit_data(steps, seed, clock=None):
    rng = np.random.default_rng(seed)
    losses = [float(x) for x in np.round(rng.uniform(1.0, 4.0, steps + 1), 3)]
    val_losses = [float(x) for x in np.round(rng.uniform(1.0, 4.0, steps + 1), 3)]
    times = clock if clock is not None else [1000.0 + 2.0 * i for i in range(steps + 1)]
    return losses, val_losses, times


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.fit: For each batch `(inputs, labels)` of `run.batches()`",
    "train.fit: one update: `run.train_step(inputs, labels)`",
    "train.fit: the step *evaluates* when `step` is a multiple of `config.eval_every` or when `run.is_final(step)`",
    "train.fit: every `config.log_every` steps, and at every evaluation: `run.log(step, run.train_scalars())`",
    "train.fit: at an evaluation, inside `with run.evaluation_weights():`",
    "train.fit: a checkpoint, `run.save()` (the `latest` manager's save, numbered by the step), at every evaluation",
)
def test_fit_trains_logs_evaluates_and_saves_on_schedule(student):
    config = dict(steps=13, log_every=3, eval_every=5, save_every_steps=4, save_every_minutes=0.0)
    check_fit(student, "13 steps, log every 3, evaluate every 5, save every 4", config, *_fit_data(13, 0))


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.fit: whenever `save_due(step, run.clock(), last_step,",
    "train.fit: where `last_step` and `last_time` are the step and `run.clock()` of the last save",
    "train.fit: After the loop, the last step taken is saved unless it was just saved",
)
def test_fit_saves_on_the_clock_and_where_it_stops(student):
    config = dict(steps=30, log_every=4, eval_every=10, save_every_steps=0, save_every_minutes=1.0)
    # 25 s per step, a 100 s pause after step 13: a save is due 60 s after the last one, not every N steps.
    clock = [1000.0 + 25.0 * i + (100.0 if i > 13 else 0.0) for i in range(31)]
    losses, val_losses, _ = _fit_data(30, 1)
    check_fit(student, "saves every minute on the run's clock", config, losses, val_losses, clock)
    # Stopped after step 16 (the given code's stop_at, or a Ctrl-C): 16 is not due, so fit saves it after the loop.
    check_fit(student, "stopped after step 16", config, losses, val_losses, clock, stop_after=16)


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.fit: then `save_if_best(run.best, val_loss, run.best_val_loss, step)` -> `best`",
    "train.fit: `text = run.sample()`",
    "train.fit: `run.record(step, val_loss, val_perplexity, best)`",
)
def test_fit_keeps_the_best_evaluation_weights_and_ends_on_a_final_step(student):
    config = dict(steps=40, log_every=5, eval_every=4, save_every_steps=0, save_every_minutes=0.0)
    losses, _, times = _fit_data(40, 2)
    val_losses = [3.0] * 41
    for step, val in {4: 2.5, 8: 2.75, 12: 2.25, 16: 2.25, 20: 1.5, 24: 1.5, 27: 1.25}.items():
        val_losses[step] = val  # ties at 16 and 24 are no improvement
    check_fit(student, "the best of evaluations with ties", config, losses, val_losses, times)
    check_fit(student, "a time budget ending the session at step 27", config, losses, val_losses, times, final_at=27)


@pytest.mark.points(0.5)
@pytest.mark.clause("train.fit: trains from `run.step` (0, or the step `restore_latest` resumed at)")
def test_fit_resumes_at_the_restored_step(student):
    # Resumed at step 300 of 314 (steps past 256 are new int objects each time: compare them with ==, not `is`).
    config = dict(steps=314, log_every=3, eval_every=6, save_every_steps=5, save_every_minutes=0.5)
    losses, val_losses, _ = _fit_data(314, 3)
    clock = [5000.0 + 7.0 * i for i in range(315)]
    check_fit(student, "resumed at step 300", config, losses, val_losses, clock, start=300)
