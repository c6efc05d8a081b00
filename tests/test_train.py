"""Part 5 (20 points with the hidden tests): `train_step` and `evaluate`, checked on a tiny model defined here.

The model is an embedding followed by a dense projection to the vocabulary, so these tests depend on no other
part of the assignment. References are computed independently with NumPy from the tiny model's weights: the loss,
and the gradients of the mean token cross-entropy (written out by hand for this model); an SGD step with learning
rate `lr` moves every weight by exactly `-lr * gradient`, which makes the applied (clipped) gradient visible in the
weights.
"""

import math

import numpy as np
import pytest
from checks import assert_close, assert_shape

V, T = 7, 5  # vocabulary size, sequence length


# ---------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return plain data (see grading/runtime/probes.py)
# ---------------------------------------------------------------------------------------------------------------


def _tiny(vocab, length, dim=4, scale=1.0, dropout=0.0, seed=1, gather=False):
    """A built TinyLM: embedding (V, D) by a one-hot product -> optional dropout -> Dense(V), logits `(B, T, V)`.
    Not a student model (a probe helper). The one-hot product makes the embedding's gradient a dense tensor; with
    `gather`, the embedding is looked up with tf.gather as in real models, and its gradient is a tf.IndexedSlices
    holding one row per token (a repeated token's rows are separate parts of one row of the dense gradient)."""
    import keras
    import tensorflow as tf

    class TinyLM(keras.Model):
        def __init__(self):
            super().__init__()
            self.table = self.add_weight(
                name="embedding",
                shape=(vocab, dim),
                initializer=keras.initializers.RandomNormal(stddev=scale, seed=seed),
            )
            self.drop = keras.layers.Dropout(dropout, seed=seed)
            self.out = keras.layers.Dense(
                vocab,
                kernel_initializer=keras.initializers.RandomNormal(stddev=scale, seed=seed + 1),
                bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 2),
            )

        def call(self, tokens, training=False):
            if gather:
                x = tf.gather(self.table, tokens)  # (B, T, D)
            else:
                x = tf.matmul(tf.one_hot(tokens, vocab), self.table)  # (B, T, D)
            return self.out(self.drop(x, training=training))  # (B, T, V)

    model = TinyLM()
    model(tf.zeros((1, length), tf.int32))
    return model


def train_steps(model_kwargs, inputs, labels, optimizer, learning_rate, clip_norm, steps=1, compiled=False):
    """Probe: the tiny model's weights, then `steps` calls of train_step (inside tf.function when `compiled`), then
    its weights again; returns the weights, and the type, length and values of what each call returned."""
    import keras
    import numpy as np
    import tensorflow as tf

    from assignment import train

    model = _tiny(**model_kwargs)
    opt = getattr(keras.optimizers, optimizer)(learning_rate=learning_rate)
    before = [np.asarray(v) for v in model.trainable_variables]

    def step(x, y):
        return train.train_step(model, opt, x, y, clip_norm=clip_norm)

    if compiled:
        step = tf.function(step)  # the training loop compiles it
    outputs = []
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
    return {
        "before": before,
        "after": [np.asarray(v) for v in model.trainable_variables],
        "paths": [v.path for v in model.trainable_variables],
        "outputs": outputs,
    }


def tiny_weights(model_kwargs):
    """Probe: the tiny model's trainable variables (embedding, kernel, bias) as built."""
    import numpy as np

    return [np.asarray(v) for v in _tiny(**model_kwargs).trainable_variables]


def evaluate_on(model_kwargs, tensors, batch_size):
    """Probe: train.evaluate(tiny model, tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size))."""
    import tensorflow as tf

    from assignment import train

    dataset = tf.data.Dataset.from_tensor_slices(tuple(tensors)).batch(batch_size)
    loss, perplexity = train.evaluate(_tiny(**model_kwargs), dataset)
    return float(loss), float(perplexity)


# ---------------------------------------------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------------------------------------------


