"""Part 4 (25 points with the hidden tests): causal mask, attention, multi-head attention, decoder block, the model.

A probe returns only the student's raw outputs, on inputs and weights the test chose: the test draws every weight
(seeded), the probe assigns them to the student's layer or model by the names the docstrings give and reads them
back, and the test compares its outputs with NumPy references computed here from the weights it sent (attention,
multi-head attention as `keras.layers.MultiHeadAttention(use_causal_mask=True)` computes it, the decoder block, the
whole model). Invariants (a later token never changes an earlier logit) and sanity checks (loss about ln V, a
gradient for every weight checked by finite differences, a tiny batch overfits, its loss computed here) always come
with a reference check in the same test. Only the core options are used here
(LayerNorm, learned or sinusoidal positions, GELU, full attention); the bonus options are graded in
test_transformer_extensions.py. Sizes are tiny and all different (V=13, C=12, D=16, 4 heads of 4), so a swapped
axis shows up as a shape. The NumPy model and the weight tables (reference_transformer.py) are shared with the
bonus tests.
"""

import math

import numpy as np
import pytest
from checks import assert_close, assert_shape
from reference_transformer import (
    assert_matches_model,
    block_weight_shapes,
    check_loaded,
    draw_weights,
    load_weights,
    model_weight_shapes,
    np_block,
    np_mha,
    np_model,
)

V, C, D, NH, L = 13, 12, 16, 4, 2  # vocabulary, context length, width, heads, layers
B, T = 2, 7  # batch, time
CORE = dict(vocab_size=V, context_length=C, d_model=D, num_heads=NH, num_layers=L)


def _normal(shape, seed, scale=1.0):
    return np.random.default_rng(seed).normal(0.0, scale, size=shape).astype(np.float32)


def _tokens(batch=B, time=T, seed=0):
    """Returns int32 token ids of shape (batch, time)."""
    return np.random.default_rng(seed).integers(0, V, size=(batch, time)).astype(np.int32)


def reference_attention(q, k, v, mask=None):
    """NumPy reference: softmax(q k^T / sqrt(hs)) v; masked weights are 0 and a fully masked row is all 0."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (..., T, S)
    allowed = np.ones(scores.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), scores.shape)
    scores = np.where(allowed, scores, -np.inf)
    top = np.max(scores, axis=-1, keepdims=True)
    exp = np.where(allowed, np.exp(scores - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    weights = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
    return weights @ v, weights


def _random_mask(shape, seed):
    """Returns a random bool mask of `shape` (..., T, S) in which every row allows at least one key."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.5
    rows = mask.reshape(-1, shape[-1])
    rows[np.arange(rows.shape[0]), rng.integers(0, shape[-1], rows.shape[0])] = True
    return rows.reshape(shape)


def reference_attention_grads(q, k, v, mask, upstream):
    """NumPy gradients of sum(attention output * upstream) with respect to q, k and v (masked weights are
    constants 0, so a fully masked row passes no gradient)."""
    q, k, v, upstream = (np.asarray(a, np.float64) for a in (q, k, v, upstream))
    _, weights = reference_attention(q, k, v, mask)
    d_weights = upstream @ np.swapaxes(v, -1, -2)  # (..., T, S)
    d_scores = weights * (d_weights - np.sum(d_weights * weights, axis=-1, keepdims=True))
    scale = 1.0 / math.sqrt(q.shape[-1])
    return d_scores @ k * scale, np.swapaxes(d_scores, -1, -2) @ q * scale, np.swapaxes(weights, -1, -2) @ upstream


# ------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return only its raw outputs, on inputs and weights the test
# chose (see grading/runtime/probes.py); every number a verdict uses is computed here, in the test


def attention_session(q, k, v, mask, upstream):
    """Probe: scaled_dot_product_attention(q, k, v, mask) and, with `upstream`, the gradients of
    sum(out * upstream) with respect to q, k and v (None where no gradient flows)."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    q, k, v = (tf.constant(a) for a in (q, k, v))
    mask = None if mask is None else tf.constant(mask)
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        out, weights = transformer.scaled_dot_product_attention(q, k, v, mask)
        loss = tf.reduce_sum(out * tf.constant(upstream)) if upstream is not None else None
    grads = tape.gradient(loss, [q, k, v]) if upstream is not None else []
    return {
        "out": np.asarray(out),
        "weights": np.asarray(weights),
        "grads": [None if g is None else np.asarray(g) for g in grads],
    }


def attention_of_arrays(q, k, v, mask):
    """Probe: scaled_dot_product_attention called on the NumPy arrays themselves (no tensors), as (out, weights)."""
    import numpy as np

    from assignment import transformer

    out, weights = transformer.scaled_dot_product_attention(q, k, v, mask)
    return np.asarray(out), np.asarray(weights)


def causal_mask_of_a_tensor(length):
    """Probe: causal_mask called inside tf.function on a scalar int32 tensor whose value is unknown when traced."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    traced = tf.function(transformer.causal_mask, input_signature=[tf.TensorSpec([], tf.int32)])
    return np.asarray(traced(tf.constant(length)))


