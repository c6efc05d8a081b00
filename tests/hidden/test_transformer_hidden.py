"""Part 4, hidden tests (5 of the 25 points): batches of masks, other sizes, independent sequences, dropout."""

import math

import numpy as np
import pytest
from checks import assert_close, assert_shape

V, C, D, NH, L = 11, 10, 12, 3, 2  # vocabulary, context length, width, heads (of 4), layers
CORE = dict(vocab_size=V, context_length=C, d_model=D, num_heads=NH, num_layers=L)


def _normal(shape, seed, scale=1.0):
    return np.random.default_rng(seed).normal(0.0, scale, size=shape).astype(np.float32)


def _tokens(batch, time, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(batch, time)).astype(np.int32)


def attention(q, k, v, mask):
    """Probe: scaled_dot_product_attention(q, k, v, mask) as (out, weights)."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    mask = None if mask is None else tf.constant(mask)
    out, weights = transformer.scaled_dot_product_attention(tf.constant(q), tf.constant(k), tf.constant(v), mask)
    return np.asarray(out), np.asarray(weights)


def mha_without_bias(num_heads, x, weight_seed):
    """Probe: a MultiHeadSelfAttention(num_heads, use_bias=False) with random weights: its wq, wk, wv, wo and
    output on `x`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    layer = transformer.MultiHeadSelfAttention(num_heads=num_heads, use_bias=False)
    x = tf.constant(x)
    layer(x)
    rng = np.random.default_rng(weight_seed)
    for w in layer.weights:
        w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))
    return {
        "weights": {n: np.asarray(getattr(layer, n)) for n in ("wq", "wk", "wv", "wo")},
        "out": np.asarray(layer(x)),
    }


def lm_calls(config, calls, twin=None):
    """Probe: a TransformerLanguageModel(config) with random weights (seed 1, scale 0.3); each call is (tokens,
    training, which) where which is "model" or "twin" (a model of `twin` config holding the same weights)."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    def build(options):
        model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**options))
        model(tf.zeros((1, 2), tf.int32))
        return model

    models = {"model": build(config)}
    rng = np.random.default_rng(1)
    for w in models["model"].weights:
        w.assign(rng.normal(0.0, 0.3, size=tuple(w.shape)).astype("float32"))
    if twin is not None:
        models["twin"] = build(twin)
        for w, w0 in zip(models["twin"].weights, models["model"].weights):
            w.assign(w0)
    return [np.asarray(models[which](tf.constant(tokens), training=training)) for tokens, training, which in calls]


def _softmax_reference(q, k, v, mask):
    q64, k64, v64 = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.where(mask, q64 @ np.swapaxes(k64, -1, -2) / math.sqrt(q.shape[-1]), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return weights @ v64, weights


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.scaled_dot_product_attention: The leading axes `...` of q, k, v and mask broadcast as in"
)
def test_attention_applies_a_different_mask_to_each_batch_element(student):
    q, k, v = _normal((3, 2, 4, 5), 1), _normal((3, 2, 6, 5), 2), _normal((3, 2, 6, 3), 3)
    rng = np.random.default_rng(4)
    mask = rng.random((3, 1, 4, 6)) < 0.6  # (B, 1, T, S): one mask per sequence, shared by its heads
    mask[..., 0] = True
    out, weights = student.run(attention, q, k, v, mask)
    ref_out, ref_weights = _softmax_reference(q, k, v, mask)
    assert_shape(weights, (3, 2, 4, 6), "attention weights with a (B, 1, T, S) mask")
    assert_close(weights, ref_weights, "attention weights with a (B, 1, T, S) mask (broadcast over heads)", atol=1e-5)
    assert_close(out, ref_out, "attention output with a (B, 1, T, S) mask", atol=1e-5)


@pytest.mark.points(1)
@pytest.mark.clause("transformer.MultiHeadSelfAttention: use_bias: bool, whether the four projections have biases.")
def test_multi_head_attention_matches_keras_without_biases(student):
    x = _normal((3, 7, 10), 1)  # B=3, T=7, D=10: 2 heads of 5
    result = student.run(mha_without_bias, 2, x, 5)
    w = result["weights"]
    batch, time = x.shape[:2]

    def heads(z):  # (B, T, nh*hs) -> (B, nh, T, hs)
        return z.reshape(batch, time, 2, -1).transpose(0, 2, 1, 3)

    q, k, v = (heads(x.astype(np.float64) @ w["w" + n]) for n in "qkv")
    out, _ = _softmax_reference(q, k, v, np.tril(np.ones((time, time), bool)))
    expected = out.transpose(0, 2, 1, 3).reshape(batch, time, -1) @ w["wo"]
    assert_close(
        result["out"],
        expected,
        "MultiHeadSelfAttention(num_heads=2, use_bias=False) vs keras.layers.MultiHeadAttention's equation",
        atol=1e-5,
    )


@pytest.mark.points(1)
def test_sequences_of_a_batch_do_not_mix(student):
    tokens = _tokens(3, C, seed=2)
    calls = [(tokens, False, "model")] + [(tokens[i : i + 1], False, "model") for i in range(3)]
    together, *alone = student.run(lm_calls, dict(CORE, tie_embeddings=False), calls)
    for i in range(3):
        assert_close(
            together[i],
            alone[i][0],
            f"logits of sequence {i} read in a batch of 3 vs alone (a reshape that mixes batch, time or heads?)",
            atol=1e-5,
        )


@pytest.mark.points(1)
def test_last_logits_depend_on_every_earlier_token(student):
    tokens = _tokens(1, C, seed=3)
    calls = [(tokens, False, "model")]
    positions = (0, C // 2, C - 2)
    for t in positions:
        changed = tokens.copy()
        changed[0, t] = (changed[0, t] + 1) % V
        calls.append((changed, False, "model"))
    base, *moved = student.run(lm_calls, CORE, calls)
    for t, logits in zip(positions, moved):
        assert np.abs(logits[0, -1] - base[0, -1]).max() > 1e-4, (
            f"changing the token at position {t} left the last position's logits unchanged: the last query must "
            "attend to every earlier key"
        )


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.DecoderBlock: dropout is active only when True",
    "transformer.TransformerLanguageModel: dropout is active only when True",
)
def test_dropout_is_active_only_when_training(student):
    tokens = _tokens(2, C, seed=4)
    calls = [(tokens, False, "twin"), (tokens, False, "model"), (tokens, True, "twin")]
    inference, without, training = student.run(lm_calls, dict(CORE, dropout=0.0), calls, twin=dict(CORE, dropout=0.3))
    assert_close(
        inference,
        without,
        "logits of a model with dropout=0.3 at inference (training=False) vs the same weights without dropout",
        atol=1e-6,
    )
    assert np.abs(training - without).max() > 1e-3, (
        "with dropout=0.3 and training=True the logits did not change: pass training=training to every dropout"
    )
