"""Part 4 (25 points with the hidden tests): causal mask, attention, multi-head attention, decoder block, the model.

Attention is compared with a NumPy reference and multi-head attention with `keras.layers.MultiHeadAttention`
holding the same weights; the decoder block is compared with its own sublayers wired by hand; the model is checked
for invariants (a later token never changes an earlier logit, tied embeddings are one matrix) and for the sanity
checks of a fresh language model (loss about ln V, a gradient for every weight, a tiny batch overfits). Only the
core options are used here (LayerNorm, learned or sinusoidal positions, GELU, full attention); the bonus options
are graded in test_transformer_extensions.py. Sizes are tiny and all different (V=13, C=12, D=16, 4 heads of 4),
so a swapped axis shows up as a shape.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import assert_close, assert_shape

from assignment import transformer

V, C, D, NH, L = 13, 12, 16, 4, 2  # vocabulary, context length, width, heads, layers
B, T = 2, 7  # batch, time


def _normal(shape, seed, scale=1.0):
    return tf.constant(np.random.default_rng(seed).normal(0.0, scale, size=shape), tf.float32)


def _tokens(batch=B, time=T, seed=0):
    """Returns int32 token ids of shape (batch, time)."""
    return tf.constant(np.random.default_rng(seed).integers(0, V, size=(batch, time)), tf.int32)


def _config(**overrides):
    """Returns a tiny TransformerConfig with only core options (GPT-2 style unless overridden)."""
    options = dict(vocab_size=V, context_length=C, d_model=D, num_heads=NH, num_layers=L)
    options.update(overrides)
    return transformer.TransformerConfig(**options)


def _randomize(layer, seed=1, scale=0.3):
    """Gives every weight of `layer` random values (norm gains and biases included), so no term hides as 0 or 1."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0.0, scale, size=tuple(w.shape)).astype("float32"))


def _model(randomize=True, **overrides):
    """Returns a TransformerLanguageModel of `_config(**overrides)`, built, with random weights unless told not to."""
    model = transformer.TransformerLanguageModel(_config(**overrides))
    model(_tokens(1, 2))  # builds every weight, whatever the implementation
    if randomize:
        _randomize(model)
    return model


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
    return tf.constant(rows.reshape(shape))


# ------------------------------------------------------------------------------------------------------------
# causal_mask and scaled_dot_product_attention


@pytest.mark.points(1)
def test_causal_mask_allows_exactly_the_past_and_present():
    for length in (1, 2, 5):
        mask = transformer.causal_mask(length)
        assert_shape(mask, (length, length), f"causal_mask({length})")
        assert tf.as_dtype(mask.dtype) == tf.bool, f"causal_mask must be a bool tensor, got dtype {mask.dtype}"
        expected = np.tril(np.ones((length, length), bool))
        got = np.asarray(mask)
        wrong = np.argwhere(got != expected)
        assert not len(wrong), (
            f"causal_mask({length})[{wrong[0][0]}, {wrong[0][1]}] is {got[tuple(wrong[0])]}: query i may attend to "
            f"key j exactly when j <= i (True on and below the diagonal)\ngot\n{got.astype(int)}"
        )