def mha_session(num_heads, x, weights, inputs=(), use_bias=True):
    """Probe: a MultiHeadSelfAttention(num_heads, use_bias) holding `weights` (the test's): the weights read back
    and its outputs on `x` and on each of `inputs`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    layer = transformer.MultiHeadSelfAttention(num_heads=num_heads, use_bias=use_bias)
    layer(tf.constant(x))
    loaded = load_weights(layer, weights)
    return {"loaded": loaded, "outs": [np.asarray(layer(tf.constant(a))) for a in (x, *inputs)]}


def block_session(config, x, runs):
    """Probe: a DecoderBlock(TransformerConfig(**config)); for each run (weights, training) its weights read back
    and its output on `x`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    block = transformer.DecoderBlock(transformer.TransformerConfig(**config))
    x = tf.constant(x)
    block(x)
    results = []
    for weights, training in runs:
        loaded = load_weights(block, weights)
        results.append({"loaded": loaded, "out": np.asarray(block(x, training=training))})
    return results


def lm_session(config, runs):
    """Probe: one TransformerLanguageModel(TransformerConfig(**config)); for each run (weights, tokens, training)
    its weights read back and its logits on `tokens`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**config))
    model(tf.zeros((1, 2), tf.int32))  # builds every weight, whatever the implementation
    results = []
    for weights, tokens, training in runs:
        loaded = load_weights(model, weights)
        results.append({"loaded": loaded, "logits": np.asarray(model(tf.constant(tokens), training=training))})
    return results


def lm_gradients(config, weights, tokens, upstream):
    """Probe: a model holding `weights`: its logits on `tokens` (training=True) and the gradient of
    sum(logits * upstream) with respect to each weight path (None where none flows)."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**config))
    model(tf.zeros((1, 2), tf.int32))
    loaded = load_weights(model, weights)
    variables = {}
    for path in weights:
        target = model
        for part in path.split("."):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        variables[path] = target
    with tf.GradientTape() as tape:
        logits = model(tf.constant(tokens), training=True)
        total = tf.reduce_sum(logits * tf.constant(upstream))
    grads = tape.gradient(total, list(variables.values()))
    return {
        "loaded": loaded,
        "logits": np.asarray(logits),
        "grads": {p: None if g is None else np.asarray(tf.convert_to_tensor(g)) for p, g in zip(variables, grads)},
    }


