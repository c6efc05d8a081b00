"""Part 4, bonus (20 points): RoPE, grouped-query attention, RMSNorm and SwiGLU, the KV cache, and the presets.

RoPE is checked by its properties (position 0 unchanged, lengths kept, scores that depend on relative position
only, rotation angles m * base^(-2p / hs)), so either way of pairing dimensions passes. GQA is compared with a NumPy
full attention whose key/value heads are repeated for each group; the KV cache with a full recomputation, through
the model's own `prefill` / `decode_step`. The presets use every option at once. As in test_transformer.py, the test
draws every weight, the probe assigns them by name and returns only raw outputs, and every property check comes
with a NumPy reference computed here (RoPE: either pairing of the docstring).
"""

import numpy as np
import pytest
from checks import assert_close, assert_shape
from reference_transformer import (
    assert_matches_model,
    check_loaded,
    draw_weights,
    load_weights,
    model_weight_shapes,
    np_mha,
    np_rope,
)

V, C, D, NH, L = 13, 12, 16, 4, 2  # vocabulary, context length, width, heads (of 4), layers
B = 2
PRESETS = {  # the presets of TransformerConfig (lmkit/transformer_config.py) at these sizes, written out
    "gpt2": dict(norm="layernorm", positions="learned", bias="all", block="sequential", activation="gelu"),
    "olmo": dict(
        norm="nonparametric", positions="rope", bias="none", activation="swiglu", mlp_ratio=8 / 3, tie_embeddings=False
    ),
    "llama2": dict(
        norm="rmsnorm",
        positions="rope",
        num_kv_heads=2,
        bias="none",
        activation="swiglu",
        mlp_ratio=8 / 3,
        tie_embeddings=False,
    ),
    "openlm": dict(positions="rope", bias="norm_only", activation="swiglu", mlp_ratio=8 / 3, tie_embeddings=False),
    "falcon": dict(positions="rope", num_kv_heads=1, bias="norm_only", block="parallel", tie_embeddings=False),
    "palm": dict(positions="rope", num_kv_heads=1, bias="none", block="parallel", activation="swiglu"),
}
SIZES = dict(vocab_size=V, context_length=C, d_model=D, num_heads=NH, num_layers=L)


def _normal(shape, seed, scale=1.0):
    return np.random.default_rng(seed).normal(0.0, scale, size=shape).astype(np.float32)


def _tokens(batch, time, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(batch, time)).astype(np.int32)


# ------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return only its raw outputs, on inputs and weights the test
# chose (see grading/runtime/probes.py); every number a verdict uses is computed here, in the test


def call_with_tensors(name, args, tensors=()):
    """Probe: assignment.transformer.<name>(*args) with the arguments at positions `tensors` made tf constants
    (int32 for integers); returns the result as an array."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    args = [
        (tf.constant(a, tf.int32) if np.asarray(a).dtype.kind in "iu" else tf.constant(a)) if i in tensors else a
        for i, a in enumerate(args)
    ]
    return np.asarray(getattr(transformer, name)(*args))


def lm_session(config, runs):
    """Probe: one TransformerLanguageModel(TransformerConfig(**config)); for each run (weights, tokens) its weights
    read back and its logits on `tokens`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**config))
    model(tf.zeros((1, 2), tf.int32))
    results = []
    for weights, tokens in runs:
        loaded = load_weights(model, weights)
        results.append({"loaded": loaded, "logits": np.asarray(model(tf.constant(tokens)))})
    return results


