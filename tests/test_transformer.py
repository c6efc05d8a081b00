"""Part 4 (25 points with the hidden tests): causal mask, attention, multi-head attention, decoder block, the model.

Attention and multi-head attention are compared with NumPy references (multi-head attention computed from the
weights the student's layer holds, as `keras.layers.MultiHeadAttention(use_causal_mask=True)` computes it); the
decoder block is compared with its own sublayers wired by hand; the model is checked for invariants (a later token
never changes an earlier logit, tied embeddings are one matrix) and for the sanity checks of a fresh language model
(loss about ln V, a gradient for every weight, a tiny batch overfits). Only the core options are used here
(LayerNorm, learned or sinusoidal positions, GELU, full attention); the bonus options are graded in
test_transformer_extensions.py. Sizes are tiny and all different (V=13, C=12, D=16, 4 heads of 4), so a swapped
axis shows up as a shape.
"""

import math

import numpy as np
import pytest
from checks import assert_close, assert_shape

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


# ------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return plain data (see grading/runtime/probes.py)


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


def block_with_silent_branches(config, x):
    """Probe: a DecoderBlock(TransformerConfig(**config)) whose attention and feed-forward weights are all zero, so
    both branches output zeros; its outputs on `x` with training=True and training=False."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    block = transformer.DecoderBlock(transformer.TransformerConfig(**config))
    x = tf.constant(x)
    block(x)
    for layer in (block.attention, block.mlp):
        for w in layer.weights:
            w.assign(tf.zeros(w.shape, w.dtype))
    return {"training": np.asarray(block(x, training=True)), "inference": np.asarray(block(x, training=False))}


def mha_session(num_heads, x, weight_seed, changed=None):
    """Probe: a MultiHeadSelfAttention(num_heads, use_bias=True) whose weights all get random values; returns its
    weights (wq, wk, wv, wo, bq, bk, bv, bo) and its outputs on `x` (and on `changed`)."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    layer = transformer.MultiHeadSelfAttention(num_heads=num_heads, use_bias=True)
    x = tf.constant(x)
    layer(x)
    rng = np.random.default_rng(weight_seed)
    for w in layer.weights:
        w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))
    out = {"weights": {n: np.asarray(getattr(layer, n)) for n in ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo")}}
    out["out"] = np.asarray(layer(x))
    if changed is not None:
        out["changed"] = np.asarray(layer(tf.constant(changed)))
    return out


def block_session(config, x):
    """Probe: a DecoderBlock(TransformerConfig(**config)) with random weights; returns its output and its own
    sublayers (norm1, attention, norm2, mlp) wired by hand on `x` as the config's block says."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    block = transformer.DecoderBlock(transformer.TransformerConfig(**config))
    x = tf.constant(x)
    block(x)
    rng = np.random.default_rng(1)
    for w in block.weights:  # norm1 and norm2 get different gains and offsets
        w.assign(rng.normal(0.0, 0.3, size=tuple(w.shape)).astype("float32"))
    if config["block"] == "sequential":
        wired = x + block.attention(block.norm1(x))
        wired = wired + block.mlp(block.norm2(wired))
    else:
        h = block.norm1(x)
        wired = x + block.attention(h) + block.mlp(h)
    return {"out": np.asarray(block(x)), "wired": np.asarray(wired)}


def _lm(config, randomize=True):
    """A built TransformerLanguageModel(TransformerConfig(**config)), random weights (seed 1, scale 0.3) unless told
    not to (a probe helper)."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    model = transformer.TransformerLanguageModel(transformer.TransformerConfig(**config))
    model(tf.zeros((1, 2), tf.int32))  # builds every weight, whatever the implementation
    if randomize:
        rng = np.random.default_rng(1)
        for w in model.weights:
            w.assign(rng.normal(0.0, 0.3, size=tuple(w.shape)).astype("float32"))
    return model


def lm_logits(config, batches, randomize=True):
    """Probe: the logits of one model of `config` on each batch of tokens."""
    import numpy as np
    import tensorflow as tf

    model = _lm(config, randomize)
    return [np.asarray(model(tf.constant(tokens))) for tokens in batches]


def lm_embedding_edit(config, tokens, row, delta):
    """Probe: the shapes of the (V, D) / (D, V) weights of a model, its logits, then its logits after adding `delta`
    to row `row` of its (V, D) weight."""
    import numpy as np
    import tensorflow as tf

    model = _lm(config)
    vocab, width = config["vocab_size"], config["d_model"]
    matrices = [tuple(w.shape) for w in model.trainable_weights if tuple(w.shape) in ((vocab, width), (width, vocab))]
    embedding = [w for w in model.trainable_weights if tuple(w.shape) == (vocab, width)][0]
    tokens = tf.constant(tokens)
    before = np.asarray(model(tokens))
    embedding.assign(tf.tensor_scatter_nd_add(embedding, [[row]], tf.constant(delta)))
    return {"matrices": matrices, "before": before, "after": np.asarray(model(tokens))}


def lm_cancelled_inputs(config, tokens):
    """Probe: the logits of a tied model with learned positions whose position table is set to minus the embeddings
    of `tokens` (C,), row by row, so that token embedding plus position is 0 at every position."""
    import numpy as np
    import tensorflow as tf

    model = _lm(config)
    vocab, width, context = config["vocab_size"], config["d_model"], config["context_length"]
    embedding = [w for w in model.trainable_weights if tuple(w.shape) == (vocab, width)][0]
    positions = [w for w in model.trainable_weights if tuple(w.shape) == (context, width)][0]
    positions.assign(-tf.gather(embedding, tokens))
    return np.asarray(model(tf.constant(tokens[None])))[0]  # (C, V)


def lm_training(config, tokens, labels, what, steps=100, randomize=True):
    """Probe: `what` = "gradients" (paths of the weights without a gradient), "loss" (the mean cross-entropy of a
    fresh model) or "overfit" (first and last loss of `steps` Adam steps at 1e-2 on one batch)."""
    import keras
    import numpy as np
    import tensorflow as tf

    model = _lm(config, randomize)
    tokens, labels = tf.constant(tokens), tf.constant(labels)

    def loss_of():
        logits = model(tokens, training=True)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    if what == "gradients":
        with tf.GradientTape() as tape:
            loss = loss_of()
        grads = tape.gradient(loss, model.trainable_weights)
        return [
            w.path
            for w, g in zip(model.trainable_weights, grads)
            if g is None or not np.any(np.asarray(tf.convert_to_tensor(g)))
        ]
    if what == "loss":
        return float(loss_of())
    optimizer = keras.optimizers.Adam(learning_rate=1e-2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of()
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
        return loss

    first = float(step())
    for _ in range(steps):
        loss = step()
    return first, float(loss)


def reference_mha(x, w, num_heads):
    """NumPy multi-head causal self-attention with the layer's weights: project, split the last axis into (nh, hs),
    attend with the causal mask, merge the heads, project with wo (keras.layers.MultiHeadAttention's equation)."""
    x = np.asarray(x, np.float64)
    batch, time, _ = x.shape

    def heads(z):  # (B, T, nh*hs) -> (B, nh, T, hs)
        return z.reshape(batch, time, num_heads, -1).transpose(0, 2, 1, 3)

    q, k, v = (heads(x @ w["w" + n] + w["b" + n]) for n in "qkv")
    out, _ = reference_attention(q, k, v, np.tril(np.ones((time, time), bool)))
    merged = out.transpose(0, 2, 1, 3).reshape(batch, time, -1)  # (B, T, nh*hs)
    return merged @ w["wo"] + w["bo"]


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
)
def test_attention_matches_numpy_reference(student):
    # (B, nh, T, hs) queries against (B, nh, S, hs) keys and (B, nh, S, hv) values: T, S, hs, hv all differ
    q, k, v = _normal((2, 3, 4, 5), 1), _normal((2, 3, 6, 5), 2), _normal((2, 3, 6, 7), 3)
    for mask in (None, _random_mask((4, 6), seed=4)):
        result = student.run(attention_session, q, k, v, mask, None)
        out, weights = result["out"], result["weights"]
        ref_out, ref_weights = reference_attention(q, k, v, mask)
        what = "with" if mask is not None else "without"
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
    weights = student.run(attention_session, q, k, v, mask, None)["weights"]
    masked = weights[:, ~mask]
    assert np.all(masked == 0.0), (
        f"masked attention weights must be exactly 0 (largest {np.abs(masked).max():.3g}): fill the masked scores "
        "with a very negative number before the softmax"
    )
    assert_close(weights.sum(axis=-1), np.ones((2, 5)), "sum of each row of attention weights over the keys", atol=1e-5)


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.scaled_dot_product_attention: A row with no allowed key has all-zero weights and a zero output,"
)
def test_attention_fully_masked_row_gives_zeros_not_nan(student):
    q, k, v = _normal((2, 4, 6), 1), _normal((2, 5, 6), 2), _normal((2, 5, 3), 3)
    mask = _random_mask((4, 5), seed=5).copy()
    mask[1] = False  # query 1 may attend to nothing
    result = student.run(attention_session, q, k, v, mask, _normal((2, 4, 3), 6))
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


@pytest.mark.points(2.5)
@pytest.mark.clause(
    "transformer.MultiHeadSelfAttention: heads are split by reshaping the last axis `(nh * hs)` into `(nh, hs)`,",
    "transformer.MultiHeadSelfAttention: use_bias: bool, whether the four projections have biases.",
    "transformer.MultiHeadSelfAttention.project_heads: Returns q `(B, nh, T, hs)` and k, v `(B, nkv, T, hs)`: x",
    "transformer.MultiHeadSelfAttention.attend_heads: Returns `(B, T, D)`: each query head attends over its keys,",
)
def test_multi_head_attention_matches_keras_with_the_same_weights(student):
    x = _normal((2, 5, 12), 1)  # B=2, T=5, D=12: 3 heads of 4
    result = student.run(mha_session, 3, x, 7)
    out = result["out"]
    assert_shape(out, (2, 5, 12), "MultiHeadSelfAttention output (B, T, D)")
    assert_close(
        out,
        reference_mha(x, result["weights"], 3),
        "MultiHeadSelfAttention vs keras.layers.MultiHeadAttention(use_causal_mask=True)'s equation with the same "
        "weights (project, split the last axis into (nh, hs), move heads before time, attend with the "
        "causal mask, merge heads back, project with wo)",
        atol=1e-5,
    )


@pytest.mark.points(1)
def test_multi_head_attention_output_never_depends_on_later_tokens(student):
    x = _normal((2, T, D), 1)
    changed = np.concatenate([x[:, :4], _normal((2, T - 4, D), 9)], axis=1)  # positions 4.. differ
    result = student.run(mha_session, NH, x, 1, changed)
    out, out_changed = result["out"], result["changed"]
    assert_shape(out, (2, T, D), "MultiHeadSelfAttention output (B, T, D)")
    assert_close(
        out_changed[:, :4],
        out[:, :4],
        "attention outputs at positions 0-3 after changing positions 4-6 (the causal mask must hide the future)",
        atol=1e-6,
    )


# ------------------------------------------------------------------------------------------------------------
# DecoderBlock


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "transformer.DecoderBlock: One pre-norm decoder block: residual self-attention and feed-forward branches,"
)
def test_sequential_decoder_block_is_pre_norm_with_two_residuals(student):
    result = student.run(block_session, dict(CORE, block="sequential"), _normal((B, T, D), 1))
    assert_shape(result["out"], (B, T, D), "DecoderBlock output (B, T, D)")
    assert_close(
        result["out"],
        result["wired"],
        "sequential DecoderBlock vs x + attention(norm1(x)), then + mlp(norm2(.))",
        atol=1e-5,
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.DecoderBlock: One pre-norm decoder block: residual self-attention and feed-forward branches,",
    "transformer.DecoderBlock: `norm2` (None for the parallel block, whose branches share `norm1`)",
)
def test_parallel_decoder_block_feeds_one_norm_to_both_branches(student):
    result = student.run(block_session, dict(CORE, block="parallel"), _normal((B, T, D), 1))
    assert_shape(result["out"], (B, T, D), "DecoderBlock output (B, T, D)")
    assert_close(
        result["out"], result["wired"], "parallel DecoderBlock vs x + attention(norm1(x)) + mlp(norm1(x))", atol=1e-5
    )