def batch(seed, size=3):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, V, (size, T)).astype(np.int32)
    labels = rng.integers(0, V, (size, T)).astype(np.int32)
    return inputs, labels


def reference_logits(weights, inputs):
    """The tiny model's logits `(B, T, V)` without dropout, in float64."""
    table, kernel, bias = (np.asarray(w, np.float64) for w in weights)
    return table[inputs] @ kernel + bias


def reference_token_losses(weights, inputs, labels):
    """Returns -log softmax(logits)[label] for every token, `(B, T)`, in float64 NumPy."""
    logits = reference_logits(weights, inputs)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1)[..., 0]  # (B, T)


def reference_gradients(weights, inputs, labels):
    """Returns the gradients of the mean token cross-entropy with respect to (embedding, kernel, bias)."""
    table, kernel, _ = (np.asarray(w, np.float64) for w in weights)
    logits = reference_logits(weights, inputs)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    d_logits = (probs - np.eye(V)[labels]) / labels.size  # (B, T, V)
    x = table[inputs]  # (B, T, D)
    d_x = d_logits @ kernel.T  # (B, T, D)
    d_table = np.zeros_like(table)
    np.add.at(d_table, inputs, d_x)
    return [d_table, np.einsum("btd,btv->dv", x, d_logits), d_logits.sum(axis=(0, 1))]


def global_norm(arrays):
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def _steps(student, inputs, labels, optimizer, lr, clip_norm, model_kwargs=None, **kwargs):
    kwargs_ = dict(vocab=V, length=T, **(model_kwargs or {}))
    return student.run(train_steps, kwargs_, inputs, labels, optimizer, lr, clip_norm, uses=(_tiny,), **kwargs)


def _pair(output):
    assert output["type"] in ("tuple", "list") and output["length"] == 2, "train_step must return (loss, grad_norm)"
    return output["values"]


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.train_step: Returns `(loss, grad_norm)` after one optimizer update of `model` on one batch.",
    "train.train_step: loss: float32 scalar tensor, the weighted mean cross-entropy per token, computed *before* the",
    "train.train_step: grad_norm: float32 scalar tensor, the global norm of the gradients *before* clipping.",
)
def test_train_step_returns_scalar_loss_and_grad_norm(student):
    inputs, labels = batch(0)
    loss, grad_norm = _pair(_steps(student, inputs, labels, "SGD", 0.1, 1.0)["outputs"][0])
    assert_shape(loss, (), "loss (a scalar)")
    assert_shape(grad_norm, (), "grad_norm (a scalar)")
    assert np.isfinite(float(loss)) and np.isfinite(float(grad_norm)), "loss and grad_norm must be finite numbers"
    for name, value in (("loss", loss), ("grad_norm", grad_norm)):
        assert value.dtype == np.float32, f"{name} must be a float32 scalar tensor, got dtype {value.dtype}"


@pytest.mark.points(2.5)
@pytest.mark.clause(
    "train.train_step: loss: float32 scalar tensor, the weighted mean cross-entropy per token, computed *before* the",
    "train.train_step: None means every token has weight 1.",
)
def test_train_step_loss_is_mean_token_cross_entropy_before_the_update(student):
    inputs, labels = batch(1)
    result = _steps(student, inputs, labels, "SGD", 0.1, 1.0)
    expected = reference_token_losses(result["before"], inputs, labels).mean()
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
    inputs, labels = batch(7)
    result = _steps(student, inputs, labels, "SGD", 0.1, 1.0, model_kwargs={"dropout": 0.5})
    loss, _ = _pair(result["outputs"][0])
    without_dropout = reference_token_losses(result["before"], inputs, labels).mean()
    assert abs(float(loss) - without_dropout) > 1e-3, (
        f"with a model holding dropout=0.5, train_step's loss {float(loss):.6f} equals the loss without dropout "
        f"({without_dropout:.6f}): call the model with training=True inside the tape, or dropout (and every other "
        "training-only behaviour) never acts during training"
    )


