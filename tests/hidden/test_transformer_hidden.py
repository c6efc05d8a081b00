"""Part 4, hidden tests (5 of the 25 points): batches of masks, other sizes, independent sequences, dropout."""

import math

import numpy as np
import pytest
from checks import assert_close, assert_shape
from reference_transformer import (
    assert_matches_model,
    check_loaded,
    draw_weights,
    load_weights,
    model_weight_shapes,
    np_model,
)

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


def mha_without_bias(num_heads, x, weights):
    """Probe: a MultiHeadSelfAttention(num_heads, use_bias=False) holding `weights` (wq, wk, wv, wo): its weights
    read back and its output on `x`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    layer = transformer.MultiHeadSelfAttention(num_heads=num_heads, use_bias=False)
    x = tf.constant(x)
    layer(x)
    return {"loaded": load_weights(layer, weights), "out": np.asarray(layer(x))}


def lm_session(config, runs):
    """Probe: one TransformerLanguageModel(TransformerConfig(**config)); for each run (weights, tokens, training)
    its weights read back and its logits on `tokens`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**config))
    model(tf.zeros((1, 2), tf.int32))
    results = []
    for weights, tokens, training in runs:
        loaded = load_weights(model, weights)
        results.append({"loaded": loaded, "logits": np.asarray(model(tf.constant(tokens), training=training))})
    return results


def _model_runs(student, config, runs):
    """Runs (weights, tokens, training) on one model of `config`; checks each run's weights read back."""
    results = student.run(lm_session, config, runs, uses=(load_weights,))
    for (weights, _, _), result in zip(runs, results):
        check_loaded(result["loaded"], weights, "TransformerLanguageModel")
    return [r["logits"] for r in results]


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
    w = draw_weights({"wq": (10, 10), "wk": (10, 10), "wv": (10, 10), "wo": (10, 10)}, 5, scale=0.5)
    result = student.run(mha_without_bias, 2, x, w, uses=(load_weights,))
    check_loaded(result["loaded"], w, "MultiHeadSelfAttention(num_heads=2, use_bias=False)")
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
    config = dict(CORE, tie_embeddings=False)
    weights = draw_weights(model_weight_shapes(config), 1)
    runs = [(weights, tokens, False)] + [(weights, tokens[i : i + 1], False) for i in range(3)]
    together, *alone = _model_runs(student, config, runs)
    assert_matches_model(together, config, weights, tokens, "an untied model on a batch of 3")
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
    weights = draw_weights(model_weight_shapes(CORE), 1)
    runs = [(weights, tokens, False)]
    positions = (0, C // 2, C - 2)
    for t in positions:
        changed = tokens.copy()
        changed[0, t] = (changed[0, t] + 1) % V
        runs.append((weights, changed, False))
    base, *moved = _model_runs(student, CORE, runs)
    for (_, batch, _), logits in zip(runs, [base, *moved]):
        assert_matches_model(logits, CORE, weights, batch, "the model")
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
    config = dict(CORE, dropout=0.3)
    weights = draw_weights(model_weight_shapes(config), 1)
    inference, training = _model_runs(student, config, [(weights, tokens, False), (weights, tokens, True)])
    assert_matches_model(inference, config, weights, tokens, "a model with dropout=0.3 at inference (training=False)")
    assert np.abs(training - np_model(config, weights, tokens)).max() > 1e-3, (
        "with dropout=0.3 and training=True the logits did not change: pass training=training to every dropout"
    )
    # Embedding dropout: with blocks whose branches output zeros, x reaches the final norm as dropout(embeddings).
    # With dropout=0.999 nearly every position loses all of its D elements, and LayerNorm(0) = beta, so its logits
    # are beta times the transposed embedding; without embedding dropout no position gives those logits.
    config = dict(CORE, dropout=0.999)
    weights = draw_weights(model_weight_shapes(config), 2)
    silent = {p: np.zeros_like(w) if ".attention." in p or ".mlp." in p else w for p, w in weights.items()}
    inference, training = _model_runs(student, config, [(silent, tokens, False), (silent, tokens, True)])
    assert_matches_model(inference, config, silent, tokens, "a model whose blocks' branches output zeros")
    dropped = np.asarray(silent["final_norm.beta"], np.float64) @ np.asarray(silent["token_embedding"], np.float64).T
    all_dropped = np.all(np.abs(training - dropped) < 1e-4, axis=-1)  # (B, T): positions that lost every element
    assert all_dropped.mean() >= 0.5, (
        f"with dropout=0.999 and training=True, only {all_dropped.sum()} of {all_dropped.size} positions had their "
        "token-plus-position embedding dropped: apply self.embedding_dropout(x, training=training) to the embeddings"
    )
