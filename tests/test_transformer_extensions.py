"""Part 4, bonus (20 points): RoPE, grouped-query attention, RMSNorm and SwiGLU, the KV cache, and the presets.

RoPE is checked by its properties (position 0 unchanged, lengths kept, scores that depend on relative position
only, rotation angles m * base^(-2p / hs)), so either way of pairing dimensions passes. GQA is compared with full
attention whose key/value weights are repeated for each group; the KV cache with a full recomputation, through the
model's own `prefill` / `decode_step`. The presets use every option at once.
"""

import numpy as np
import pytest
import tensorflow as tf
from checks import assert_close, assert_shape

from assignment import transformer

V, C, D, NH, L = 13, 12, 16, 4, 2  # vocabulary, context length, width, heads (of 4), layers
B = 2
PRESETS = ("gpt2", "olmo", "llama2", "openlm", "falcon", "palm")


def _normal(shape, seed, scale=1.0):
    return tf.constant(np.random.default_rng(seed).normal(0.0, scale, size=shape), tf.float32)


def _tokens(batch, time, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, V, size=(batch, time)), tf.int32)


def _randomize(layer, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0.0, scale, size=tuple(w.shape)).astype("float32"))


def _model(config, randomize=True):
    model = transformer.TransformerLanguageModel(config)
    model(_tokens(1, 2))
    if randomize:
        _randomize(model)
    return model


def _preset(name, **overrides):
    return transformer.TransformerConfig.preset(
        name, vocab_size=V, context_length=C, d_model=D, num_heads=NH, num_layers=L, **overrides
    )


def _rope(x, positions, base=10000.0):
    out = transformer.apply_rope(tf.constant(x, tf.float32), tf.constant(positions, tf.int32), base)
    return np.asarray(out, np.float64)


# ------------------------------------------------------------------------------------------------------------
# RoPE (5 points)


@pytest.mark.bonus
@pytest.mark.points(1)
def test_rope_keeps_position_zero_and_every_vector_length():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 8))  # (B, nh, T, hs)
    positions = [0, 1, 2, 7, 11]
    out = _rope(x, positions)
    assert_shape(out, x.shape, "apply_rope output (..., T, hs)")
    assert_close(out[..., 0, :], x[..., 0, :], "RoPE at position 0 (a rotation by angle 0)", atol=1e-6)
    assert_close(
        np.linalg.norm(out, axis=-1),
        np.linalg.norm(x, axis=-1),
        "vector lengths after RoPE (a rotation keeps lengths; are both members of a pair rotated by the same angle?)",
        atol=1e-5,
    )
    assert np.abs(out[..., 1:, :] - x[..., 1:, :]).max() > 1e-2, "RoPE left vectors at positions > 0 unchanged"


@pytest.mark.bonus
@pytest.mark.points(2)
def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=8), rng.normal(size=8)
    positions = np.arange(16)
    rotated_q = _rope(np.tile(q, (16, 1)), positions)  # (T, hs): q placed at every position
    rotated_k = _rope(np.tile(k, (16, 1)), positions)
    scores = rotated_q @ rotated_k.T  # scores[m, n] = rope(q, m) . rope(k, n)
    assert_close(
        scores[1:, 1:],
        scores[:-1, :-1],
        "RoPE scores rope(q, m+1) . rope(k, n+1) vs rope(q, m) . rope(k, n): they must depend on m - n only",
        atol=1e-4,
    )
    assert abs(scores[5, 0] - scores[0, 0]) > 1e-3, "RoPE scores do not depend on the distance m - n at all"