@pytest.mark.points(1)
@pytest.mark.clause("transformer.DecoderBlock: Dropout applies to each branch's output before it is added to x")
def test_dropout_applies_to_the_branches_never_to_the_residual_stream(student):
    x = _normal((B, T, D), 1)
    for block in ("sequential", "parallel"):
        out = student.run(block_with_silent_branches, dict(CORE, block=block, dropout=0.5), x)
        assert_close(
            out["inference"], x, f"{block} block whose branches output zeros, training=False (it must return x)"
        )
        assert_close(
            out["training"],
            x,
            f"{block} block whose branches output zeros, with dropout=0.5 and training=True: dropout may drop "
            "a branch's output, x + dropout(branch), but never x itself (the residual stream carries the signal "
            "from layer to layer untouched)",
            atol=1e-6,
        )


# ------------------------------------------------------------------------------------------------------------
# TransformerLanguageModel

CORE_CONFIGS = {  # core options only; the presets (RoPE, RMSNorm, SwiGLU, GQA) are bonus tests
    "gpt2-like": dict(),
    "untied, sinusoidal, no bias": dict(tie_embeddings=False, positions="sinusoidal", bias="none"),
    "parallel, non-parametric norm": dict(block="parallel", norm="nonparametric", bias="norm_only"),
}


