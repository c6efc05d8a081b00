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


def mha_without_bias(num_heads, x, weights):
    """Probe: a MultiHeadSelfAttention(num_heads, use_bias=False) holding `weights` (wq, wk, wv, wo): its weights
    read back and its output on `x`."""
    import numpy as np
    import tensorflow as tf

    from assignment import transformer

    layer = transformer.MultiHeadSelfAttention(num_heads=num_heads, use_bias=False)
    x = tf.constant(x)
    layer(x)
    return {"loaded": _load(layer, weights), "out": np.asarray(layer(x))}


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
        loaded = _load(model, weights)
        results.append({"loaded": loaded, "logits": np.asarray(model(tf.constant(tokens), training=training))})
    return results


def _model_runs(student, config, runs):
    """Runs (weights, tokens, training) on one model of `config`; checks each run's weights read back."""
    results = student.run(lm_session, config, runs, uses=(_load,))
    for (weights, _, _), result in zip(runs, results):
        check_loaded(result["loaded"], weights, "TransformerLanguageModel")
    return [r["logits"] for r in results]


# ------------------------------------------------------------------------------------------------------------
# The judge's own model: weights it draws, and NumPy references computed from them (never from the runner)

CONFIG_DEFAULTS = dict(
    num_kv_heads=None,
    norm="layernorm",
    positions="learned",
    bias="all",
    block="sequential",
    activation="gelu",
    mlp_ratio=4.0,
    tie_embeddings=True,
    dropout=0.0,
    rope_base=10000.0,
    norm_epsilon=1e-5,
)


def _options(config):
    """The config's options with every default filled in (TransformerConfig's defaults)."""
    return dict(CONFIG_DEFAULTS, **config)


def _norm_specs(c, prefix, width):
    if c["norm"] == "rmsnorm":
        return {prefix + "scale": (width,)}
    if c["norm"] == "layernorm":
        return {prefix + "gamma": (width,), **({prefix + "beta": (width,)} if c["bias"] != "none" else {})}
    return {}  # non-parametric: no weights


def block_weight_shapes(config, prefix=""):
    """{attribute path: shape} of every weight a DecoderBlock of `config` holds, as its docstrings name them."""
    c = _options(config)
    d, nh = c["d_model"], c["num_heads"]
    hs, nkv = d // nh, c["num_kv_heads"] or nh
    width = max(1, round(c["mlp_ratio"] * d))
    shapes = dict(_norm_specs(c, prefix + "norm1.", d))
    a = prefix + "attention."
    shapes.update({a + "wq": (d, nh * hs), a + "wk": (d, nkv * hs), a + "wv": (d, nkv * hs), a + "wo": (nh * hs, d)})
    if c["bias"] == "all":
        shapes.update({a + "bq": (nh * hs,), a + "bk": (nkv * hs,), a + "bv": (nkv * hs,), a + "bo": (d,)})
    if c["block"] == "sequential":
        shapes.update(_norm_specs(c, prefix + "norm2.", d))
    m = prefix + "mlp."
    swiglu = c["activation"] == "swiglu"
    shapes.update({m + "w_in": (d, width), **({m + "w_gate": (d, width)} if swiglu else {}), m + "w_out": (width, d)})
    if c["bias"] == "all":
        shapes.update({m + "b_in": (width,), **({m + "b_gate": (width,)} if swiglu else {}), m + "b_out": (d,)})
    return shapes


def model_weight_shapes(config):
    """{attribute path: shape} of every weight a TransformerLanguageModel of `config` holds."""
    c = _options(config)
    shapes = {"token_embedding": (c["vocab_size"], c["d_model"])}
    if c["positions"] == "learned":
        shapes["position_embedding"] = (c["context_length"], c["d_model"])
    for i in range(c["num_layers"]):
        shapes.update(block_weight_shapes(c, f"blocks.{i}."))
    shapes.update(_norm_specs(c, "final_norm.", c["d_model"]))
    if not c["tie_embeddings"]:
        shapes["lm_head"] = (c["d_model"], c["vocab_size"])
    return shapes