def cache_session(config, weights, tokens, prompt_lengths):
    """Probe: a model holding `weights`: model(tokens), then for each prompt length prefill(tokens[:, :n]) and
    decode_step one token at a time to the end; returns the full logits and each run's logits per step."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**config))
    model(tf.zeros((1, 2), tf.int32))
    loaded = load_weights(model, weights)
    tokens = tf.constant(tokens)
    runs = []
    for n in prompt_lengths:
        logits, cache = model.prefill(tokens[:, :n])
        steps = [np.asarray(logits)]
        for t in range(n, tokens.shape[1]):
            logits, cache = model.decode_step(tokens[:, t : t + 1], cache)
            steps.append(np.asarray(logits))
        runs.append(steps)
    return {"loaded": loaded, "full": np.asarray(model(tokens)), "runs": runs}


def attention_session(num_heads, x, weights, num_kv_heads=None, cached=False, use_rope=False):
    """Probe: a MultiHeadSelfAttention(num_heads, num_kv_heads, use_bias=True, use_rope) holding `weights`: its
    output on `x`, and with `cached`, its outputs on x[:, :4] then x[:, 4:] with a KV cache of 8 positions, and the
    cached keys' shape."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    layer = transformer.MultiHeadSelfAttention(
        num_heads=num_heads, num_kv_heads=num_kv_heads, use_bias=True, use_rope=use_rope
    )
    x = tf.constant(x)
    layer(x)
    out = {"loaded": load_weights(layer, weights), "out": np.asarray(layer(x))}
    if cached:
        width = x.shape[-1]
        empty = tf.zeros((x.shape[0], num_kv_heads or num_heads, 8, width // num_heads))  # (B, nkv, C=8, hs)
        first, cache = layer(x[:, :4], cache=(empty, empty), cache_index=0)
        second, cache = layer(x[:, 4:], cache=cache, cache_index=4)
        out.update(first=np.asarray(first), second=np.asarray(second), cache_shape=tuple(cache[0].shape))
    return out


def rms_norm(x, scale, epsilon=1e-5):
    """Probe: RMSNorm(epsilon) holding `scale`, on `x`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    layer = transformer.RMSNorm(epsilon=epsilon)
    layer(tf.constant(x))
    return {"loaded": load_weights(layer, {"scale": scale}), "out": np.asarray(layer(tf.constant(x)))}


def swiglu_feed_forward(x, hidden_dim, weights):
    """Probe: FeedForward(hidden_dim, activation="swiglu", use_bias=False, gate=swiglu) holding `weights` (w_gate,
    w_in, w_out): its output on `x`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    mlp = transformer.FeedForward(hidden_dim=hidden_dim, activation="swiglu", use_bias=False, gate=transformer.swiglu)
    x = tf.constant(x)
    mlp(x)
    return {"loaded": load_weights(mlp, weights), "out": np.asarray(mlp(x))}


def _rope(student, x, positions, base=10000.0):
    out = student.run(call_with_tensors, "apply_rope", [np.asarray(x, np.float32), positions, base], (0, 1))
    out = np.asarray(out, np.float64)
    x = np.asarray(x, np.float64)
    assert_shape(out, x.shape, "apply_rope output (..., T, hs)")
    refs = [np_rope(x, positions, base, pairing) for pairing in ("halves", "interleaved")]
    best = min(refs, key=lambda r: np.abs(out - r).max())
    assert_close(
        out,
        best,
        f"apply_rope(x, positions, base={base}) vs NumPy RoPE (pair p, either (p, p + hs/2) or (2p, 2p + 1), "
        "rotated by position * base^(-2p / hs))",
        atol=1e-4,
    )
    return out


def _attention_weights(num_heads, num_kv_heads=None, seed=1, width=D):
    nkv = num_kv_heads or num_heads
    hs = width // num_heads
    shapes = {"wq": (width, num_heads * hs), "wk": (width, nkv * hs), "wv": (width, nkv * hs)}
    shapes.update({"wo": (num_heads * hs, width), "bq": (num_heads * hs,), "bk": (nkv * hs,), "bv": (nkv * hs,)})
    return draw_weights(dict(shapes, bo=(width,)), seed, scale=0.5)


def _assert_attention(out, x, weights, num_heads, num_kv_heads=None, rope=None, what="attention"):
    pairings = ("halves", "interleaved") if rope is not None else ("halves",)
    refs = [np_mha(x, weights, num_heads, num_kv_heads, rope=rope, pairing=p) for p in pairings]
    assert_shape(out, refs[0].shape, f"{what} output (B, T, D)")
    best = min(refs, key=lambda r: np.abs(np.asarray(out, np.float64) - r).max())
    assert_close(out, best, what, atol=1e-5)


def _model_logits(student, config, batches, seed=1):
    weights = draw_weights(model_weight_shapes(config), seed)
    results = student.run(lm_session, config, [(weights, t) for t in batches], uses=(load_weights,))
    check_loaded(results[0]["loaded"], weights, "TransformerLanguageModel")
    for tokens, result in zip(batches, results):
        assert_matches_model(result["logits"], config, weights, tokens, f"a model of {config}")
    return [r["logits"] for r in results]


# ------------------------------------------------------------------------------------------------------------
# RoPE (5 points)


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.apply_rope: float tensor `(..., T, hs)`, same dtype as x; position 0 is left unchanged."
)
def test_rope_keeps_position_zero_and_every_vector_length(student):
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 8))  # (B, nh, T, hs)
    positions = [0, 1, 2, 7, 11]
    out = _rope(student, x, positions)
    assert_close(out[..., 0, :], x[..., 0, :], "RoPE at position 0 (a rotation by angle 0)", atol=1e-6)
    assert_close(
        np.linalg.norm(out, axis=-1),
        np.linalg.norm(x, axis=-1),
        "vector lengths after RoPE (a rotation keeps lengths; are both members of a pair rotated by the same angle?)",
        atol=1e-5,
    )
    assert np.abs(out[..., 1:, :] - x[..., 1:, :]).max() > 1e-2, "RoPE left vectors at positions > 0 unchanged"