@pytest.mark.points(1)
@pytest.mark.clause(
    "transformer.TransformerLanguageModel: logits `(B, T, V)` (float32) of the next token at every position"
)
def test_model_logits_have_shape_batch_time_vocab(student):
    for name, overrides in CORE_CONFIGS.items():
        shapes = ((B, T), (1, C))
        logits = student.run(
            lm_logits, dict(CORE, **overrides), [_tokens(batch, time) for batch, time in shapes], uses=(_lm,)
        )
        for (batch, time), out in zip(shapes, logits):
            assert_shape(out, (batch, time, V), f"logits (B, T, V) of the {name} model")


@pytest.mark.points(1)
def test_model_logits_never_depend_on_later_tokens(student):
    for name, overrides in CORE_CONFIGS.items():
        tokens = _tokens(1, C)
        variants = [tokens[0]]
        for t in (3, 8):  # change the token at position t
            changed = tokens[0].copy()
            changed[t] = (changed[t] + 1) % V
            variants.append(changed)
        (logits,) = student.run(lm_logits, dict(CORE, **overrides), [np.stack(variants)], uses=(_lm,))
        for row, t in ((1, 3), (2, 8)):
            assert_close(
                logits[row, :t],
                logits[0, :t],
                f"{name} model: logits before position {t} after changing the token at position {t}",
                atol=1e-5,
            )
            assert np.abs(logits[row, t] - logits[0, t]).max() > 1e-4, (
                f"{name} model: changing the token at position {t} did not change the logits at position {t}"
            )