def draw_weights(shapes, seed, scale=0.3):
    """The judge's weights for `shapes`: N(0, scale) draws from `seed` (norm gains around 1)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for path, shape in shapes.items():
        value = rng.normal(0.0, scale, size=shape)
        weights[path] = (value + 1.0 if path.endswith(("gamma", "scale")) else value).astype(np.float32)
    return weights


def _load(obj, weights):
    """Probe helper: assigns each of `weights` ({attribute path: array}, `blocks.0.attention.wq`) to the variable at
    that path of `obj`, then reads them back, with every weight `obj` holds."""
    import numpy as np

    variables = {}
    for path, value in weights.items():
        target = obj
        for part in path.split("."):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        target.assign(value)
        variables[path] = target
    return {
        "read": {path: np.asarray(v) for path, v in variables.items()},
        "held": [np.asarray(w) for w in obj.weights],
    }


def check_loaded(loaded, weights, what):
    """The weights a probe read back are exactly those the judge sent, and the object holds no other weight."""
    for path, value in weights.items():
        assert np.array_equal(np.asarray(loaded["read"][path]), value), (
            f"{what}: weight `{path}` does not hold the values assigned to it (is it a variable the layer uses?)"
        )
    held = [np.asarray(h) for h in loaded["held"]]
    left = list(weights.values())
    for h in held:
        match = [i for i, w in enumerate(left) if w.shape == h.shape and np.array_equal(w, h)]
        assert match, f"{what} holds a weight of shape {h.shape} that its docstring does not name"
        left.pop(match[0])
    assert not left, (
        f"{what} holds {len(held)} weights, expected the {len(weights)} its docstrings name: {sorted(weights)}"
    )


def np_layer_norm(x, gamma=None, beta=None, epsilon=1e-5):
    mean = x.mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + epsilon)
    return y * (1.0 if gamma is None else gamma) + (0.0 if beta is None else beta)


def np_norm(c, w, prefix, x):
    if c["norm"] == "rmsnorm":
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + c["norm_epsilon"]) * w[prefix + "scale"]
    return np_layer_norm(x, w.get(prefix + "gamma"), w.get(prefix + "beta"), c["norm_epsilon"])


def np_rope(x, positions, base=10000.0, pairing="halves"):
    """NumPy RoPE of x (..., T, hs): pair p is (p, p + hs/2) ("halves") or (2p, 2p + 1) ("interleaved")."""
    half = x.shape[-1] // 2
    angles = np.asarray(positions, np.float64)[:, None] * base ** (-2.0 * np.arange(half) / (2 * half))
    cos, sin = np.cos(angles), np.sin(angles)
    if pairing == "halves":
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return np.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(x.shape)


def np_attention(q, k, v, mask):
    scores = np.where(mask, q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1]), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return weights @ v


def np_mha(x, w, num_heads, num_kv_heads=None, prefix="", rope=None, positions=None, pairing="halves"):
    """NumPy causal multi-head self-attention with the judge's weights (wq, wk, wv, wo, and bq, bk, bv, bo when
    present): project, split the last axis into (heads, hs), RoPE on q and k when `rope` (its base), repeat each
    key/value head for its group, attend with the causal mask, merge heads, project with wo."""
    x = np.asarray(x, np.float64)
    batch, time, _ = x.shape
    kv = num_kv_heads or num_heads
    positions = np.arange(time) if positions is None else np.asarray(positions)

    def heads(name, n):  # (B, T, n*hs) -> (B, n, T, hs)
        z = x @ w[prefix + "w" + name] + w.get(prefix + "b" + name, 0.0)
        return z.reshape(batch, time, n, -1).transpose(0, 2, 1, 3)

    q, k, v = heads("q", num_heads), heads("k", kv), heads("v", kv)
    if rope is not None:
        q, k = np_rope(q, positions, rope, pairing), np_rope(k, positions, rope, pairing)
    k, v = k.repeat(num_heads // kv, axis=1), v.repeat(num_heads // kv, axis=1)
    out = np_attention(q, k, v, positions[None, :] <= positions[:, None])
    merged = out.transpose(0, 2, 1, 3).reshape(batch, time, -1)
    return merged @ w[prefix + "wo"] + w.get(prefix + "bo", 0.0)


def np_mlp(c, w, prefix, x):
    up = x @ w[prefix + "w_in"] + w.get(prefix + "b_in", 0.0)
    if c["activation"] == "swiglu":
        gate = x @ w[prefix + "w_gate"] + w.get(prefix + "b_gate", 0.0)
        hidden = gate / (1.0 + np.exp(-gate)) * up
    else:
        hidden = 0.5 * up * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (up + 0.044715 * up**3)))
    return hidden @ w[prefix + "w_out"] + w.get(prefix + "b_out", 0.0)


def np_block(config, w, x, prefix="", pairing="halves", branches=None):
    """NumPy pre-norm decoder block with the judge's weights; `branches` (a list) collects each branch's output."""
    c = _options(config)
    x = np.asarray(x, np.float64)
    rope = c["rope_base"] if c["positions"] == "rope" else None

    def attend(h):
        out = np_mha(h, w, c["num_heads"], c["num_kv_heads"], prefix + "attention.", rope, pairing=pairing)
        return out if branches is None else branches.append(out) or out

    def mlp(h):
        out = np_mlp(c, w, prefix + "mlp.", h)
        return out if branches is None else branches.append(out) or out

    if c["block"] == "sequential":
        x = x + attend(np_norm(c, w, prefix + "norm1.", x))
        return x + mlp(np_norm(c, w, prefix + "norm2.", x))
    h = np_norm(c, w, prefix + "norm1.", x)
    return x + attend(h) + mlp(h)


def np_sinusoids(length, width):
    positions = np.arange(length)[:, None]
    frequencies = 10000.0 ** (-np.arange(0, width, 2) / width)
    table = np.zeros((length, width))
    table[:, 0::2] = np.sin(positions * frequencies)
    table[:, 1::2] = np.cos(positions * frequencies[: width // 2])
    return table


def np_model(config, w, tokens, pairing="halves"):
    """NumPy logits (B, T, V) of a TransformerLanguageModel of `config` holding the judge's weights `w`."""
    c = _options(config)
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    tokens = np.asarray(tokens)
    x = w["token_embedding"][tokens]
    if c["positions"] == "learned":
        x = x + w["position_embedding"][: tokens.shape[1]]
    elif c["positions"] == "sinusoidal":
        x = x + np_sinusoids(c["context_length"], c["d_model"])[: tokens.shape[1]]
    for i in range(c["num_layers"]):
        x = np_block(c, w, x, f"blocks.{i}.", pairing)
    x = np_norm(c, w, "final_norm.", x)
    return x @ (w["token_embedding"].T if c["tie_embeddings"] else w["lm_head"])


def assert_matches_model(logits, config, weights, tokens, what, atol=1e-4):
    """The logits equal the judge's NumPy model on the judge's weights (with RoPE, either pairing of the docstring)."""
    pairings = ("halves", "interleaved") if _options(config)["positions"] == "rope" else ("halves",)
    refs = [np_model(config, weights, tokens, p) for p in pairings]
    assert_shape(logits, refs[0].shape, f"logits (B, T, V) of {what}")
    best = min(refs, key=lambda r: np.abs(np.asarray(logits, np.float64) - r).max())
    assert_close(logits, best, f"logits of {what} vs the NumPy model with the same weights", atol=atol, rtol=1e-4)


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
    result = student.run(mha_without_bias, 2, x, w, uses=(_load,))
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