@pytest.mark.bonus
@pytest.mark.points(1.5)
@pytest.mark.clause(
    "transformer.apply_rope: `apply_rope(q, [m]) . apply_rope(k, [n]) == apply_rope(q, [m + s]) . apply_rope(k, [n +"
)
def test_rope_scores_depend_only_on_relative_position(student):
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=8), rng.normal(size=8)
    positions = np.arange(16)
    rotated_q = _rope(student, np.tile(q, (16, 1)), positions)  # (T, hs): q placed at every position
    rotated_k = _rope(student, np.tile(k, (16, 1)), positions)
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
@pytest.mark.clause(
    "transformer.apply_rope: Pair p (p = 0 .. hs/2 - 1) of the vector at position m is rotated by the angle m *"
)
def test_rope_rotation_angles_are_position_times_frequency(student):
    hs, base, position = 6, 100.0, 2
    images = _rope(student, np.eye(hs)[:, None, :], [position], base)[
        :, 0, :
    ]  # (hs, hs): the rotation applied to a basis
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
def test_rope_model_knows_the_order_of_earlier_tokens(student):
    tokens = _tokens(1, 6, seed=2)
    tokens[0, :2] = (1, 2)
    swapped = tokens.copy()
    swapped[0, :2] = (2, 1)
    (logits,) = _model_logits(student, dict(SIZES, positions="rope"), [np.concatenate([tokens, swapped])])
    assert np.abs(logits[0, -1] - logits[1, -1]).max() > 1e-4, (
        "with positions='rope' and no position embeddings, swapping the first two tokens must change the last "
        "logits: are queries and keys rotated by their positions?"
    )


# ------------------------------------------------------------------------------------------------------------
# GQA / MQA (4 points)


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.expand_kv_heads: head h of the result is head h // g of x",
    "transformer.expand_kv_heads: heads [a, b] with g = 2 become [a, a, b, b]",
    "transformer.expand_kv_heads: float tensor `(B, nkv * g, S, hs)`.",
)
def test_expand_kv_heads_gives_query_head_h_the_kv_head_h_over_g(student):
    x = _normal((2, 3, 5, 4), 1)  # (B, nkv=3, S, hs)
    out = student.run(call_with_tensors, "expand_kv_heads", [x, 2], (0,))
    assert_shape(out, (2, 6, 5, 4), "expand_kv_heads(x (B, 3, S, hs), 2)")
    expected = x[:, [0, 0, 1, 1, 2, 2]]
    assert_close(
        out,
        expected,
        "expand_kv_heads: head h of the result must be head h // g of x ([a, b, c] -> [a, a, b, b, c, c])",
        atol=0,
    )