def lm_fresh(config, paths, tokens):
    """Probe: a freshly initialized model: the weights at `paths` as it initialized them, every weight it holds,
    and its logits on `tokens`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**config))
    read = {}
    for path in paths:
        target = model
        for part in path.split("."):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        read[path] = np.asarray(target)
    held = [np.asarray(w) for w in model.weights]
    return {"loaded": {"read": read, "held": held}, "logits": np.asarray(model(tf.constant(tokens)))}


def lm_overfit(config, weights, tokens, labels, steps=100):
    """Probe: a model holding `weights` trained `steps` Adam steps (1e-2) on one batch with the mean cross-entropy;
    its trained weights and its logits on `tokens` afterwards."""
    import keras
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**config))
    model(tf.zeros((1, 2), tf.int32))
    load_weights(model, weights)
    tokens, labels = tf.constant(tokens), tf.constant(labels)
    optimizer = keras.optimizers.Adam(learning_rate=1e-2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(tokens, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))

    for _ in range(steps):
        step()
    read = {}
    for path in weights:
        target = model
        for part in path.split("."):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        read[path] = np.asarray(target)
    return {"trained": read, "held": [np.asarray(w) for w in model.weights], "logits": np.asarray(model(tokens))}


# ------------------------------------------------------------------------------------------------------------
# causal_mask and scaled_dot_product_attention


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.causal_mask: a bool tensor of shape `(seq_len, seq_len)`",
    "transformer.causal_mask: Query i may attend to keys j <= i (itself and the past), never to the future.",
)
def test_causal_mask_allows_exactly_the_past_and_present(student):
    for length in (1, 2, 5):
        mask = student.call("transformer.causal_mask", length)
        assert_shape(mask, (length, length), f"causal_mask({length})")
        assert np.asarray(mask).dtype == np.bool_, (
            f"causal_mask must be a bool tensor, got dtype {np.asarray(mask).dtype}"
        )
        expected = np.tril(np.ones((length, length), bool))
        got = np.asarray(mask)
        wrong = np.argwhere(got != expected)
        assert not len(wrong), (
            f"causal_mask({length})[{wrong[0][0]}, {wrong[0][1]}] is {got[tuple(wrong[0])]}: query i may attend to "
            f"key j exactly when j <= i (True on and below the diagonal)\ngot\n{got.astype(int)}"
        )


@pytest.mark.points(0.5)
@pytest.mark.clause("transformer.causal_mask: seq_len: int (or int32 scalar tensor), T.")
def test_causal_mask_takes_a_length_known_only_when_run(student):
    mask = student.run(causal_mask_of_a_tensor, 4)
    assert_shape(mask, (4, 4), "causal_mask(tf.constant(4)) inside tf.function")
    assert np.array_equal(np.asarray(mask, bool), np.tril(np.ones((4, 4), bool))), (
        f"causal_mask of a length given as a tensor inside tf.function: expected the 4 x 4 lower triangle, got\n{mask}"
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.scaled_dot_product_attention: softmax(q k^T / sqrt(hs)) v over the last two axes",
    "transformer.scaled_dot_product_attention: output: `(..., T, hv)`, each query's weighted average of the values.",
    "transformer.scaled_dot_product_attention: weights: `(..., T, S)`, each row a softmax over the allowed keys",
)
def test_attention_matches_numpy_reference(student):
    # (B, nh, T, hs) queries against (B, nh, S, hs) keys and (B, nh, S, hv) values: T, S, hs, hv all differ
    q, k, v = _normal((2, 3, 4, 5), 1), _normal((2, 3, 6, 5), 2), _normal((2, 3, 6, 7), 3)
    cases = [(q, k, v, None), (q, k, v, _random_mask((4, 6), seed=4))]
    cases.append((q[:1, :1], k[:1, :1], v[:1, :1], _random_mask((4, 6), seed=5)))  # a batch of one, one head
    for q, k, v, mask in cases:
        result = student.run(attention_session, q, k, v, mask, None)
        out, weights = result["out"], result["weights"]
        ref_out, ref_weights = reference_attention(q, k, v, mask)
        what = ("with" if mask is not None else "without") + (" (batch of one)" if len(q) == 1 else "")
        assert_shape(weights, ref_weights.shape, f"attention weights (..., T, S) {what} a mask")
        assert_shape(out, ref_out.shape, f"attention output (..., T, hv) {what} a mask")
        assert_close(
            weights,
            ref_weights,
            f"attention weights {what} a mask (softmax of q k^T / sqrt(hs) over the keys, the last axis)",
            atol=1e-5,
        )
        assert_close(out, ref_out, f"attention output {what} a mask (weights times v)", atol=1e-5)


@pytest.mark.points(1)
@pytest.mark.clause("transformer.scaled_dot_product_attention: q: float tensor or NumPy array `(..., T, hs)`")
def test_attention_accepts_numpy_arrays(student):
    # The notebooks and students call attention on NumPy arrays too; they have no `.dtype.min`, tensors do.
    q, k, v = _normal((2, 4, 5), 1), _normal((2, 6, 5), 2), _normal((2, 6, 3), 3)
    mask = _random_mask((4, 6), seed=4)
    for name, args in (("q, k, v", (q, k, v, None)), ("q, k, v and mask", (q, k, v, mask))):
        error = student.error(attention_of_arrays, *args)
        assert error is None, (
            f"scaled_dot_product_attention must accept NumPy arrays as {name}, as tensors; it raised "
            f"{error} (tf.convert_to_tensor turns an array into a tensor)"
        )
        out, weights = student.run(attention_of_arrays, *args)
        ref_out, ref_weights = reference_attention(*args)
        assert_shape(weights, ref_weights.shape, f"attention weights (..., T, S) of NumPy {name}")
        assert_shape(out, ref_out.shape, f"attention output (..., T, hv) of NumPy {name}")
        assert_close(weights, ref_weights, f"attention weights of NumPy {name}", atol=1e-5)
        assert_close(out, ref_out, f"attention output of NumPy {name}", atol=1e-5)


@pytest.mark.points(1)
@pytest.mark.clause("transformer.scaled_dot_product_attention: masked weights are exactly 0, the others sum to 1")
def test_attention_rows_sum_to_one_and_masked_weights_are_exactly_zero(student):
    q, k, v = _normal((2, 5, 8), 1, scale=3.0), _normal((2, 5, 8), 2, scale=3.0), _normal((2, 5, 8), 3)
    mask = np.tril(np.ones((5, 5), bool))  # causal, built here so a wrong causal_mask costs nothing
    result = student.run(attention_session, q, k, v, mask, None)
    weights = result["weights"]
    ref_out, ref_weights = reference_attention(q, k, v, mask)
    assert_shape(weights, ref_weights.shape, "attention weights (..., T, S)")
    masked = weights[:, ~mask]
    assert np.all(masked == 0.0), (
        f"masked attention weights must be exactly 0 (largest {np.abs(masked).max():.3g}): fill the masked scores "
        "with a very negative number before the softmax"
    )
    assert_close(weights.sum(axis=-1), np.ones((2, 5)), "sum of each row of attention weights over the keys", atol=1e-5)
    assert_close(weights, ref_weights, "attention weights with a causal mask", atol=1e-5)
    assert_close(result["out"], ref_out, "attention output with a causal mask", atol=1e-5)


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.scaled_dot_product_attention: A row with no allowed key has all-zero weights and a zero output,"
)
def test_attention_fully_masked_row_gives_zeros_not_nan(student):
    q, k, v = _normal((2, 4, 6), 1), _normal((2, 5, 6), 2), _normal((2, 5, 3), 3)
    mask = _random_mask((4, 5), seed=5).copy()
    mask[1] = False  # query 1 may attend to nothing
    upstream = _normal((2, 4, 3), 6)
    result = student.run(attention_session, q, k, v, mask, upstream)
    out, weights, grads = result["out"], result["weights"], result["grads"]
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights)), (
        "a fully masked row produced NaN or inf: fill masked scores with a large negative finite number (not -inf) "
        "and set masked weights to 0 after the softmax"
    )
    for name, grad in zip("qkv", grads):
        assert grad is not None and np.all(np.isfinite(grad)), (
            f"the gradient with respect to {name} has NaN or inf when a row is fully masked: a -inf score makes the "
            "softmax NaN, and tf.where does not stop NaN from flowing back; use a large negative finite number"
        )
    assert np.all(weights[:, 1] == 0.0), f"a fully masked row must have all-zero weights, got {weights[0, 1]}"
    ref_out, ref_weights = reference_attention(q, k, v, mask)
    assert_close(weights, ref_weights, "attention weights with a fully masked row", atol=1e-5)
    assert_close(out, ref_out, "attention output with a fully masked row (that row is 0)", atol=1e-5)
    for name, grad, expected in zip("qkv", grads, reference_attention_grads(q, k, v, mask, upstream)):
        assert_close(grad, expected, f"gradient of sum(output * upstream) with respect to {name}", atol=1e-4)


@pytest.mark.points(0.5)
@pytest.mark.clause("transformer.scaled_dot_product_attention: q: float tensor or NumPy array `(..., T, hs)`")
def test_attention_works_in_float64(student):
    shapes = (((2, 4, 5), 1), ((2, 6, 5), 2), ((2, 6, 3), 3))
    q, k, v = (_normal(shape, seed).astype(np.float64) for shape, seed in shapes)
    mask = _random_mask((4, 6), seed=4)
    error = student.error(attention_of_arrays, q, k, v, mask)
    assert error is None, (
        "scaled_dot_product_attention must work on float64 inputs (NumPy's default dtype) as on float32; it raised "
        f"{error}. Build every constant from q's dtype: tf.cast(hs, q.dtype), q.dtype.min, not tf.float32 or -1e9"
    )
    out, weights = student.run(attention_of_arrays, q, k, v, mask)
    ref_out, ref_weights = reference_attention(q, k, v, mask)
    assert_close(weights, ref_weights, "attention weights of float64 inputs", atol=1e-6)
    assert_close(out, ref_out, "attention output of float64 inputs", atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# MultiHeadSelfAttention

MHA_NAMES = ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo")


def _mha_weights(width, num_heads, seed, use_bias=True):
    shapes = block_weight_shapes(dict(d_model=width, num_heads=num_heads, bias="all" if use_bias else "none"))
    shapes = {p.split(".")[-1]: s for p, s in shapes.items() if p.startswith("attention.")}
    return draw_weights(shapes, seed, scale=0.5)


@pytest.mark.points(2.5)
@pytest.mark.clause(
    "transformer.MultiHeadSelfAttention: heads are split by reshaping the last axis `(nh * hs)` into `(nh, hs)`,",
    "transformer.MultiHeadSelfAttention: use_bias: bool, whether the four projections have biases.",
    "transformer.MultiHeadSelfAttention.project_heads: Returns q `(B, nh, T, hs)` and k, v `(B, nkv, T, hs)`: x",
    "transformer.MultiHeadSelfAttention.attend_heads: Returns `(B, T, D)`: each query head attends over its keys,",
)
def test_multi_head_attention_matches_keras_with_the_same_weights(student):
    x = _normal((2, 5, 12), 1)  # B=2, T=5, D=12: 3 heads of 4
    weights = _mha_weights(12, 3, 7)
    result = student.run(mha_session, 3, x, weights, uses=(load_weights,))
    check_loaded(result["loaded"], weights, "MultiHeadSelfAttention(num_heads=3)")
    (out,) = result["outs"]
    assert_shape(out, (2, 5, 12), "MultiHeadSelfAttention output (B, T, D)")
    assert_close(
        out,
        np_mha(x, weights, 3),
        "MultiHeadSelfAttention vs keras.layers.MultiHeadAttention(use_causal_mask=True)'s equation with the same "
        "weights (project, split the last axis into (nh, hs), move heads before time, attend with the "
        "causal mask, merge heads back, project with wo)",
        atol=1e-5,
    )


@pytest.mark.points(1)
def test_multi_head_attention_output_never_depends_on_later_tokens(student):
    x = _normal((2, T, D), 1)
    changed = np.concatenate([x[:, :4], _normal((2, T - 4, D), 9)], axis=1)  # positions 4.. differ
    weights = _mha_weights(D, NH, 1)
    result = student.run(mha_session, NH, x, weights, [changed], uses=(load_weights,))
    check_loaded(result["loaded"], weights, f"MultiHeadSelfAttention(num_heads={NH})")
    out, out_changed = result["outs"]
    assert_shape(out, (2, T, D), "MultiHeadSelfAttention output (B, T, D)")
    for inputs, got, what in ((x, out, "x"), (changed, out_changed, "x with positions 4-6 changed")):
        assert_close(got, np_mha(inputs, weights, NH), f"MultiHeadSelfAttention output on {what}", atol=1e-5)
    assert_close(
        out_changed[:, :4],
        out[:, :4],
        "attention outputs at positions 0-3 after changing positions 4-6 (the causal mask must hide the future)",
        atol=1e-6,
    )


# ------------------------------------------------------------------------------------------------------------
# DecoderBlock


def _check_block(student, config, seed):
    x = _normal((B, T, D), 1)
    weights = draw_weights(block_weight_shapes(config), seed)
    (result,) = student.run(block_session, config, x, [(weights, False)], uses=(load_weights,))
    check_loaded(result["loaded"], weights, f"{config['block']} DecoderBlock")
    assert_shape(result["out"], (B, T, D), "DecoderBlock output (B, T, D)")
    return result["out"], np_block(config, weights, x)


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "transformer.DecoderBlock: One pre-norm decoder block: residual self-attention and feed-forward branches,"
)
def test_sequential_decoder_block_is_pre_norm_with_two_residuals(student):
    out, expected = _check_block(student, dict(CORE, block="sequential"), 1)
    assert_close(out, expected, "sequential DecoderBlock vs x + attention(norm1(x)), then + mlp(norm2(.))", atol=1e-4)


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.DecoderBlock: One pre-norm decoder block: residual self-attention and feed-forward branches,",
    "transformer.DecoderBlock: `norm2` (None for the parallel block, whose branches share `norm1`)",
)
def test_parallel_decoder_block_feeds_one_norm_to_both_branches(student):
    out, expected = _check_block(student, dict(CORE, block="parallel"), 2)
    assert_close(out, expected, "parallel DecoderBlock vs x + attention(norm1(x)) + mlp(norm1(x))", atol=1e-4)


def _silenced(weights, layer):
    """`weights` with every weight of sublayer `layer` ("attention" or "mlp") zero, so that branch outputs 0."""
    return {p: np.zeros_like(w) if p.startswith(layer + ".") else w for p, w in weights.items()}


def _check_dropped(delta, branch, rate, what):
    """delta = output - input of a block whose only live branch outputs `branch`: each element is 0 (dropped) or
    branch / (1 - rate) (kept and rescaled), and about `rate` of them are dropped."""
    kept = np.abs(delta) > 1e-6
    assert_close(
        np.where(kept, delta, 0.0),
        np.where(kept, branch / (1.0 - rate), 0.0),
        f"{what}: each element of the branch's output must be dropped (0) or kept and scaled by 1 / (1 - rate)",
        atol=1e-4,
        rtol=1e-4,
    )
    dropped = 1.0 - kept.mean()
    assert abs(dropped - rate) < 6 * math.sqrt(rate * (1 - rate) / delta.size) + 0.02, (
        f"{what}: {dropped:.0%} of the branch's output elements were dropped with dropout={rate} and training=True "
        f"(expected about {rate:.0%}): is self.dropout(..., training=training) applied to this branch's output?"
    )


@pytest.mark.points(1)
@pytest.mark.clause("transformer.DecoderBlock: Dropout applies to each branch's output before it is added to x")
@pytest.mark.clause("transformer.MultiHeadSelfAttention: training: bool (unused: there is no dropout inside attention)")
def test_dropout_applies_to_the_branches_never_to_the_residual_stream(student):
    x = _normal((B, T, D), 1)
    rate = 0.5
    for block in ("sequential", "parallel"):
        config = dict(CORE, block=block, dropout=rate)
        weights = draw_weights(block_weight_shapes(config), 3)
        runs = [(weights, False), (_silenced(_silenced(weights, "attention"), "mlp"), True)]
        runs += [(_silenced(weights, "mlp"), True), (_silenced(weights, "attention"), True), (weights, True)]
        (full, silent, attention_only, mlp_only, both) = student.run(
            block_session, config, x, runs, uses=(load_weights,)
        )
        for (w, _), result in zip(runs, (full, silent, attention_only, mlp_only, both)):
            check_loaded(result["loaded"], w, f"{block} DecoderBlock")
        assert_close(
            full["out"], np_block(config, weights, x), f"{block} block with dropout={rate}, training=False", atol=1e-4
        )
        assert_close(
            silent["out"],
            x,
            f"{block} block whose branches output zeros, with dropout={rate} and training=True: dropout may drop "
            "a branch's output, x + dropout(branch), but never x itself (the residual stream carries the signal "
            "from layer to layer untouched)",
            atol=1e-6,
        )
        branches = []
        np_block(config, _silenced(weights, "mlp"), x, branches=branches)
        _check_dropped(attention_only["out"] - x, branches[0], rate, f"{block} block, attention branch")
        branches = []
        np_block(config, _silenced(weights, "attention"), x, branches=branches)
        _check_dropped(mlp_only["out"] - x, branches[1], rate, f"{block} block, feed-forward branch")
        if block == "parallel":  # both branches read norm1(x): each element keeps neither, one or both of them
            branches = []
            np_block(config, weights, x, branches=branches)
            attention, mlp = (b / (1.0 - rate) for b in branches)
            delta = both["out"] - x
            options = np.stack([np.zeros_like(delta), attention, mlp, attention + mlp])  # (4, B, T, D)
            choice = np.argmin(np.abs(options - delta), axis=0)
            assert_close(
                delta,
                np.take_along_axis(options, choice[None], 0)[0],
                f"{block} block with dropout={rate}, training=True: x + dropout(attention) + dropout(mlp)",
                atol=1e-4,
                rtol=1e-4,
            )
            alone = np.isin(choice, (1, 2)).mean()  # one branch kept, the other dropped: 2 p (1 - p) expected
            expected = 2 * rate * (1 - rate)
            assert abs(alone - expected) < 6 * math.sqrt(expected * (1 - expected) / delta.size) + 0.02, (
                f"{block} block: {alone:.0%} of the elements kept exactly one of the two branches (expected about "
                f"{expected:.0%}): each branch's output gets its own dropout, not one dropout of their sum"
            )


# ------------------------------------------------------------------------------------------------------------
# TransformerLanguageModel

CORE_CONFIGS = {  # core options only; the presets (RoPE, RMSNorm, SwiGLU, GQA) are bonus tests
    "gpt2-like": dict(),
    "untied, sinusoidal, no bias": dict(tie_embeddings=False, positions="sinusoidal", bias="none"),
    "parallel, non-parametric norm": dict(block="parallel", norm="nonparametric", bias="norm_only"),
}


def _model_runs(student, config, batches, seed=1, training=False):
    """The logits of a model of `config` holding the judge's weights (seed) on each batch, each checked against the
    NumPy model; returns (weights, [logits])."""
    weights = draw_weights(model_weight_shapes(config), seed)
    results = student.run(lm_session, config, [(weights, t, training) for t in batches], uses=(load_weights,))
    check_loaded(results[0]["loaded"], weights, "TransformerLanguageModel")
    return weights, [r["logits"] for r in results]


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.TransformerLanguageModel: logits `(B, T, V)` (float32) of the next token at every position",
    "transformer.TransformerLanguageModel: tokens: int tensor `(B, T)`, T <= context_length.",
)
def test_model_logits_have_shape_batch_time_vocab(student):
    for name, overrides in CORE_CONFIGS.items():
        config = dict(CORE, **overrides)
        batches = [_tokens(batch, time) for batch, time in ((B, T), (1, C), (1, 3))]
        weights, logits = _model_runs(student, config, batches)
        for tokens, out in zip(batches, logits):
            assert_shape(out, tokens.shape + (V,), f"logits (B, T, V) of the {name} model")
            assert np.asarray(out).dtype == np.float32, f"logits must be float32, got {np.asarray(out).dtype}"
            assert_matches_model(out, config, weights, tokens, f"the {name} model on a batch of shape {tokens.shape}")


@pytest.mark.points(1)
def test_model_logits_never_depend_on_later_tokens(student):
    for name, overrides in CORE_CONFIGS.items():
        config = dict(CORE, **overrides)
        tokens = _tokens(1, C)
        variants = [tokens[0]]
        for t in (3, 8):  # change the token at position t
            changed = tokens[0].copy()
            changed[t] = (changed[t] + 1) % V
            variants.append(changed)
        weights, (logits,) = _model_runs(student, config, [np.stack(variants)])
        assert_matches_model(logits, config, weights, np.stack(variants), f"the {name} model")
        for row, t in ((1, 3), (2, 8)):
            assert_close(
                logits[row, :t],
                logits[0, :t],
                f"{name} model: logits before position {t} after changing the token at position {t}",
                atol=1e-5,
            )


@pytest.mark.points(1)
@pytest.mark.clause("transformer.TransformerLanguageModel: by the transposed token embedding when `tie_embeddings`")
def test_tied_embeddings_are_one_matrix_used_for_input_and_output(student):
    tokens = np.random.default_rng(0).integers(0, V - 1, size=(B, T)).astype(np.int32)  # never token V-1
    for tied in (True, False):
        config = dict(CORE, tie_embeddings=tied, positions="sinusoidal")
        weights = draw_weights(model_weight_shapes(config), 1)
        edited = dict(weights, token_embedding=weights["token_embedding"].copy())
        edited["token_embedding"][V - 1] += _normal((D,), 3)
        before, after = student.run(
            lm_session, config, [(weights, tokens, False), (edited, tokens, False)], uses=(load_weights,)
        )
        what = f"tie_embeddings={tied} model"
        check_loaded(before["loaded"], weights, what + (" (no lm_head: one (V, D) matrix)" if tied else ""))
        check_loaded(after["loaded"], edited, what)
        assert_matches_model(before["logits"], config, weights, tokens, f"the {what}")
        assert_matches_model(
            after["logits"], config, edited, tokens, f"the {what} after changing the embedding of token V-1"
        )


@pytest.mark.points(0.5)
@pytest.mark.clause("transformer.TransformerLanguageModel: Token embedding (plus learned or sinusoidal positions")
def test_positions_are_added_to_the_token_embeddings(student):
    repeated = np.full((1, C), 5, np.int32)  # one token at every position: only the positions tell them apart
    for positions in ("learned", "sinusoidal"):
        config = dict(CORE, positions=positions)
        weights, (logits,) = _model_runs(student, config, [repeated])
        assert_matches_model(logits, config, weights, repeated, f'a model with positions="{positions}"')
    tokens = _tokens(1, C, seed=5)
    config = dict(CORE, positions="learned")
    weights = draw_weights(model_weight_shapes(config), 1)
    weights["position_embedding"] = -weights["token_embedding"][tokens[0]]  # embedding + position = 0 everywhere
    (result,) = student.run(lm_session, config, [(weights, tokens, False)], uses=(load_weights,))
    check_loaded(result["loaded"], weights, "TransformerLanguageModel")
    assert_matches_model(
        result["logits"],
        config,
        weights,
        tokens,
        "a model whose position table is minus the tokens' embeddings (token embedding + position = 0 everywhere; "
        "the positions are added to the token embeddings as they are, not subtracted, multiplied or scaled)",
    )


@pytest.mark.points(1)
@pytest.mark.clause("transformer.TransformerLanguageModel: Token embedding (plus learned or sinusoidal positions")
def test_every_weight_gets_a_gradient(student):
    tokens = _tokens()
    upstream = _normal((B, T, V), 11)
    for name, overrides in (("gpt2-like", dict()), ("untied", dict(tie_embeddings=False))):
        config = dict(CORE, **overrides)
        weights = draw_weights(model_weight_shapes(config), 1)
        result = student.run(lm_gradients, config, weights, tokens, upstream, uses=(load_weights,))
        check_loaded(result["loaded"], weights, f"{name} model")
        assert_matches_model(result["logits"], config, weights, tokens, f"the {name} model")
        unused = [p for p, g in result["grads"].items() if g is None]
        assert not unused, f"{name} model: these weights get no gradient, so the forward pass never uses them: {unused}"
        rng = np.random.default_rng(12)
        base = {p: w.astype(np.float64) for p, w in weights.items()}
        for path, grad in result["grads"].items():
            direction = rng.normal(size=weights[path].shape)
            eps = 1e-4
            plus = np.sum(np_model(config, dict(base, **{path: base[path] + eps * direction}), tokens) * upstream)
            minus = np.sum(np_model(config, dict(base, **{path: base[path] - eps * direction}), tokens) * upstream)
            expected = (plus - minus) / (2 * eps)  # the judge's directional derivative
            got = float(np.sum(np.asarray(grad, np.float64) * direction))
            assert abs(got - expected) <= 2e-3 * max(1.0, abs(expected)), (
                f"{name} model: the gradient with respect to `{path}` is wrong or missing: along a random direction "
                f"it gives {got:.5g}, finite differences of the logits give {expected:.5g} (is that weight used "
                "in the forward pass, with no tf.stop_gradient or NumPy detour?)"
            )


@pytest.mark.points(1)
def test_initial_loss_is_about_log_vocab_size(student):
    vocab = 50
    rng = np.random.default_rng(0)
    tokens, labels = (rng.integers(0, vocab, size=(8, C)).astype(np.int32) for _ in range(2))
    config = dict(CORE, vocab_size=vocab, d_model=32)
    shapes = model_weight_shapes(config)
    result = student.run(lm_fresh, config, list(shapes), tokens)
    weights = {p: np.asarray(w) for p, w in result["loaded"]["read"].items()}
    for path, shape in shapes.items():
        w = weights[path]
        assert_shape(w, shape, f"weight `{path}` of a fresh model")
        if len(shape) == 2:  # GPT-2's initializer, normal_init(): N(0, 0.02)
            assert abs(w.std() - 0.02) < 0.004 and abs(w.mean()) < 0.004, (
                f"weight `{path}` of a fresh model has mean {w.mean():.4f} and std {w.std():.4f}; expected the "
                "initializer the layers create it with, N(0, 0.02)"
            )
    check_loaded(result["loaded"], weights, "a fresh TransformerLanguageModel")
    assert_matches_model(result["logits"], config, weights, tokens, "a fresh model", atol=1e-5)
    logits = np_model(config, weights, tokens)
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = -np.take_along_axis(log_probs, labels[..., None], -1).mean()
    assert abs(loss - math.log(vocab)) < 0.1, (
        f"a freshly initialized model should predict nearly uniformly, with loss about ln(V) = {math.log(vocab):.3f}; "
        f"got {loss:.3f}"
    )


@pytest.mark.points(1.5)
@pytest.mark.timeout(60)
def test_model_overfits_one_tiny_batch(student):
    config = dict(CORE, d_model=32)
    tokens, labels = _tokens(2, 8, seed=3), _tokens(2, 8, seed=4)
    shapes = model_weight_shapes(config)
    weights = draw_weights(shapes, 5, scale=0.02)
    weights.update({p: np.ones(s, np.float32) for p, s in shapes.items() if p.endswith("gamma")})
    weights.update({p: np.zeros(s, np.float32) for p, s in shapes.items() if p.endswith("beta")})
    result = student.run(lm_overfit, config, weights, tokens, labels, uses=(load_weights,))
    trained = {p: np.asarray(w) for p, w in result["trained"].items()}
    check_loaded({"read": trained, "held": result["held"]}, trained, "the trained model")
    assert any(not np.array_equal(trained[p], weights[p]) for p in weights), "training changed no weight"
    assert_matches_model(result["logits"], config, trained, tokens, "the trained model", atol=1e-3)
    logits = np_model(config, trained, tokens)
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = -np.take_along_axis(log_probs, labels[..., None], -1).mean()
    assert loss < 0.1, (
        f"the loss on one tiny batch is {loss:.3f} after 100 Adam steps; it should fall below 0.1 "
        "(do the gradients reach every weight? does each position see its own token and the ones before?)"
    )