@pytest.mark.points(2)
@pytest.mark.clause(
    "train.train_step: Runs eagerly and inside `tf.function`",
    "train.train_step: Returns `(loss, grad_norm)` after one optimizer update of `model` on one batch.",
)
def test_train_step_lowers_the_loss_on_a_fixed_batch(student):
    inputs, labels = batch(2)
    outputs = _steps(student, inputs, labels, "Adam", 0.05, 1.0, steps=41, compiled=True)["outputs"]
    first, last = float(_pair(outputs[0])[0]), float(_pair(outputs[-1])[0])
    assert last < first - 0.5, (
        f"40 Adam steps on one batch should lower its loss clearly; went from {first:.4f} to "
        f"{last:.4f}. Are the gradients applied to model.trainable_variables?"
    )


@pytest.mark.points(2.5)
@pytest.mark.clause(
    "train.train_step: The gradients of all trainable variables, taken together as one long vector, are scaled down"
)
def test_train_step_clips_gradients_to_the_global_norm(student):
    inputs, labels = batch(3)
    clip_norm = 0.05
    result = _steps(student, inputs, labels, "SGD", 1.0, clip_norm, model_kwargs={"scale": 3.0})  # large gradients
    grads = reference_gradients(result["before"], inputs, labels)
    norm = global_norm(grads)
    assert norm > 10 * clip_norm  # the test's own premise: these gradients must be clipped
    applied = [b - a for b, a in zip(result["before"], result["after"])]  # SGD with lr 1: the applied gradient
    assert_close(
        global_norm(applied), clip_norm, "global norm of the applied (clipped) gradients", atol=1e-6, rtol=1e-4
    )
    for got, g, path in zip(applied, grads, result["paths"]):
        assert_close(
            got,
            g * (clip_norm / norm),
            f"applied gradient of {path} (all gradients scaled by one "
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
    result = _steps(student, inputs, labels, "SGD", 1.0, 0.05, model_kwargs={"scale": 3.0})
    norm = global_norm(reference_gradients(result["before"], inputs, labels))
    _, grad_norm = _pair(result["outputs"][0])
    assert_close(float(grad_norm), norm, "grad_norm: the global norm of all gradients before clipping", rtol=1e-4)
    # The embedding looked up with tf.gather, as in the transformer: its gradient is a tf.IndexedSlices whose rows
    # repeat for a repeated token (15 tokens of 7 ids here); the norm is that of the summed, dense gradient.
    result = _steps(student, inputs, labels, "SGD", 1.0, 0.05, model_kwargs={"scale": 3.0, "gather": True})
    norm = global_norm(reference_gradients(result["before"], inputs, labels))
    _, grad_norm = _pair(result["outputs"][0])
    assert_close(
        float(grad_norm),
        norm,
        "grad_norm of a model whose embedding is looked up with tf.gather: its gradient is a tf.IndexedSlices "
        "with one row per token; the norm of the dense gradient (repeated rows summed, tf.convert_to_tensor) is "
        "wanted, not the norm of the separate rows",
        rtol=1e-4,
    )


@pytest.mark.points(2)
@pytest.mark.clause(
    "train.train_step: The gradients of all trainable variables, taken together as one long vector, are scaled down"
)
def test_train_step_applies_small_gradients_unchanged(student):
    inputs, labels = batch(5)
    result = _steps(student, inputs, labels, "SGD", 0.5, 1000.0)
    grads = reference_gradients(result["before"], inputs, labels)
    assert global_norm(grads) < 1000.0
    for b, a, g, path in zip(result["before"], result["after"], grads, result["paths"]):
        assert_close(
            b - a,
            0.5 * g,
            f"update of {path} with SGD(learning_rate=0.5) and a gradient norm below "
            "clip_norm: -0.5 * gradient, unclipped",
            atol=1e-6,
            rtol=1e-4,
        )
    _, grad_norm = _pair(result["outputs"][0])
    assert_close(float(grad_norm), global_norm(grads), "grad_norm", rtol=1e-4)


def evaluate_types(model_kwargs, tensors, batch_size):
    """Probe: for each value train.evaluate returns on the tiny model, its type name and whether it is a float."""
    import tensorflow as tf

    from assignment import train

    dataset = tf.data.Dataset.from_tensor_slices(tuple(tensors)).batch(batch_size)
    return [(type(v).__name__, isinstance(v, float)) for v in train.evaluate(_tiny(**model_kwargs), dataset)]


def uneven_data(student, sizes=(4, 4, 1)):
    """Returns (inputs, labels) of batches of `sizes` sequences and the per-token losses of the tiny model on them."""
    weights = student.run(tiny_weights, dict(vocab=V, length=T), uses=(_tiny,))
    inputs, labels = batch(6, size=sum(sizes))
    labels[-1] = np.argmax(reference_logits(weights, inputs[-1:])[0], axis=-1)  # the short last batch: an easy one
    return inputs, labels, reference_token_losses(weights, inputs, labels)  # (N, T)


@pytest.mark.points(2.5)
@pytest.mark.clause(
    "train.evaluate: the sum over all batches of `sum(w * ce)`, divided by the sum over all batches of `sum(w)`",
    "train.evaluate: this is not the mean of the per-batch means",
)
def test_evaluate_is_the_token_mean_over_uneven_batches(student):
    inputs, labels, losses = uneven_data(student)
    expected = losses.mean()  # every token counted once
    mean_of_batch_means = np.mean([losses[:4].mean(), losses[4:8].mean(), losses[8:].mean()])
    assert abs(expected - mean_of_batch_means) > 0.05  # the test's own premise: the two differ
    loss, _ = student.run(evaluate_on, dict(vocab=V, length=T), [inputs, labels], 4, uses=(_tiny,))
    assert_close(
        float(loss),
        expected,
        "evaluate loss over batches of 4, 4 and 1 sequences: the mean over all "
        "tokens (not the mean of the per-batch means)",
        atol=1e-5,
    )


@pytest.mark.points(1)
@pytest.mark.clause("train.evaluate: `perplexity = exp(loss)`", "train.evaluate: `inf` once exp overflows a float")
def test_evaluate_perplexity_is_exp_of_the_loss(student):
    inputs, labels, losses = uneven_data(student)
    loss, perplexity = student.run(evaluate_on, dict(vocab=V, length=T), [inputs, labels], 4, uses=(_tiny,))
    assert_close(float(perplexity), math.exp(losses.mean()), "perplexity = exp(mean token loss)", rtol=1e-5)
    assert_close(float(perplexity), math.exp(float(loss)), "perplexity = exp(the loss evaluate returns)", rtol=1e-6)
    # Weights 100 times larger: logits of about 1e4, a loss far past 709.78, where exp overflows a float.
    loss, perplexity = student.run(
        evaluate_on, dict(vocab=V, length=T, scale=100.0), [inputs, labels], 4, uses=(_tiny,)
    )
    assert float(loss) > 710  # the test's own premise
    assert float(perplexity) == math.inf, (
        f"a loss of {float(loss):.0f} nats per token: exp(loss) overflows a float, so the perplexity is inf "
        f"(math.exp raises OverflowError there: catch it, or compare the loss with ~709.78); got {perplexity}"
    )


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "train.evaluate: Returns `(loss, perplexity)` of `model` over the whole `dataset`, as Python floats."
)
def test_evaluate_returns_python_floats(student):
    inputs, labels = batch(8, size=5)
    types = student.run(evaluate_types, dict(vocab=V, length=T), [inputs, labels], 2, uses=(_tiny,))
    assert len(types) == 2 and all(is_float for _, is_float in types), (
        f"evaluate must return (loss, perplexity) as two Python floats, got {[name for name, _ in types]}: "
        "convert with float(...) "
        "(the training loop writes them to JSON and compares them with other runs)"
    )
