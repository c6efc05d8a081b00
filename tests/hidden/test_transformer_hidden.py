"""Part 4, hidden tests (5 of the 25 points): batches of masks, other sizes, independent sequences, dropout."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import assert_close, assert_shape

from assignment import transformer

V, C, D, NH, L = 11, 10, 12, 3, 2  # vocabulary, context length, width, heads (of 4), layers


def _normal(shape, seed, scale=1.0):
    return tf.constant(np.random.default_rng(seed).normal(0.0, scale, size=shape), tf.float32)


def _tokens(batch, time, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, V, size=(batch, time)), tf.int32)


def _randomize(layer, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0.0, scale, size=tuple(w.shape)).astype("float32"))


def _model(randomize=True, **overrides):
    options = dict(vocab_size=V, context_length=C, d_model=D, num_heads=NH, num_layers=L)
    options.update(overrides)
    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**options))
    model(_tokens(1, 2))
    if randomize:
        _randomize(model)
    return model


@pytest.mark.points(1)
def test_attention_applies_a_different_mask_to_each_batch_element():
    q, k, v = _normal((3, 2, 4, 5), 1), _normal((3, 2, 6, 5), 2), _normal((3, 2, 6, 3), 3)
    rng = np.random.default_rng(4)
    mask = rng.random((3, 1, 4, 6)) < 0.6  # (B, 1, T, S): one mask per sequence, shared by its heads
    mask[..., 0] = True
    out, weights = transformer.scaled_dot_product_attention(q, k, v, tf.constant(mask))
    q64, k64, v64 = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.where(mask, q64 @ np.swapaxes(k64, -1, -2) / math.sqrt(5), -np.inf)
    ref_weights = np.exp(scores - scores.max(-1, keepdims=True))
    ref_weights /= ref_weights.sum(-1, keepdims=True)
    assert_shape(weights, (3, 2, 4, 6), "attention weights with a (B, 1, T, S) mask")
    assert_close(weights, ref_weights, "attention weights with a (B, 1, T, S) mask (broadcast over heads)", atol=1e-5)
    assert_close(out, ref_weights @ v64, "attention output with a (B, 1, T, S) mask", atol=1e-5)


@pytest.mark.points(1)
def test_multi_head_attention_matches_keras_without_biases():
    x = _normal((3, 7, 10), 1)  # B=3, T=7, D=10: 2 heads of 5
    layer = transformer.MultiHeadSelfAttention(num_heads=2, use_bias=False)
    layer(x)
    ref = keras.layers.MultiHeadAttention(num_heads=2, key_dim=5, use_bias=False)
    ref(x, x, use_causal_mask=True)
    _randomize(ref, seed=5, scale=0.5)
    layer.wq.assign(tf.reshape(ref.query_dense.kernel, (10, 10)))  # (D, nh, hs) -> (D, nh*hs)
    layer.wk.assign(tf.reshape(ref.key_dense.kernel, (10, 10)))
    layer.wv.assign(tf.reshape(ref.value_dense.kernel, (10, 10)))
    layer.wo.assign(tf.reshape(ref.output_dense.kernel, (10, 10)))  # (nh, hs, D) -> (nh*hs, D)
    assert_close(
        layer(x),
        ref(x, x, use_causal_mask=True),
        "MultiHeadSelfAttention(num_heads=2, use_bias=False) vs keras.layers.MultiHeadAttention",
        atol=1e-5,
    )


@pytest.mark.points(1)
def test_sequences_of_a_batch_do_not_mix():
    model = _model(tie_embeddings=False)
    tokens = _tokens(3, C, seed=2)
    together = model(tokens)
    for i in range(3):
        assert_close(
            together[i],
            model(tokens[i : i + 1])[0],
            f"logits of sequence {i} read in a batch of 3 vs alone (a reshape that mixes batch, time or heads?)",
            atol=1e-5,
        )


@pytest.mark.points(1)
def test_last_logits_depend_on_every_earlier_token():
    model = _model()
    tokens = np.asarray(_tokens(1, C, seed=3))
    base = np.asarray(model(tf.constant(tokens)))[0, -1]
    for t in (0, C // 2, C - 2):
        changed = tokens.copy()
        changed[0, t] = (changed[0, t] + 1) % V
        moved = np.abs(np.asarray(model(tf.constant(changed)))[0, -1] - base).max()
        assert moved > 1e-4, (
            f"changing the token at position {t} left the last position's logits unchanged: the last query must "
            "attend to every earlier key"
        )


@pytest.mark.points(1)
def test_dropout_is_active_only_when_training():
    with_dropout = _model(dropout=0.3)
    without = _model(dropout=0.0)
    for w, w0 in zip(with_dropout.weights, without.weights):
        w.assign(w0)
    tokens = _tokens(2, C, seed=4)
    assert_close(
        with_dropout(tokens, training=False),
        without(tokens),
        "logits of a model with dropout=0.3 at inference (training=False) vs the same weights without dropout",
        atol=1e-6,
    )
    assert np.abs(np.asarray(with_dropout(tokens, training=True)) - np.asarray(without(tokens))).max() > 1e-3, (
        "with dropout=0.3 and training=True the logits did not change: pass training=training to every dropout"
    )