def _check_gqa_equals_full(student, num_kv_heads):
    """GQA with num_kv_heads equals full attention whose key/value heads repeat each kv head for its group."""
    x = _normal((B, 6, D), 3)
    groups = NH // num_kv_heads
    weights = _attention_weights(NH, num_kv_heads, seed=3)
    result = student.run(attention_session, NH, x, weights, num_kv_heads, uses=(load_weights,))
    check_loaded(result["loaded"], weights, f"MultiHeadSelfAttention(num_heads={NH}, num_kv_heads={num_kv_heads})")
    _assert_attention(
        result["out"],
        x,
        weights,
        NH,
        num_kv_heads,
        what=f"attention with {NH} query heads and num_kv_heads={num_kv_heads} vs full attention "
        f"with each key/value head repeated for its group of {groups}",
    )


@pytest.mark.bonus
@pytest.mark.points(2)
@pytest.mark.clause("transformer.MultiHeadSelfAttention: Query head h reads key/value head h // g, g = nh // nkv")
@pytest.mark.clause(
    "transformer.MultiHeadSelfAttention: num_kv_heads: int or None, nkv, the number of key/value heads (None: nh,"
)
def test_grouped_query_attention_equals_full_attention_with_repeated_kv_heads(student):
    for num_kv_heads in (NH, 2):  # num_kv_heads == num_heads is plain multi-head attention
        _check_gqa_equals_full(student, num_kv_heads)


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause("transformer.MultiHeadSelfAttention: Query head h reads key/value head h // g, g = nh // nkv")
@pytest.mark.clause(
    "transformer.MultiHeadSelfAttention: num_kv_heads: int or None, nkv, the number of key/value heads (None: nh,"
)
def test_multi_query_attention_shares_one_kv_head(student):
    _check_gqa_equals_full(student, 1)


# ------------------------------------------------------------------------------------------------------------
# RMSNorm and SwiGLU (3 points)


@pytest.mark.bonus
@pytest.mark.points(0.5)
@pytest.mark.clause(
    "transformer.RMSNorm: x / sqrt(mean(x^2) + epsilon) * scale",
    "transformer.RMSNorm: Unlike LayerNorm it neither subtracts the mean nor adds a bias.",
)
def test_rms_norm_matches_numpy(student):
    x = _normal((2, 3, 8), 1) + 2.0  # a non-zero mean: RMSNorm must not subtract it
    scale = np.random.default_rng(2).normal(size=8).astype("float32")
    expected = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-5) * scale
    result = student.run(rms_norm, x, scale, uses=(load_weights,))
    check_loaded(result["loaded"], {"scale": scale}, "RMSNorm")
    out = result["out"]
    assert_shape(out, x.shape, "RMSNorm output")
    assert_close(
        out, expected, "RMSNorm vs x / sqrt(mean(x^2) + epsilon) * scale (over the last axis, no centering)", atol=1e-5
    )


@pytest.mark.bonus
@pytest.mark.points(0.5)
@pytest.mark.clause("transformer.RMSNorm: epsilon: float, added to the mean square.")
def test_rms_norm_adds_epsilon_inside_the_root(student):
    # Small activations, whose mean square (~1e-6) is below epsilon: where epsilon goes decides the output.
    x = _normal((2, 3, 8), 1) * 1e-3
    scale = np.ones(8, dtype="float32")
    for epsilon in (1e-5, 1e-2):
        expected = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + epsilon)
        assert_close(
            student.run(rms_norm, x, scale, epsilon, uses=(load_weights,))["out"],
            expected,
            f"RMSNorm(epsilon={epsilon}) of activations of size ~1e-3: x / sqrt(mean(x^2) + epsilon), epsilon "
            "added to the mean square under the root (not to the root, not a constant of your own)",
            atol=1e-6,
            rtol=1e-4,
        )