@pytest.mark.points(1)
@pytest.mark.clause("transformer.TransformerLanguageModel: by the transposed token embedding when `tie_embeddings`")
def test_tied_embeddings_are_one_matrix_used_for_input_and_output(student):
    tokens = np.random.default_rng(0).integers(0, V - 1, size=(B, T)).astype(np.int32)  # never token V-1
    for tied in (True, False):
        config = dict(CORE, tie_embeddings=tied, positions="sinusoidal")
        result = student.run(lm_embedding_edit, config, tokens, V - 1, _normal((1, D), 3), uses=(_lm,))
        matrices, before, after = result["matrices"], result["before"], result["after"]
        assert len(matrices) == (1 if tied else 2), (
            f"tie_embeddings={tied}: expected {1 if tied else 2} weight(s) of shape (V, D) or (D, V), got {matrices}"
        )
        if tied:  # the output projection is the embedding: only the logits of token V-1 move
            assert np.abs(after[..., V - 1] - before[..., V - 1]).max() > 1e-3, (
                "with tie_embeddings=True the logits must be x times the transposed token embedding, so changing "
                "token V-1's embedding must change its logits"
            )
            assert_close(
                after[..., : V - 1],
                before[..., : V - 1],
                "tied model: logits of the other tokens after changing token V-1's embedding",
                atol=1e-6,
            )
        else:
            assert_close(
                after,
                before,
                "untied model: logits after changing the embedding of a token absent from "
                "the input (the output projection must be lm_head, not the embedding)",
                atol=1e-6,
            )


