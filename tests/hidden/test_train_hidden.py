"""Part 5, hidden tests (4 points): padding weights in `train_step` and `evaluate`, and evaluation mode."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import assert_close

from assignment import train

V, T = 7, 5


class TinyLM(keras.Model):
    """Embedding (V, D) by a one-hot product -> optional dropout -> Dense(V): logits `(B, T, V)`."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.table = self.add_weight(
            name="embedding", shape=(V, 4), initializer=keras.initializers.RandomNormal(seed=11)
        )
        self.drop = keras.layers.Dropout(dropout, seed=11)
        self.out = keras.layers.Dense(V, kernel_initializer=keras.initializers.RandomNormal(seed=12))

    def call(self, tokens, training=False):
        x = tf.matmul(tf.one_hot(tokens, V), self.table)  # (B, T, D)
        return self.out(self.drop(x, training=training))  # (B, T, V)


def tiny_model(**kwargs):
    model = TinyLM(**kwargs)
    model(tf.zeros((1, T), tf.int32))
    return model


def padded_batch(seed, size=4):
    """Returns inputs, labels and weights `(size, T)`: sequences of different lengths, padded with zeros."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, V, (size, T)).astype(np.int32)
    labels = rng.integers(1, V, (size, T)).astype(np.int32)
    lengths = np.array([T, 2, 4, 1][:size])
    weights = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)  # (B, T)
    inputs[weights == 0] = 0
    labels[weights == 0] = 0
    return inputs, labels, weights


def token_losses(model, inputs, labels):
    logits = np.asarray(model(inputs, training=False), np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1)[..., 0]


@pytest.mark.points(2)
def test_evaluate_counts_only_weighted_tokens():
    model = tiny_model()
    inputs, labels, weights = padded_batch(0)
    losses = token_losses(model, inputs, labels)
    expected = (losses * weights).sum() / weights.sum()
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels, weights)).batch(3)  # batches of 3 and 1
    loss, perplexity = train.evaluate(model, dataset)
    assert_close(
        float(loss),
        expected,
        "evaluate loss when the dataset yields (inputs, labels, weights): "
        "sum(w * ce) / sum(w) over the whole dataset, padding (w = 0) left out",
        atol=1e-5,
    )
    assert_close(float(perplexity), np.exp(expected), "perplexity", rtol=1e-5)


@pytest.mark.points(1)
def test_train_step_ignores_padding_tokens():
    model = tiny_model()
    inputs, labels, weights = padded_batch(1)
    expected = (token_losses(model, inputs, labels) * weights).sum() / weights.sum()
    loss, _ = train.train_step(model, keras.optimizers.SGD(0.1), inputs, labels, clip_norm=1.0, sample_weight=weights)
    assert_close(float(loss), expected, "train_step loss with sample_weight: sum(w * ce) / sum(w)", atol=1e-5)

    # Changing the labels of padding positions must change nothing.
    relabelled = np.where(weights == 0, (labels + 3) % V, labels).astype(np.int32)
    a, b = tiny_model(), tiny_model()
    b.set_weights(a.get_weights())
    train.train_step(a, keras.optimizers.SGD(1.0), inputs, labels, clip_norm=100.0, sample_weight=weights)
    train.train_step(b, keras.optimizers.SGD(1.0), inputs, relabelled, clip_norm=100.0, sample_weight=weights)
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        assert_close(
            va.numpy(),
            vb.numpy(),
            f"{va.path} after a step: labels at padding positions (weight 0) must not affect the update",
            atol=1e-6,
        )


@pytest.mark.points(1)
def test_evaluate_runs_the_model_in_inference_mode():
    model = tiny_model(dropout=0.5)
    inputs, labels, _ = padded_batch(2)
    expected = token_losses(model, inputs, labels).mean()  # training=False: dropout off
    loss, _ = train.evaluate(model, tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(2))
    assert_close(
        float(loss),
        expected,
        "evaluate loss of a model with dropout: evaluate must call the model with "
        "training=False (no dropout), so the same data always gives the same loss",
        atol=1e-5,
    )
