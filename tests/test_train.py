"""Part 5 (20 points with the hidden tests): `train_step` and `evaluate`, checked on a tiny model defined here.

The model is an embedding followed by a dense projection to the vocabulary, so these tests depend on no other
part of the assignment. References are computed independently with NumPy (the loss) and `tf.GradientTape` on a
hand-written cross-entropy (the gradients); an SGD step with learning rate `lr` moves every weight by exactly
`-lr * gradient`, which makes the applied (clipped) gradient visible in the weights.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import assert_close, assert_shape

from assignment import train

V, T = 7, 5  # vocabulary size, sequence length


class TinyLM(keras.Model):
    """Embedding (V, D) -> optional dropout -> Dense(V): logits `(B, T, V)`. Not a student model.

    The embedding is looked up by a one-hot product rather than `tf.gather`, so its gradient is a dense tensor
    and every way of computing the global norm agrees.
    """

    def __init__(self, dim=4, scale=1.0, dropout=0.0, seed=1):
        super().__init__()
        self.table = self.add_weight(
            name="embedding", shape=(V, dim), initializer=keras.initializers.RandomNormal(stddev=scale, seed=seed)
        )
        self.drop = keras.layers.Dropout(dropout, seed=seed)
        kernel = keras.initializers.RandomNormal(stddev=scale, seed=seed + 1)
        self.out = keras.layers.Dense(
            V, kernel_initializer=kernel, bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 2)
        )

    def call(self, tokens, training=False):
        x = tf.matmul(tf.one_hot(tokens, V), self.table)  # (B, T, D)
        return self.out(self.drop(x, training=training))  # (B, T, V)


def tiny_model(**kwargs):
    model = TinyLM(**kwargs)
    model(tf.zeros((1, T), tf.int32))
    return model


def batch(seed, size=3):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, V, (size, T)).astype(np.int32)
    labels = rng.integers(0, V, (size, T)).astype(np.int32)
    return inputs, labels


def reference_token_losses(model, inputs, labels):
    """Returns -log softmax(logits)[label] for every token, `(B, T)`, in float64 NumPy."""
    logits = np.asarray(model(inputs, training=False), np.float64)  # (B, T, V)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1)[..., 0]  # (B, T)


def reference_gradients(model, inputs, labels):
    """Returns the gradients (dense NumPy arrays) of the mean token cross-entropy, in trainable_variables order."""
    with tf.GradientTape() as tape:
        log_probs = tf.nn.log_softmax(model(inputs, training=False))  # (B, T, V)
        loss = -tf.reduce_mean(tf.gather(log_probs, labels, batch_dims=2))
    return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)]


def weights_of(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def global_norm(arrays):
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


@pytest.mark.points(1)
def test_train_step_returns_scalar_loss_and_grad_norm():
    model = tiny_model()
    inputs, labels = batch(0)
    out = train.train_step(model, keras.optimizers.SGD(0.1), inputs, labels, clip_norm=1.0)
    assert isinstance(out, (tuple, list)) and len(out) == 2, "train_step must return (loss, grad_norm)"
    loss, grad_norm = out
    assert_shape(loss, (), "loss (a scalar)")
    assert_shape(grad_norm, (), "grad_norm (a scalar)")
    assert np.isfinite(float(loss)) and np.isfinite(float(grad_norm)), "loss and grad_norm must be finite numbers"


@pytest.mark.points(3)
def test_train_step_loss_is_mean_token_cross_entropy_before_the_update():
    model = tiny_model()
    inputs, labels = batch(1)
    expected = reference_token_losses(model, inputs, labels).mean()
    loss, _ = train.train_step(model, keras.optimizers.SGD(0.1), inputs, labels, clip_norm=1.0)
    assert_close(
        float(loss),
        expected,
        "loss: the mean over all B*T tokens of the cross-entropy computed from the "
        "logits (from_logits=True), before the weights change",
        atol=1e-5,
    )


@pytest.mark.points(2)
def test_train_step_lowers_the_loss_on_a_fixed_batch():
    model = tiny_model()
    optimizer = keras.optimizers.Adam(0.05)
    inputs, labels = batch(2)
    step = tf.function(lambda x, y: train.train_step(model, optimizer, x, y, clip_norm=1.0))  # the loop compiles it
    first = float(step(inputs, labels)[0])
    for _ in range(40):
        last = float(step(inputs, labels)[0])
    assert last < first - 0.5, (
        f"40 Adam steps on one batch should lower its loss clearly; went from {first:.4f} to "
        f"{last:.4f}. Are the gradients applied to model.trainable_variables?"
    )


@pytest.mark.points(3)
def test_train_step_clips_gradients_to_the_global_norm():
    model = tiny_model(scale=3.0)  # large weights: large gradients
    inputs, labels = batch(3)
    grads = reference_gradients(model, inputs, labels)
    norm, clip_norm = global_norm(grads), 0.05
    assert norm > 10 * clip_norm  # the test's own premise: these gradients must be clipped
    before = weights_of(model)
    train.train_step(model, keras.optimizers.SGD(learning_rate=1.0), inputs, labels, clip_norm=clip_norm)
    applied = [b - a for b, a in zip(before, weights_of(model))]  # SGD with lr 1: the applied gradient
    assert_close(
        global_norm(applied), clip_norm, "global norm of the applied (clipped) gradients", atol=1e-6, rtol=1e-4
    )
    for got, g, v in zip(applied, grads, model.trainable_variables):
        assert_close(
            got,
            g * (clip_norm / norm),
            f"applied gradient of {v.path} (all gradients scaled by one "
            "factor, clip_norm / global_norm, so the direction is kept)",
            atol=1e-6,
            rtol=1e-4,
        )


@pytest.mark.points(1)
def test_train_step_reports_the_gradient_norm_before_clipping():
    model = tiny_model(scale=3.0)
    inputs, labels = batch(4)
    norm = global_norm(reference_gradients(model, inputs, labels))
    _, grad_norm = train.train_step(model, keras.optimizers.SGD(1.0), inputs, labels, clip_norm=0.05)
    assert_close(float(grad_norm), norm, "grad_norm: the global norm of all gradients before clipping", rtol=1e-4)


@pytest.mark.points(2)
def test_train_step_applies_small_gradients_unchanged():
    model = tiny_model()
    inputs, labels = batch(5)
    grads = reference_gradients(model, inputs, labels)
    assert global_norm(grads) < 1000.0
    before = weights_of(model)
    _, grad_norm = train.train_step(model, keras.optimizers.SGD(learning_rate=0.5), inputs, labels, clip_norm=1000.0)
    for b, a, g, v in zip(before, weights_of(model), grads, model.trainable_variables):
        assert_close(
            b - a,
            0.5 * g,
            f"update of {v.path} with SGD(learning_rate=0.5) and a gradient norm below "
            "clip_norm: -0.5 * gradient, unclipped",
            atol=1e-6,
            rtol=1e-4,
        )
    assert_close(float(grad_norm), global_norm(grads), "grad_norm", rtol=1e-4)


def uneven_dataset(model, sizes=(4, 4, 1)):
    """Returns a dataset of batches of `sizes` sequences and the expected per-token mean loss over all of them."""
    inputs, labels = batch(6, size=sum(sizes))
    labels[-1] = np.argmax(np.asarray(model(inputs[-1:]))[0], axis=-1)  # the short last batch: an easy one
    losses = reference_token_losses(model, inputs, labels)  # (N, T)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(sizes[0])
    return dataset, losses


@pytest.mark.points(3)
def test_evaluate_is_the_token_mean_over_uneven_batches():
    model = tiny_model()
    dataset, losses = uneven_dataset(model)
    expected = losses.mean()  # every token counted once
    mean_of_batch_means = np.mean([losses[:4].mean(), losses[4:8].mean(), losses[8:].mean()])
    assert abs(expected - mean_of_batch_means) > 0.05  # the test's own premise: the two differ
    loss, _ = train.evaluate(model, dataset)
    assert_close(
        float(loss),
        expected,
        "evaluate loss over batches of 4, 4 and 1 sequences: the mean over all "
        "tokens (not the mean of the per-batch means)",
        atol=1e-5,
    )


@pytest.mark.points(1)
def test_evaluate_perplexity_is_exp_of_the_loss():
    model = tiny_model()
    dataset, losses = uneven_dataset(model)
    loss, perplexity = train.evaluate(model, dataset)
    assert_close(float(perplexity), math.exp(losses.mean()), "perplexity = exp(mean token loss)", rtol=1e-5)
    assert_close(float(perplexity), math.exp(float(loss)), "perplexity = exp(the loss evaluate returns)", rtol=1e-6)