@pytest.mark.bonus
@pytest.mark.points(1)
def test_rope_rotation_angles_are_position_times_frequency():
    hs, base, position = 6, 100.0, 2
    images = _rope(np.eye(hs)[:, None, :], [position], base)[:, 0, :]  # (hs, hs): the rotation applied to a basis
    assert_close(
        images @ images.T, np.eye(hs), "RoPE as a matrix times its transpose (it must be a rotation)", atol=1e-5
    )
    angles = np.sort(np.abs(np.angle(np.linalg.eigvals(images))))
    expected = np.sort(np.repeat(position * base ** (-2.0 * np.arange(hs // 2) / hs), 2))
    assert_close(
        angles,
        expected,
        f"rotation angles of RoPE at position {position} with hs={hs}, base={base} "
        f"(pair p turns by position * base^(-2p / hs))",
        atol=1e-4,
    )


@pytest.mark.bonus
@pytest.mark.points(1)
def test_rope_model_knows_the_order_of_earlier_tokens():
    model = _model(
        transformer.TransformerConfig(
            vocab_size=V, context_length=C, d_model=D, num_heads=NH, num_layers=L, positions="rope"
        )
    )
    tokens = np.array(_tokens(1, 6, seed=2))
    tokens[0, :2] = (1, 2)
    swapped = tokens.copy()
    swapped[0, :2] = (2, 1)
    logits = np.asarray(model(tf.constant(np.concatenate([tokens, swapped]))))
    assert np.abs(logits[0, -1] - logits[1, -1]).max() > 1e-4, (
        "with positions='rope' and no position embeddings, swapping the first two tokens must change the last "
        "logits: are queries and keys rotated by their positions?"
    )


# ------------------------------------------------------------------------------------------------------------
# GQA / MQA (4 points)


@pytest.mark.bonus
@pytest.mark.points(1)
def test_expand_kv_heads_gives_query_head_h_the_kv_head_h_over_g():
    x = _normal((2, 3, 5, 4), 1)  # (B, nkv=3, S, hs)
    out = transformer.expand_kv_heads(x, 2)
    assert_shape(out, (2, 6, 5, 4), "expand_kv_heads(x (B, 3, S, hs), 2)")
    expected = np.asarray(x)[:, [0, 0, 1, 1, 2, 2]]
    assert_close(
        out,
        expected,
        "expand_kv_heads: head h of the result must be head h // g of x ([a, b, c] -> [a, a, b, b, c, c])",
        atol=0,
    )


def _check_gqa_equals_full(num_kv_heads):
    """GQA with num_kv_heads equals full attention whose wk, wv, bk, bv repeat each kv head for its group."""
    x = _normal((B, 6, D), 3)
    hs, groups = D // NH, NH // num_kv_heads
    gqa = transformer.MultiHeadSelfAttention(num_heads=NH, num_kv_heads=num_kv_heads, use_bias=True)
    full = transformer.MultiHeadSelfAttention(num_heads=NH, use_bias=True)
    gqa(x), full(x)
    _randomize(gqa, scale=0.5)
    assert_shape(gqa.wk, (D, num_kv_heads * hs), f"wk with num_kv_heads={num_kv_heads}")
    for name in ("wq", "bq", "wo", "bo"):
        getattr(full, name).assign(getattr(gqa, name))
    for name in ("wk", "wv", "bk", "bv"):
        w = np.asarray(getattr(gqa, name))
        w = w.reshape(w.shape[:-1] + (num_kv_heads, hs)).repeat(groups, axis=-2)  # (..., nkv, hs) -> (..., nh, hs)
        getattr(full, name).assign(w.reshape(w.shape[:-2] + (NH * hs,)))
    assert_close(
        gqa(x),
        full(x),
        f"attention with {NH} query heads and num_kv_heads={num_kv_heads} vs full attention "
        f"with each key/value head repeated for its group of {groups}",
        atol=1e-5,
    )


@pytest.mark.bonus
@pytest.mark.points(2)
def test_grouped_query_attention_equals_full_attention_with_repeated_kv_heads():
    for num_kv_heads in (NH, 2):  # num_kv_heads == num_heads is plain multi-head attention
        _check_gqa_equals_full(num_kv_heads)


@pytest.mark.bonus
@pytest.mark.points(1)
def test_multi_query_attention_shares_one_kv_head():
    _check_gqa_equals_full(1)


# ------------------------------------------------------------------------------------------------------------
# RMSNorm and SwiGLU (3 points)


@pytest.mark.bonus
@pytest.mark.points(1)
def test_rms_norm_matches_numpy():
    x = np.asarray(_normal((2, 3, 8), 1)) + 2.0  # a non-zero mean: RMSNorm must not subtract it
    layer = transformer.RMSNorm(epsilon=1e-5)
    layer(tf.constant(x))
    scale = np.random.default_rng(2).normal(size=8).astype("float32")
    layer.scale.assign(scale)
    expected = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-5) * scale
    out = layer(tf.constant(x))
    assert_shape(out, x.shape, "RMSNorm output")
    assert_close(
        out, expected, "RMSNorm vs x / sqrt(mean(x^2) + epsilon) * scale (over the last axis, no centering)", atol=1e-5
    )


@pytest.mark.bonus
@pytest.mark.points(1)
def test_swiglu_is_silu_of_the_gate_times_up():
    gate, up = _normal((2, 3, 5), 1, scale=2.0), _normal((2, 3, 5), 2)
    g = np.asarray(gate, np.float64)
    assert_close(
        transformer.swiglu(gate, up),
        g / (1.0 + np.exp(-g)) * np.asarray(up),
        "swiglu(gate, up) vs gate * sigmoid(gate) * up",
        atol=1e-5,
    )


@pytest.mark.bonus
@pytest.mark.points(1)
def test_swiglu_feed_forward_matches_numpy():
    x = _normal((2, 5, D), 1)
    mlp = transformer.FeedForward(hidden_dim=24, activation="swiglu", use_bias=False)
    mlp(x)
    _randomize(mlp, scale=0.5)
    x64 = np.asarray(x, np.float64)
    gate, up = x64 @ np.asarray(mlp.w_gate), x64 @ np.asarray(mlp.w_in)
    expected = (gate / (1.0 + np.exp(-gate)) * up) @ np.asarray(mlp.w_out)
    assert_close(mlp(x), expected, "SwiGLU feed-forward vs (silu(x w_gate) * (x w_in)) w_out", atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# KV cache (5 points)


@pytest.mark.bonus
@pytest.mark.points(1)
def test_update_kv_cache_writes_only_the_new_positions():
    cache = np.asarray(_normal((2, 3, 8, 4), 1))
    new = np.asarray(_normal((2, 3, 2, 4), 2))
    for index in (5, tf.constant(5)):
        out = np.asarray(transformer.update_kv_cache(tf.constant(cache), tf.constant(new), index))
        assert_shape(out, cache.shape, "update_kv_cache output (the cache's own shape)")
        expected = cache.copy()
        expected[:, :, 5:7] = new
        assert_close(
            out,
            expected,
            "cache after writing 2 new positions at index 5 (positions 5 and 6 replaced, "
            "every other position unchanged)",
            atol=1e-6,
        )
    out = np.asarray(transformer.update_kv_cache(tf.constant(cache), tf.constant(new[:, :, :1]), 0))
    expected = cache.copy()
    expected[:, :, :1] = new[:, :, :1]
    assert_close(out, expected, "cache after writing 1 new position at index 0", atol=1e-6)


@pytest.mark.bonus
@pytest.mark.points(1)
def test_cached_attention_mask_lets_each_query_see_up_to_its_own_position():
    for index in (2, tf.constant(2)):
        mask = transformer.cached_attention_mask(index, 3, 6)
        assert_shape(mask, (3, 6), "cached_attention_mask(index=2, T=3, C=6)")
        expected = np.arange(6)[None, :] <= (2 + np.arange(3))[:, None]
        np.testing.assert_array_equal(
            np.asarray(mask),
            expected,
            err_msg=("query t sits at position index + t and may attend to cache positions c <= index + t"),
        )


@pytest.mark.bonus
@pytest.mark.points(1)
def test_attention_with_a_cache_equals_full_attention():
    layer = transformer.MultiHeadSelfAttention(num_heads=NH, use_bias=True)
    x = _normal((B, 6, D), 1)
    full = layer(x)
    _randomize(layer, scale=0.5)
    full = np.asarray(layer(x))
    empty = tf.zeros((B, NH, 8, D // NH))  # (B, nkv, C=8, hs)
    first, cache = layer(x[:, :4], cache=(empty, empty), cache_index=0)
    second, cache = layer(x[:, 4:], cache=cache, cache_index=4)
    assert_shape(cache[0], (B, NH, 8, D // NH), "cached keys (B, nkv, C, hs)")
    assert_close(
        np.concatenate([first, second], axis=1),
        full,
        "attention over positions 0-3 then 4-5 with a KV cache vs one pass over 0-5",
        atol=1e-5,
    )


def _check_cache_equals_recomputation(model, prompt_length):
    tokens = _tokens(B, C, seed=prompt_length)
    full = np.asarray(model(tokens))
    logits, cache = model.prefill(tokens[:, :prompt_length])
    steps = [np.asarray(logits)]
    for t in range(prompt_length, C):
        logits, cache = model.decode_step(tokens[:, t : t + 1], cache)
        assert_shape(logits, (B, 1, V), "decode_step logits (B, 1, V)")
        steps.append(np.asarray(logits))
    assert_close(
        np.concatenate(steps, axis=1),
        full,
        f"logits of prefill({prompt_length} tokens) then decode_step one token at a time vs model(all "
        f"{C} tokens) [{model.config.positions} positions, {model.config.kv_heads} kv heads]",
        atol=1e-4,
    )


@pytest.mark.bonus
@pytest.mark.points(2)
def test_kv_cache_decoding_equals_full_recomputation():
    model = _model(transformer.TransformerConfig(vocab_size=V, context_length=C, d_model=D, num_heads=NH, num_layers=L))
    for prompt_length in (1, 4):
        _check_cache_equals_recomputation(model, prompt_length)


# ------------------------------------------------------------------------------------------------------------
# Presets: every option at once (3 points)


@pytest.mark.bonus
@pytest.mark.points(1)
def test_every_preset_gives_logits_of_shape_batch_time_vocab():
    for name in PRESETS:
        model = _model(_preset(name), randomize=False)
        assert_shape(model(_tokens(B, 5)), (B, 5, V), f"logits (B, T, V) of the {name} preset")


@pytest.mark.bonus
@pytest.mark.points(1)
def test_every_preset_is_causal():
    tokens = np.asarray(_tokens(1, C, seed=5))
    changed = tokens.copy()
    changed[0, 6] = (changed[0, 6] + 1) % V
    for name in PRESETS:
        logits = np.asarray(_model(_preset(name))(tf.constant(np.concatenate([tokens, changed]))))
        assert_close(
            logits[1, :6],
            logits[0, :6],
            f"{name} preset: logits before position 6 after changing the token at position 6",
            atol=1e-5,
        )
        assert np.abs(logits[1, 6:] - logits[0, 6:]).max() > 1e-4, (
            f"{name} preset: changing the token at position 6 changed no logit at or after it"
        )


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.timeout(180)
def test_kv_cache_equals_full_recomputation_for_every_preset():
    for name in PRESETS:
        _check_cache_equals_recomputation(_model(_preset(name)), prompt_length=3)