@pytest.mark.points(1)
def test_attention_matches_numpy_reference():
    # (B, nh, T, hs) queries against (B, nh, S, hs) keys and (B, nh, S, hv) values: T, S, hs, hv all differ
    q, k, v = _normal((2, 3, 4, 5), 1), _normal((2, 3, 6, 5), 2), _normal((2, 3, 6, 7), 3)
    for mask in (None, _random_mask((4, 6), seed=4)):
        out, weights = transformer.scaled_dot_product_attention(q, k, v, mask)
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
def test_attention_accepts_numpy_arrays():
    # The notebooks and students call attention on NumPy arrays too; they have no `.dtype.min`, tensors do.
    q, k, v = _normal((2, 4, 5), 1).numpy(), _normal((2, 6, 5), 2).numpy(), _normal((2, 6, 3), 3).numpy()
    mask = _random_mask((4, 6), seed=4).numpy()
    for name, args in (("q, k, v", (q, k, v, None)), ("q, k, v and mask", (q, k, v, mask))):
        try:
            out, weights = transformer.scaled_dot_product_attention(*args)
        except Exception as error:  # any error is the failure this test reports
            pytest.fail(
                f"scaled_dot_product_attention must accept NumPy arrays as {name}, as tensors; it raised "
                f"{type(error).__name__}: {error} (tf.convert_to_tensor turns an array into a tensor)"
            )
        ref_out, ref_weights = reference_attention(*args)
        assert_shape(weights, ref_weights.shape, f"attention weights (..., T, S) of NumPy {name}")
        assert_shape(out, ref_out.shape, f"attention output (..., T, hv) of NumPy {name}")
        assert_close(weights, ref_weights, f"attention weights of NumPy {name}", atol=1e-5)
        assert_close(out, ref_out, f"attention output of NumPy {name}", atol=1e-5)


@pytest.mark.points(1)
def test_attention_rows_sum_to_one_and_masked_weights_are_exactly_zero():
    q, k, v = _normal((2, 5, 8), 1, scale=3.0), _normal((2, 5, 8), 2, scale=3.0), _normal((2, 5, 8), 3)
    mask = tf.constant(np.tril(np.ones((5, 5), bool)))  # causal, built here so a wrong causal_mask costs nothing
    _, weights = transformer.scaled_dot_product_attention(q, k, v, mask)
    weights = np.asarray(weights)
    masked = weights[:, ~np.asarray(mask)]
    assert np.all(masked == 0.0), (
        f"masked attention weights must be exactly 0 (largest {np.abs(masked).max():.3g}): fill the masked scores "
        "with a very negative number before the softmax"
    )
    assert_close(weights.sum(axis=-1), np.ones((2, 5)), "sum of each row of attention weights over the keys", atol=1e-5)


@pytest.mark.points(1)
def test_attention_fully_masked_row_gives_zeros_not_nan():
    q, k, v = _normal((2, 4, 6), 1), _normal((2, 5, 6), 2), _normal((2, 5, 3), 3)
    mask = np.asarray(_random_mask((4, 5), seed=5)).copy()
    mask[1] = False  # query 1 may attend to nothing
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        out, weights = transformer.scaled_dot_product_attention(q, k, v, tf.constant(mask))
        loss = tf.reduce_sum(out * _normal(out.shape, 6))
    grads = tape.gradient(loss, [q, k, v])
    out, weights = np.asarray(out), np.asarray(weights)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights)), (
        "a fully masked row produced NaN or inf: fill masked scores with a large negative finite number (not -inf) "
        "and set masked weights to 0 after the softmax"
    )
    for name, grad in zip("qkv", grads):
        assert grad is not None and np.all(np.isfinite(np.asarray(grad))), (
            f"the gradient with respect to {name} has NaN or inf when a row is fully masked: a -inf score makes the "
            "softmax NaN, and tf.where does not stop NaN from flowing back; use a large negative finite number"
        )
    assert np.all(weights[:, 1] == 0.0), f"a fully masked row must have all-zero weights, got {weights[0, 1]}"
    ref_out, ref_weights = reference_attention(q, k, v, mask)
    assert_close(weights, ref_weights, "attention weights with a fully masked row", atol=1e-5)
    assert_close(out, ref_out, "attention output with a fully masked row (that row is 0)", atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# MultiHeadSelfAttention


def _keras_attention_like(layer, x, num_heads, use_bias, seed=7):
    """Returns (keras MultiHeadAttention with random weights, the same weights loaded into `layer`)."""
    d_model = x.shape[-1]
    head_size = d_model // num_heads
    ref = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=head_size, use_bias=use_bias)
    ref(x, x, use_causal_mask=True)
    _randomize(ref, seed=seed, scale=0.5)
    layer(x)  # builds wq, wk, wv, wo (and the biases)
    width = num_heads * head_size
    for name, dense in (("q", ref.query_dense), ("k", ref.key_dense), ("v", ref.value_dense)):
        getattr(layer, "w" + name).assign(tf.reshape(dense.kernel, (d_model, width)))  # (D, nh, hs) -> (D, nh*hs)
        if use_bias:
            getattr(layer, "b" + name).assign(tf.reshape(dense.bias, (width,)))  # (nh, hs) -> (nh*hs,)
    layer.wo.assign(tf.reshape(ref.output_dense.kernel, (width, d_model)))  # (nh, hs, D) -> (nh*hs, D)
    if use_bias:
        layer.bo.assign(ref.output_dense.bias)
    return ref


