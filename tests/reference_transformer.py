"""The transformer's NumPy reference, shared by the graded tests of part 4 (core, bonus and hidden).

A NumPy translation of the model the docstrings of assignment/transformer.py describe, for checking only: the test
draws every weight (`draw_weights` of `model_weight_shapes` or `block_weight_shapes`), a probe assigns them by name
(`load_weights`, sent with the probe) and reads them back (`check_loaded` compares them with what was sent), and the
student's outputs are compared with `np_model`, `np_block` or `np_mha` computed here from the same weights. Imported
by the judge, which never imports TensorFlow: NumPy and the standard library only.
"""

import math

import numpy as np
from checks import assert_close, assert_shape

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


def load_weights(obj, weights):
    """Probe helper (sent with a probe as `uses=(load_weights,)`, so self-contained): assigns each of `weights`
    ({attribute path: array}, `blocks.0.attention.wq`) to the variable at that path of `obj`, then reads them back,
    with every weight `obj` holds."""
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