@pytest.mark.points(0.5)
@pytest.mark.clause("transformer.TransformerLanguageModel: Token embedding (plus learned or sinusoidal positions")
def test_positions_are_added_to_the_token_embeddings(student):
    repeated = np.full((1, C), 5, np.int32)  # one token at every position: only the positions tell them apart
    for positions in ("learned", "sinusoidal"):
        (logits,) = student.run(lm_logits, dict(CORE, positions=positions), [repeated], uses=(_lm,))
        assert np.abs(logits[0] - logits[0, :1]).max() > 1e-3, (
            f'positions="{positions}": a sequence repeating one token gave the same logits at every position, so '
            "the model cannot tell positions apart: the position vectors must be added to the token embeddings"
        )
    tokens = _tokens(1, C, seed=5)[0]
    logits = student.run(lm_cancelled_inputs, dict(CORE, positions="learned"), tokens, uses=(_lm,))
    assert_close(
        logits,
        np.broadcast_to(logits[:1], logits.shape),
        "logits at each position against those at position 0, with the position table set to minus the tokens' "
        "embeddings (token embedding + position = 0 everywhere, so every position must see the same zero vectors; "
        "the positions are added to the token embeddings as they are, not subtracted, multiplied or scaled)",
        atol=1e-5,
    )


@pytest.mark.points(1)
@pytest.mark.clause("transformer.TransformerLanguageModel: Token embedding (plus learned or sinusoidal positions")
def test_every_weight_gets_a_gradient(student):
    tokens = _tokens()
    for name, overrides in (("gpt2-like", dict()), ("untied", dict(tie_embeddings=False))):
        unused = student.run(lm_training, dict(CORE, **overrides), tokens, tokens, "gradients", uses=(_lm,))
        assert not unused, f"{name} model: these weights get no gradient, so the forward pass never uses them: {unused}"


@pytest.mark.points(1)
def test_initial_loss_is_about_log_vocab_size(student):
    vocab = 50
    rng = np.random.default_rng(0)
    tokens, labels = (rng.integers(0, vocab, size=(8, C)).astype(np.int32) for _ in range(2))
    config = dict(CORE, vocab_size=vocab, d_model=32)
    loss = student.run(lm_training, config, tokens, labels, "loss", randomize=False, uses=(_lm,))
    assert abs(loss - math.log(vocab)) < 0.1, (
        f"a freshly initialized model should predict nearly uniformly, with loss about ln(V) = {math.log(vocab):.3f}; "
        f"got {loss:.3f}"
    )


@pytest.mark.points(1.5)
@pytest.mark.timeout(60)
def test_model_overfits_one_tiny_batch(student):
    config = dict(CORE, d_model=32)
    first, loss = student.run(
        lm_training, config, _tokens(2, 8, seed=3), _tokens(2, 8, seed=4), "overfit", randomize=False, uses=(_lm,)
    )
    assert loss < 0.1, (
        f"the loss on one tiny batch went from {first:.3f} to {loss:.3f} in 100 Adam steps; it should fall below 0.1 "
        "(do the gradients reach every weight? does each position see its own token and the ones before?)"
    )