@pytest.mark.points(3)
def test_multi_head_attention_matches_keras_with_the_same_weights():
    x = _normal((2, 5, 12), 1)  # B=2, T=5, D=12: 3 heads of 4
    layer = transformer.MultiHeadSelfAttention(num_heads=3, use_bias=True)
    ref = _keras_attention_like(layer, x, num_heads=3, use_bias=True)
    out = layer(x)
    assert_shape(out, (2, 5, 12), "MultiHeadSelfAttention output (B, T, D)")
    assert_close(
        out,
        ref(x, x, use_causal_mask=True),
        "MultiHeadSelfAttention vs keras.layers.MultiHeadAttention(use_causal_mask=True) with the same "
        "weights (project, split the last axis into (nh, hs), move heads before time, attend with the "
        "causal mask, merge heads back, project with wo)",
        atol=1e-5,
    )


@pytest.mark.points(1)
def test_multi_head_attention_output_never_depends_on_later_tokens():
    layer = transformer.MultiHeadSelfAttention(num_heads=NH, use_bias=True)
    x = _normal((2, T, D), 1)
    layer(x)
    _randomize(layer, scale=0.5)
    changed = tf.concat([x[:, :4], _normal((2, T - 4, D), 9)], axis=1)  # positions 4.. differ
    out, out_changed = layer(x), layer(changed)
    assert_shape(out, (2, T, D), "MultiHeadSelfAttention output (B, T, D)")
    assert_close(
        out_changed[:, :4],
        out[:, :4],
        "attention outputs at positions 0-3 after changing positions 4-6 (the causal mask must hide the future)",
        atol=1e-6,
    )


# ------------------------------------------------------------------------------------------------------------
# DecoderBlock


@pytest.mark.points(2)
def test_sequential_decoder_block_is_pre_norm_with_two_residuals():
    block = transformer.DecoderBlock(_config(block="sequential"))
    x = _normal((B, T, D), 1)
    block(x)
    _randomize(block)  # norm1 and norm2 get different gains and offsets
    expected = x + block.attention(block.norm1(x))
    expected = expected + block.mlp(block.norm2(expected))
    out = block(x)
    assert_shape(out, (B, T, D), "DecoderBlock output (B, T, D)")
    assert_close(out, expected, "sequential DecoderBlock vs x + attention(norm1(x)), then + mlp(norm2(.))", atol=1e-5)