@pytest.mark.bonus
@pytest.mark.points(0.5)
@pytest.mark.clause("transformer.MultiHeadSelfAttention: use_rope: bool, whether queries and keys are rotated by RoPE")
def test_rope_rotates_queries_and_keys_never_values(student):
    # Every position holds the same vector: each output is a weighted average of identical values, so all positions
    # agree, whatever the weights; RoPE on the values would make each value depend on its position.
    x = np.tile(_normal((1, 1, 8), 3), (2, 6, 1))
    weights = _attention_weights(2, seed=4, width=8)
    result = student.run(attention_session, 2, x, weights, use_rope=True, uses=(load_weights,))
    check_loaded(result["loaded"], weights, "MultiHeadSelfAttention(num_heads=2, use_rope=True)")
    out = result["out"]
    _assert_attention(out, x, weights, 2, rope=10000.0, what="MultiHeadSelfAttention(use_rope=True) vs NumPy")
    assert_close(
        out,
        np.broadcast_to(out[:, :1], out.shape),
        "MultiHeadSelfAttention(use_rope=True) output at every position, for a sequence repeating one vector "
        "(expected the same at every position: RoPE rotates queries and keys, never values)",
        atol=1e-5,
    )


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause("transformer.swiglu: silu(gate) * up, elementwise")
def test_swiglu_is_silu_of_the_gate_times_up(student):
    gate, up = _normal((2, 3, 5), 1, scale=2.0), _normal((2, 3, 5), 2)
    g = gate.astype(np.float64)
    assert_close(
        student.run(call_with_tensors, "swiglu", [gate, up], (0, 1)),
        g / (1.0 + np.exp(-g)) * up,
        "swiglu(gate, up) vs gate * sigmoid(gate) * up",
        atol=1e-5,
    )