@pytest.mark.points(1)
def test_parallel_decoder_block_feeds_one_norm_to_both_branches():
    block = transformer.DecoderBlock(_config(block="parallel"))
    x = _normal((B, T, D), 1)
    block(x)
    _randomize(block)
    h = block.norm1(x)
    expected = x + block.attention(h) + block.mlp(h)
    out = block(x)
    assert_shape(out, (B, T, D), "DecoderBlock output (B, T, D)")
    assert_close(out, expected, "parallel DecoderBlock vs x + attention(norm1(x)) + mlp(norm1(x))", atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# TransformerLanguageModel

CORE_CONFIGS = {  # core options only; the presets (RoPE, RMSNorm, SwiGLU, GQA) are bonus tests
    "gpt2-like": dict(),
    "untied, sinusoidal, no bias": dict(tie_embeddings=False, positions="sinusoidal", bias="none"),
    "parallel, non-parametric norm": dict(block="parallel", norm="nonparametric", bias="norm_only"),
}


@pytest.mark.points(1)
def test_model_logits_have_shape_batch_time_vocab():
    for name, overrides in CORE_CONFIGS.items():
        model = _model(**overrides)
        for batch, time in ((B, T), (1, C)):
            assert_shape(model(_tokens(batch, time)), (batch, time, V), f"logits (B, T, V) of the {name} model")


@pytest.mark.points(2)
def test_model_logits_never_depend_on_later_tokens():
    for name, overrides in CORE_CONFIGS.items():
        model = _model(**overrides)
        tokens = np.asarray(_tokens(1, C))
        variants = [tokens[0]]
        for t in (3, 8):  # change the token at position t
            changed = tokens[0].copy()
            changed[t] = (changed[t] + 1) % V
            variants.append(changed)
        logits = np.asarray(model(tf.constant(np.stack(variants))))
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
def test_tied_embeddings_are_one_matrix_used_for_input_and_output():
    tokens = tf.constant(np.random.default_rng(0).integers(0, V - 1, size=(B, T)), tf.int32)  # never token V-1
    for tied in (True, False):
        model = _model(tie_embeddings=tied, positions="sinusoidal")
        matrices = [w for w in model.trainable_weights if tuple(w.shape) in ((V, D), (D, V))]
        assert len(matrices) == (1 if tied else 2), (
            f"tie_embeddings={tied}: expected {1 if tied else 2} weight(s) of shape (V, D) or (D, V), got "
            f"{[tuple(w.shape) for w in matrices]}"
        )
        embedding = [w for w in model.trainable_weights if tuple(w.shape) == (V, D)][0]
        before = np.asarray(model(tokens))
        embedding.assign(tf.tensor_scatter_nd_add(embedding, [[V - 1]], _normal((1, D), 3)))  # token V-1's row
        after = np.asarray(model(tokens))
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


@pytest.mark.points(1)
def test_every_weight_gets_a_gradient():
    for name, overrides in (("gpt2-like", dict()), ("untied", dict(tie_embeddings=False))):
        model = _model(**overrides)
        tokens = _tokens()
        with tf.GradientTape() as tape:
            logits = model(tokens, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tokens, logits))
        grads = tape.gradient(loss, model.trainable_weights)
        unused = [
            w.path
            for w, g in zip(model.trainable_weights, grads)
            if g is None or not np.any(np.asarray(tf.convert_to_tensor(g)))
        ]
        assert not unused, f"{name} model: these weights get no gradient, so the forward pass never uses them: {unused}"


@pytest.mark.points(1)
def test_initial_loss_is_about_log_vocab_size():
    vocab = 50
    model = transformer.TransformerLanguageModel(_config(vocab_size=vocab, d_model=32))
    rng = np.random.default_rng(0)
    tokens, labels = (tf.constant(rng.integers(0, vocab, size=(8, C)), tf.int32) for _ in range(2))
    logits = model(tokens)
    loss = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
    assert abs(loss - math.log(vocab)) < 0.1, (
        f"a freshly initialized model should predict nearly uniformly, with loss about ln(V) = {math.log(vocab):.3f}; "
        f"got {loss:.3f}"
    )


@pytest.mark.points(2)
@pytest.mark.timeout(60)
def test_model_overfits_one_tiny_batch():
    model = transformer.TransformerLanguageModel(_config(d_model=32))
    inputs = _tokens(2, 8, seed=3)
    labels = _tokens(2, 8, seed=4)
    optimizer = keras.optimizers.Adam(learning_rate=1e-2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
        return loss

    first = float(step())
    for _ in range(100):
        loss = step()
    loss = float(loss)
    assert loss < 0.1, (
        f"the loss on one tiny batch went from {first:.3f} to {loss:.3f} in 100 Adam steps; it should fall below 0.1 "
        "(do the gradients reach every weight? does each position see its own token and the ones before?)"
    )