@pytest.mark.bonus
@pytest.mark.points(1)
def test_swiglu_feed_forward_matches_numpy(student):
    x = _normal((2, 5, D), 1)
    w = draw_weights({"w_gate": (D, 24), "w_in": (D, 24), "w_out": (24, D)}, 1, scale=0.5)
    result = student.run(swiglu_feed_forward, x, 24, w, uses=(load_weights,))
    check_loaded(result["loaded"], w, "FeedForward(activation='swiglu')")
    x64 = x.astype(np.float64)
    gate, up = x64 @ w["w_gate"], x64 @ w["w_in"]
    expected = (gate / (1.0 + np.exp(-gate)) * up) @ w["w_out"]
    assert_close(result["out"], expected, "SwiGLU feed-forward vs (silu(x w_gate) * (x w_in)) w_out", atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# KV cache (5 points)


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.update_kv_cache: Returns the cache with `new` written at positions index .. index + T - 1, every",
    "transformer.update_kv_cache: The cache is preallocated to the context length and keeps its shape",
)
@pytest.mark.clause(
    "transformer.update_kv_cache: index: int32 scalar (a Python int or a tensor), the position of the first new"
)
def test_update_kv_cache_writes_only_the_new_positions(student):
    cache = _normal((2, 3, 8, 4), 1)
    new = _normal((2, 3, 2, 4), 2)
    for tensors in ((0, 1), (0, 1, 2)):  # the index as a Python int, then as a tensor
        out = student.run(call_with_tensors, "update_kv_cache", [cache, new, 5], tensors)
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
    out = student.run(call_with_tensors, "update_kv_cache", [cache, new[:, :, :1], 0], (0, 1))
    expected = cache.copy()
    expected[:, :, :1] = new[:, :, :1]
    assert_close(out, expected, "cache after writing 1 new position at index 0", atol=1e-6)


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.cached_attention_mask: Returns the bool mask `(T, C)` of T new queries over C cache slots: True"
)
@pytest.mark.clause(
    "transformer.cached_attention_mask: index: int32 scalar (int or tensor), the position of the first query."
)
def test_cached_attention_mask_lets_each_query_see_up_to_its_own_position(student):
    for tensors in ((), (0,)):  # the index as a Python int, then as a tensor
        mask = student.run(call_with_tensors, "cached_attention_mask", [2, 3, 6], tensors)
        assert_shape(mask, (3, 6), "cached_attention_mask(index=2, T=3, C=6)")
        expected = np.arange(6)[None, :] <= (2 + np.arange(3))[:, None]
        np.testing.assert_array_equal(
            np.asarray(mask),
            expected,
            err_msg=("query t sits at position index + t and may attend to cache positions c <= index + t"),
        )


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.MultiHeadSelfAttention: `(B, T, D)`; with a cache, `(output, (keys, values))` holding the cache"
)
@pytest.mark.clause(
    "transformer.MultiHeadSelfAttention: cache_index: int32 scalar, the position of x's first token when a cache"
)
def test_attention_with_a_cache_equals_full_attention(student):
    x = _normal((B, 6, D), 1)
    weights = _attention_weights(NH)
    result = student.run(attention_session, NH, x, weights, cached=True, uses=(load_weights,))
    check_loaded(result["loaded"], weights, f"MultiHeadSelfAttention(num_heads={NH})")
    _assert_attention(result["out"], x, weights, NH, what="attention in one pass over positions 0-5")
    assert_shape(np.zeros(result["cache_shape"]), (B, NH, 8, D // NH), "cached keys (B, nkv, C, hs)")
    assert_close(
        np.concatenate([result["first"], result["second"]], axis=1),
        result["out"],
        "attention over positions 0-3 then 4-5 with a KV cache vs one pass over 0-5",
        atol=1e-5,
    )


def _check_cache_equals_recomputation(student, config, prompt_lengths):
    tokens = _tokens(B, C, seed=prompt_lengths[0])
    weights = draw_weights(model_weight_shapes(config), 1)
    result = student.run(cache_session, config, weights, tokens, prompt_lengths, uses=(load_weights,))
    check_loaded(result["loaded"], weights, "TransformerLanguageModel")
    assert_matches_model(result["full"], config, weights, tokens, f"a model of {config}")
    for prompt_length, steps in zip(prompt_lengths, result["runs"]):
        for logits in steps[1:]:
            assert_shape(logits, (B, 1, V), "decode_step logits (B, 1, V)")
        assert_close(
            np.concatenate(steps, axis=1),
            result["full"],
            f"logits of prefill({prompt_length} tokens) then decode_step one token at a time vs model(all "
            f"{C} tokens) [{config}]",
            atol=1e-4,
        )


@pytest.mark.bonus
@pytest.mark.points(2)
@pytest.mark.clause(
    "transformer.TransformerLanguageModel: tokens then come after the cached ones",
    "transformer.DecoderBlock: `(B, T, D)`; with a cache, `(output, cache)`.",
)
def test_kv_cache_decoding_equals_full_recomputation(student):
    _check_cache_equals_recomputation(student, SIZES, (1, 4))


# ------------------------------------------------------------------------------------------------------------
# Presets: every option at once (3 points)


@pytest.mark.bonus
@pytest.mark.points(1)
def test_every_preset_gives_logits_of_shape_batch_time_vocab(student):
    for name, options in PRESETS.items():
        (logits,) = _model_logits(student, dict(SIZES, **options), [_tokens(B, 5)])
        assert_shape(logits, (B, 5, V), f"logits (B, T, V) of the {name} preset")


@pytest.mark.bonus
@pytest.mark.points(1)
def test_every_preset_is_causal(student):
    tokens = _tokens(1, C, seed=5)
    changed = tokens.copy()
    changed[0, 6] = (changed[0, 6] + 1) % V
    for name, options in PRESETS.items():
        (logits,) = _model_logits(student, dict(SIZES, **options), [np.concatenate([tokens, changed])])
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
def test_kv_cache_equals_full_recomputation_for_every_preset(student):
    for options in PRESETS.values():
        _check_cache_equals_recomputation(student, dict(SIZES, **options), (3,))
