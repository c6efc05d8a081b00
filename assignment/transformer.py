"""Part 4: a decoder-only transformer language model, with the lecture's modern options and a KV cache.

Dimension letters, used in every docstring and shape comment:
    B batch, T query positions (time), S key positions, V vocabulary size, D model width (d_model),
    nh query heads, nkv key/value heads, g = nh // nkv query heads per key/value head, hs head size (D // nh),
    F feed-forward width, L layers, C context length.

Build it bottom up: `causal_mask` -> `scaled_dot_product_attention` -> `MultiHeadSelfAttention` -> `DecoderBlock`
-> `TransformerLanguageModel`. The bonus parts plug into that skeleton: `apply_rope` (RoPE), `expand_kv_heads`
(GQA/MQA), `RMSNorm` and `swiglu`, and `update_kv_cache` with `cached_attention_mask` (the KV cache).
"""

import keras
import tensorflow as tf

from lmkit.kv_cache import KVCache, KVCacheDecoding, LayerCache
from lmkit.layers import FeedForward, FromConfig, TensorLike, linear, make_norm, normal_init, sinusoidal_table
from lmkit.transformer_config import TransformerConfig  # also `from assignment.transformer import ...`

# -- Core: mask and attention ------------------------------------------------------------------------------------


def causal_mask(seq_len: int | tf.Tensor) -> tf.Tensor:
    """Returns the causal mask, a bool tensor of shape `(seq_len, seq_len)`: True where query i may attend to key j.

    Query i may attend to keys j <= i (itself and the past), never to the future.

    Args:
        seq_len: int (or int32 scalar tensor), T.

    Examples:
    ```python
    causal_mask(3)  # [[True, False, False], [True, True, False], [True, True, True]]
    ```
    """
    # TODO: compare a column of query positions with a row of key positions (~2 lines)
    #   1. positions = 0 .. T-1 (tf.range) -> (T,)
    #   2. mask[i, j] = j <= i, by broadcasting positions[:, None] against positions[None, :] -> (T, T) bool
    # BEGIN SOLUTION
    positions = tf.range(seq_len)  # (T,)
    return positions[:, None] >= positions[None, :]  # (T, T)
    # END SOLUTION


def scaled_dot_product_attention(
    q: TensorLike, k: TensorLike, v: TensorLike, mask: TensorLike | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns `(output, weights)`: softmax(q k^T / sqrt(hs)) v over the last two axes.

    Args:
        q: float tensor or NumPy array `(..., T, hs)`, the queries.
        k: float tensor or NumPy array `(..., S, hs)`, the keys, of q's dtype.
        v: float tensor or NumPy array `(..., S, hv)`, the values, of q's dtype.
        mask: optional bool tensor or array broadcastable to `(..., T, S)`: True where query t may attend to key s.
            The leading axes `...` of q, k, v and mask broadcast as in `tf.matmul`.

    Returns:
        output: `(..., T, hv)`, each query's weighted average of the values.
        weights: `(..., T, S)`, each row a softmax over the allowed keys: masked weights are exactly 0, the others
            sum to 1. A row with no allowed key has all-zero weights and a zero output, never NaN.

    Examples:
    ```python
    q = k = v = tf.random.normal((2, 4, 5, 8))           # (B, nh, T, hs)
    out, w = scaled_dot_product_attention(q, k, v, causal_mask(5))
    out.shape, w.shape                                   # (2, 4, 5, 8), (2, 4, 5, 5)
    ```
    """
    q, k, v = (tf.convert_to_tensor(t) for t in (q, k, v))  # NumPy arrays too: below, q.dtype is a tf.DType
    if mask is not None:
        mask = tf.convert_to_tensor(mask)
    # TODO: attention weights and output, softmax(q k^T / sqrt(hs)) v (~8 lines)
    #   1. scores = q k^T / sqrt(hs), hs being the size of q's last axis (tf.matmul with transpose_b=True)
    #      -> (..., T, S)
    #   2. with a mask, replace the scores where it is False by a very negative *finite* number such as
    #      q.dtype.min (tf.where; -inf would turn a fully masked row into NaN) -> (..., T, S)
    #   3. weights = softmax over the last axis, the keys -> (..., T, S)
    #   4. with a mask, set the masked weights to exactly 0 (tf.where again: a fully masked row was uniform)
    #      -> (..., T, S)
    #   5. output = weights v; return (output, weights) -> (..., T, hv) and (..., T, S)
    # BEGIN SOLUTION
    head_size = tf.cast(tf.shape(q)[-1], q.dtype)
    scores = tf.matmul(q, k, transpose_b=True) / tf.sqrt(head_size)  # (..., T, S)
    if mask is not None:
        scores = tf.where(mask, scores, tf.constant(q.dtype.min, q.dtype))  # (..., T, S)
    weights = tf.nn.softmax(scores, axis=-1)  # (..., T, S)
    if mask is not None:
        weights = tf.where(mask, weights, tf.zeros_like(weights))  # (..., T, S)
    return tf.matmul(weights, v), weights  # (..., T, hv), (..., T, S)
    # END SOLUTION


# -- Bonus parts used inside attention: RoPE, GQA/MQA, the KV cache ----------------------------------------------


def apply_rope(x: tf.Tensor, positions: tf.Tensor, base: float = 10000.0) -> tf.Tensor:
    """Returns x with rotary position embeddings (RoPE): pairs of dimensions rotated by position-dependent angles.

    Pair p (p = 0 .. hs/2 - 1) of the vector at position m is rotated by the angle m * base^(-2p / hs). Which two
    dimensions form pair p is your choice (LLaMA: 2p and 2p + 1; GPT-NeoX and Hugging Face: p and p + hs/2), as
    long as both use pair p's angle. Rotations make the dot product of a query at position m and a key at position
    n depend on m - n only:
    `apply_rope(q, [m]) . apply_rope(k, [n]) == apply_rope(q, [m + s]) . apply_rope(k, [n + s])`.

    Args:
        x: float tensor `(..., T, hs)`, hs even (queries or keys, e.g. `(B, nh, T, hs)`).
        positions: int tensor `(T,)`, the position of each of the T vectors.
        base: float, the base of the frequencies.

    Returns:
        float tensor `(..., T, hs)`, same dtype as x; position 0 is left unchanged.
    """
    # TODO: (bonus, RoPE) rotate pair p of every vector by position * base^(-2p / hs) (~8 lines)
    #   Either pairing of the docstring passes; the steps use halves, pair p = (p, p + hs/2). For LLaMA's
    #   (2p, 2p + 1), take x1 = x[..., 0::2], x2 = x[..., 1::2] in step 3 and interleave the two rotated
    #   halves again in step 4 (tf.stack on a new last axis, then reshape to (..., T, hs)).
    #   1. frequencies base^(-2p / hs) for p = 0 .. hs/2 - 1 -> (hs/2,)
    #   2. angles = positions (as floats) times frequencies, an outer product -> (T, hs/2); their cos and sin
    #      -> (T, hs/2) each, cast to x's dtype
    #   3. the two members of every pair: x1 = x[..., :hs/2], x2 = x[..., hs/2:] -> (..., T, hs/2) each
    #   4. rotate each pair: x1 cos - x2 sin and x1 sin + x2 cos, concatenated on the last axis -> (..., T, hs)
    # BEGIN SOLUTION
    half = x.shape[-1] // 2
    frequencies = base ** (-tf.range(half, dtype=tf.float32) * 2.0 / (2 * half))  # (hs/2,)
    angles = tf.cast(positions, tf.float32)[:, None] * frequencies[None, :]  # (T, hs/2)
    cos, sin = tf.cast(tf.cos(angles), x.dtype), tf.cast(tf.sin(angles), x.dtype)  # (T, hs/2) each
    x1, x2 = x[..., :half], x[..., half:]  # (..., T, hs/2) each
    return tf.concat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)  # (..., T, hs)
    # END SOLUTION


def expand_kv_heads(x: tf.Tensor, num_groups: int) -> tf.Tensor:
    """Returns the key (or value) heads repeated for grouped-query attention: head h of the result is head h // g of x.

    With nh query heads sharing nkv key/value heads (g = nh // nkv per group), query head h reads key/value head
    h // g, as in LLaMA's `repeat_kv`: heads [a, b] with g = 2 become [a, a, b, b].

    Args:
        x: float tensor `(B, nkv, S, hs)`.
        num_groups: int, g.

    Returns:
        float tensor `(B, nkv * g, S, hs)`.
    """
    # TODO: (bonus, GQA/MQA) repeat each key/value head g times in place along the head axis (~1 line)
    #   1. tf.repeat along axis 1, so heads [a, b] become [a, a, b, b] for g = 2 -> (B, nkv * g, S, hs)
    # BEGIN SOLUTION
    return tf.repeat(x, num_groups, axis=1)  # (B, nkv * g, S, hs)
    # END SOLUTION


def update_kv_cache(cache: tf.Tensor, new: tf.Tensor, index: int | tf.Tensor) -> tf.Tensor:
    """Returns the cache with `new` written at positions index .. index + T - 1, every other position unchanged.

    The cache is preallocated to the context length and keeps its shape, so a compiled decode step is traced once;
    growing it with `tf.concat` would change its shape at every step.

    Args:
        cache: float tensor `(B, nkv, C, hs)`, the keys (or values) of positions 0 .. C - 1.
        new: float tensor `(B, nkv, T, hs)`, the keys (or values) of the T new tokens.
        index: int32 scalar (a Python int or a tensor), the position of the first new token; index + T <= C.

    Returns:
        float tensor `(B, nkv, C, hs)`.
    """
    # TODO: (bonus, KV cache) write `new` into slots index .. index + T - 1, for an int or a tensor index (~4 lines)
    #   1. the slot of every new row: (b, h, index + t) for every b, h, t (tf.meshgrid of three tf.range,
    #      indexing="ij", stacked on a last axis) -> indices (B, nkv, T, 3)
    #   2. tf.tensor_scatter_nd_update(cache, indices, new) -> (B, nkv, C, hs)
    #   (Or with one-hot rows = tf.one_hot(index + tf.range(T), C) -> (T, C): placed = tf.einsum("tc,bhtd->bhcd",
    #   rows, new) -> (B, nkv, C, hs), kept = cache * (1 - rows summed over t)[:, None] -> (B, nkv, C, hs); add them.)
    # BEGIN SOLUTION
    shape = tf.shape(new)  # (B, nkv, T, hs)
    b, h, t = tf.meshgrid(tf.range(shape[0]), tf.range(shape[1]), index + tf.range(shape[2]), indexing="ij")
    indices = tf.stack([b, h, t], axis=-1)  # (B, nkv, T, 3)
    return tf.tensor_scatter_nd_update(cache, indices, new)  # (B, nkv, C, hs)
    # END SOLUTION


def cached_attention_mask(index: int | tf.Tensor, num_queries: int | tf.Tensor, length: int) -> tf.Tensor:
    """Returns the bool mask `(T, C)` of T new queries over C cache slots: True where slot c <= the query's position.

    The T queries sit at positions index .. index + T - 1; cache positions after a query's own position are either
    the future or still empty, and must not be attended to.

    Args:
        index: int32 scalar (int or tensor), the position of the first query.
        num_queries: int32 scalar, T.
        length: int, C, the cache length.
    """
    # TODO: (bonus, KV cache) query t, at position index + t, may attend to cache slot c iff c <= index + t (~2 lines)
    #   1. the positions of the queries: index + tf.range(num_queries) -> (T,)
    #   2. a row of cache positions tf.range(length) (C,) against a column of query positions -> (T, C) bool
    # BEGIN SOLUTION
    query_positions = index + tf.range(num_queries)  # (T,)
    return tf.range(length)[None, :] <= query_positions[:, None]  # (T, C)
    # END SOLUTION


# -- Multi-head self-attention -----------------------------------------------------------------------------------


class MultiHeadSelfAttention(keras.layers.Layer):
    """Causal multi-head self-attention, with optional RoPE, grouped-query attention (GQA/MQA) and a KV cache.

    Weights, created in `build` (D is the width of the input, hs = D // num_heads):
        `wq (D, nh * hs)`, `wk (D, nkv * hs)`, `wv (D, nkv * hs)`, `wo (nh * hs, D)`, and when `use_bias`
        `bq (nh * hs,)`, `bk (nkv * hs,)`, `bv (nkv * hs,)`, `bo (D,)`.
    Column `h * hs + j` of wq (and of wk, wv) is dimension j of head h: heads are split by reshaping the last axis
    `(nh * hs)` into `(nh, hs)`, head-major, and merged back the same way (row `h * hs + j` of wo). This is the
    layout of `keras.layers.MultiHeadAttention`'s kernels `(D, nh, hs)` and `(nh, hs, D)` once reshaped.
    Query head h reads key/value head h // g, g = nh // nkv (see `expand_kv_heads`).

    Args:
        num_heads: int, nh, the number of query heads; it must divide D.
        num_kv_heads: int or None, nkv, the number of key/value heads (None: nh, full attention; 1: MQA).
        use_bias: bool, whether the four projections have biases.
        use_rope: bool, whether queries and keys are rotated by RoPE (`apply_rope`).
        rope_base: float, RoPE's base.

    Call arguments:
        x: float tensor `(B, T, D)`.
        training: bool (unused: there is no dropout inside attention).
        cache: optional pair `(keys, values)`, each `(B, nkv, C, hs)`: this layer's KV cache.
        cache_index: int32 scalar, the position of x's first token when a cache is given.

    Returns:
        `(B, T, D)`; with a cache, `(output, (keys, values))` holding the cache updated with x's keys and values.

    Examples:
    ```python
    attention = MultiHeadSelfAttention(num_heads=4)
    attention(tf.random.normal((2, 5, 16))).shape  # (2, 5, 16)
    ```
    """

    def __init__(self, num_heads, num_kv_heads=None, use_bias=True, use_rope=False, rope_base=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.use_bias = use_bias
        self.use_rope = use_rope
        self.rope_base = rope_base
        if self.num_kv_heads < 1 or num_heads % self.num_kv_heads:
            raise ValueError(
                f"`num_kv_heads` must divide `num_heads`; got num_kv_heads={num_kv_heads}, num_heads={num_heads}"
            )
        self.num_groups = num_heads // self.num_kv_heads  # g

    def build(self, input_shape):
        d_model = input_shape[-1]
        if d_model % self.num_heads:
            raise ValueError(f"`num_heads` must divide `d_model`; got num_heads={self.num_heads}, d_model={d_model}")
        self.head_size = d_model // self.num_heads  # hs
        q_width, kv_width = self.num_heads * self.head_size, self.num_kv_heads * self.head_size
        self.wq = self.add_weight(name="wq", shape=(d_model, q_width), initializer=normal_init())
        self.wk = self.add_weight(name="wk", shape=(d_model, kv_width), initializer=normal_init())
        self.wv = self.add_weight(name="wv", shape=(d_model, kv_width), initializer=normal_init())
        self.wo = self.add_weight(name="wo", shape=(q_width, d_model), initializer=normal_init())
        if self.use_bias:
            self.bq = self.add_weight(name="bq", shape=(q_width,), initializer="zeros")
            self.bk = self.add_weight(name="bk", shape=(kv_width,), initializer="zeros")
            self.bv = self.add_weight(name="bv", shape=(kv_width,), initializer="zeros")
            self.bo = self.add_weight(name="bo", shape=(d_model,), initializer="zeros")

    def project_heads(self, x: tf.Tensor, positions: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Returns q `(B, nh, T, hs)` and k, v `(B, nkv, T, hs)`: x projected and split into heads (RoPE applied if on).

        Args:
            x: float tensor `(B, T, D)`.
            positions: int32 tensor `(T,)`, the position of each token (RoPE uses them).
        """
        # TODO: project x and split the projections into heads, leaving them in q, k, v (~10 lines)
        #   The lines after the region apply RoPE and return q, k, v; a small helper for steps 2-3, used three
        #   times, keeps it short.
        #   1. project: q = x wq (+ bq when self.use_bias) -> (B, T, nh * hs); k, v with wk, wv -> (B, T, nkv * hs)
        #      (tf.matmul(x, w) works; linear(x, w, b) from lmkit/layers.py does the same, faster)
        #   2. split heads: reshape the last axis into (heads, hs), keeping the batch and time sizes (use
        #      tf.shape(x) for them: they may be unknown while tracing) -> (B, T, nh, hs); k, v -> (B, T, nkv, hs)
        #   3. move the head axis before time (tf.transpose) -> (B, nh, T, hs); k, v -> (B, nkv, T, hs)
        # BEGIN SOLUTION
        batch, time = tf.shape(x)[0], tf.shape(x)[1]

        def split(y, heads):  # (B, T, heads * hs) -> (B, heads, T, hs)
            y = tf.reshape(y, [batch, time, heads, self.head_size])  # (B, T, heads, hs)
            return tf.transpose(y, [0, 2, 1, 3])  # (B, heads, T, hs)

        # One matmul for the three projections: fewer, larger matmuls run faster on a CPU.
        w = tf.concat([self.wq, self.wk, self.wv], axis=1)  # (D, (nh + 2 nkv) hs)
        b = tf.concat([self.bq, self.bk, self.bv], axis=0) if self.use_bias else None
        widths = [self.num_heads * self.head_size] + 2 * [self.num_kv_heads * self.head_size]
        q, k, v = tf.split(linear(x, w, b), widths, axis=-1)  # (B, T, nh*hs), (B, T, nkv*hs) x2
        q, k, v = split(q, self.num_heads), split(k, self.num_kv_heads), split(v, self.num_kv_heads)
        # END SOLUTION
        if self.use_rope:  # bonus: rotate queries and keys by their positions
            q, k = apply_rope(q, positions, self.rope_base), apply_rope(k, positions, self.rope_base)
        return q, k, v

    def attend_heads(self, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Returns `(B, T, D)`: each query head attends over its keys, then heads are merged and projected by wo.

        Args:
            q: float tensor `(B, nh, T, hs)`.
            k, v: float tensors `(B, nkv, S, hs)`.
            mask: bool tensor broadcastable to `(B, nh, T, S)`, True where attending is allowed.
        """
        if self.num_groups > 1:  # bonus (GQA/MQA): query head h reads key/value head h // g
            k, v = expand_kv_heads(k, self.num_groups), expand_kv_heads(v, self.num_groups)  # (B, nh, S, hs)
        # TODO: attend within each head, merge the heads, project (~6 lines)
        #   1. attend with scaled_dot_product_attention(q, k, v, mask), ignoring the weights -> (B, nh, T, hs)
        #   2. merge heads: move the head axis after time -> (B, T, nh, hs), then reshape -> (B, T, nh * hs)
        #   3. project and return: merged wo (+ bo when self.use_bias) -> (B, T, D)
        # BEGIN SOLUTION
        out, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, nh, T, hs)
        out = tf.transpose(out, [0, 2, 1, 3])  # (B, T, nh, hs)
        out = tf.reshape(out, [tf.shape(q)[0], tf.shape(q)[2], self.num_heads * self.head_size])  # (B, T, nh*hs)
        return linear(out, self.wo, self.bo if self.use_bias else None)  # (B, T, D)
        # END SOLUTION

    def call(
        self, x: tf.Tensor, training=False, cache: LayerCache | None = None, cache_index: tf.Tensor | None = None
    ) -> tf.Tensor | tuple[tf.Tensor, LayerCache]:
        length = tf.shape(x)[1]  # T
        if cache is None:
            q, k, v = self.project_heads(x, tf.range(length))
            return self.attend_heads(q, k, v, causal_mask(length))
        q, k, v = self.project_heads(x, cache_index + tf.range(length))
        keys = update_kv_cache(cache[0], k, cache_index)  # (B, nkv, C, hs)
        values = update_kv_cache(cache[1], v, cache_index)  # (B, nkv, C, hs)
        mask = cached_attention_mask(cache_index, length, keys.shape[2])  # (T, C)
        return self.attend_heads(q, keys, values, mask), (keys, values)

    def get_config(self):
        names = ("num_heads", "num_kv_heads", "use_bias", "use_rope", "rope_base")
        return {**super().get_config(), **{name: getattr(self, name) for name in names}}


# -- Bonus parts used in every block: RMSNorm and SwiGLU ---------------------------------------------------------


class RMSNorm(keras.layers.Layer):
    """Root-mean-square norm (Zhang and Sennrich, 2019; LLaMA): x / sqrt(mean(x^2) + epsilon) * scale.

    Unlike LayerNorm it neither subtracts the mean nor adds a bias.

    Weights: `scale (D,)`, initialized to ones.

    Args:
        epsilon: float, added to the mean square.

    Call arguments:
        x: float tensor `(..., D)`.

    Returns:
        float tensor `(..., D)`.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # TODO: (bonus, RMSNorm) divide by the root mean square over the last axis, then scale (~3 lines)
        #   1. the mean of the squares over the last axis, kept for broadcasting -> (..., 1)
        #   2. divide x by the root of (mean square + self.epsilon) (tf.math.rsqrt) -> (..., D)
        #   3. multiply by self.scale (D,) and return -> (..., D)
        # BEGIN SOLUTION
        mean_square = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)  # (..., 1)
        return x * tf.math.rsqrt(mean_square + self.epsilon) * self.scale  # (..., D)
        # END SOLUTION

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def swiglu(gate: tf.Tensor, up: tf.Tensor) -> tf.Tensor:
    """Returns SwiGLU's gated hidden layer: silu(gate) * up, elementwise (Shazeer, 2020).

    Args:
        gate: float tensor `(..., F)`, x w_gate.
        up: float tensor `(..., F)`, x w_in.

    Returns:
        float tensor `(..., F)`.
    """
    # TODO: (bonus, SwiGLU) silu(gate) times up, elementwise (~1 line)
    #   1. silu(gate) = gate * sigmoid(gate) (or tf.nn.silu), times up; return it -> (..., F)
    # BEGIN SOLUTION
    return tf.nn.silu(gate) * up  # (..., F)
    # END SOLUTION


# -- The decoder block and the language model --------------------------------------------------------------------


class DecoderBlock(FromConfig, keras.layers.Layer):
    """One pre-norm decoder block: residual self-attention and feed-forward branches, sequential or parallel.

    Sublayers, created in `build`: `norm1`, `attention` (a `MultiHeadSelfAttention`), `norm2` (None for the
    parallel block, whose branches share `norm1`), `mlp` (a `FeedForward`) and `dropout`.
    Dropout applies to each branch's output before it is added to x, never to the residual stream itself.

    Args:
        config: a `TransformerConfig` (norm, biases, block, activation, heads, dropout).

    Call arguments:
        x: float tensor `(B, T, D)`.
        training: bool; dropout is active only when True.
        cache, cache_index: this layer's KV cache and the position of x's first token (see `MultiHeadSelfAttention`).

    Returns:
        `(B, T, D)`; with a cache, `(output, cache)`.

    Examples:
    ```python
    block = DecoderBlock(TransformerConfig(d_model=16, num_heads=2))
    block(tf.random.normal((2, 5, 16))).shape  # (2, 5, 16)
    ```
    """

    def __init__(self, config: TransformerConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def build(self, input_shape):
        c = self.config
        self.norm1 = make_norm(c, name="norm1", rms_norm=RMSNorm)
        self.norm1.build(input_shape)
        self.attention = MultiHeadSelfAttention(
            c.num_heads,
            c.kv_heads,
            use_bias=c.bias == "all",
            use_rope=c.positions == "rope",
            rope_base=c.rope_base,
            name="attention",
        )
        self.attention.build(input_shape)
        self.norm2 = None
        if c.block == "sequential":
            self.norm2 = make_norm(c, name="norm2", rms_norm=RMSNorm)
            self.norm2.build(input_shape)
        self.mlp = FeedForward(c.mlp_hidden, activation=c.activation, use_bias=c.bias == "all", gate=swiglu, name="mlp")
        self.mlp.build(input_shape)
        self.dropout = keras.layers.Dropout(c.dropout)

    def call(
        self, x: tf.Tensor, training=False, cache: LayerCache | None = None, cache_index: tf.Tensor | None = None
    ) -> tf.Tensor | tuple[tf.Tensor, LayerCache]:
        updated = [cache]  # the attention's updated KV cache, when decoding with one

        def attend(h):  # self.attention on a normalized input h (B, T, D) -> (B, T, D), reading and writing the cache
            if cache is None:
                return self.attention(h, training=training)
            out, updated[0] = self.attention(h, training=training, cache=cache, cache_index=cache_index)
            return out

        # TODO: the two residual branches, attention (attend) and MLP (self.mlp), leaving the output in x (~7 lines)
        #   Each branch's output goes through self.dropout(..., training=training) before it is added to x.
        #   If self.config.block == "sequential" (GPT-2, LLaMA):
        #   1. x = x + attend(self.norm1(x)) -> (B, T, D)
        #   2. x = x + self.mlp(self.norm2(x)) -> (B, T, D)
        #   Else, parallel (Falcon, PaLM): both branches read the same normalized input:
        #   1. h = self.norm1(x) -> (B, T, D)
        #   2. x = x + attend(h) + self.mlp(h) -> (B, T, D)
        # BEGIN SOLUTION
        if self.config.block == "sequential":
            x = x + self.dropout(attend(self.norm1(x)), training=training)  # (B, T, D)
            x = x + self.dropout(self.mlp(self.norm2(x)), training=training)  # (B, T, D)
        else:
            h = self.norm1(x)  # (B, T, D)
            x = x + self.dropout(attend(h), training=training) + self.dropout(self.mlp(h), training=training)
        # END SOLUTION
        return x if cache is None else (x, updated[0])

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict()}


class TransformerLanguageModel(KVCacheDecoding, FromConfig, keras.Model):
    """A decoder-only transformer language model: `logits = model(tokens)`, with a KV cache for generation.

    Token embedding (plus learned or sinusoidal positions unless RoPE), `num_layers` `DecoderBlock`s, a final norm
    and a projection to the vocabulary, by the transposed token embedding when `tie_embeddings`.

    Weights, all created by the constructor: `token_embedding (V, D)`, `position_embedding (C, D)` (learned
    positions only), `blocks` (a list of `DecoderBlock`), `final_norm`, `lm_head (D, V)` (untied only).

    Args:
        config: a `TransformerConfig`, e.g. `TransformerConfig.preset("llama2", vocab_size=65)`.

    Call arguments:
        tokens: int tensor `(B, T)`, T <= context_length.
        training: bool; dropout is active only when True.
        cache: optional KV cache (see `prefill` in lmkit/kv_cache.py); tokens then come after the cached ones.

    Returns:
        logits `(B, T, V)` (float32) of the next token at every position; with a cache, `(logits, cache)`.

    Examples:
    ```python
    model = TransformerLanguageModel(TransformerConfig.preset("gpt2", vocab_size=65, num_layers=2))
    model(tf.zeros((2, 10), tf.int32)).shape  # (2, 10, 65)
    logits, cache = model.prefill(tf.zeros((1, 3), tf.int32))
    logits, cache = model.decode_step(tf.argmax(logits[:, -1:], -1, output_type=tf.int32), cache)
    ```
    """

    def __init__(self, config: TransformerConfig, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"`config` must be a TransformerConfig; got {type(config).__name__}")
        self.config = config
        self.build((None, None))  # every weight exists from the start (checkpoints can restore into it)

    def build(self, input_shape):
        c = self.config
        self.token_embedding = self.add_weight(
            name="token_embedding", shape=(c.vocab_size, c.d_model), initializer=normal_init()
        )
        self.position_embedding = None
        if c.positions == "learned":
            self.position_embedding = self.add_weight(
                name="position_embedding", shape=(c.context_length, c.d_model), initializer=normal_init()
            )
        self._sinusoids = sinusoidal_table(c.context_length, c.d_model) if c.positions == "sinusoidal" else None
        self.embedding_dropout = keras.layers.Dropout(c.dropout)
        self.blocks = [DecoderBlock(c, name=f"block_{i}") for i in range(c.num_layers)]
        for i, block in enumerate(self.blocks):
            block.build((None, None, c.d_model))
            setattr(self, f"block_{i}", block)  # tf.train.Checkpoint does not look inside Keras' tracked lists
        self.final_norm = make_norm(c, name="final_norm", rms_norm=RMSNorm)
        self.final_norm.build((None, None, c.d_model))
        self.lm_head = None
        if not c.tie_embeddings:
            self.lm_head = self.add_weight(name="lm_head", shape=(c.d_model, c.vocab_size), initializer=normal_init())

    def position_embeddings(self, positions: tf.Tensor) -> tf.Tensor:
        """Returns the learned or sinusoidal position vectors `(T, D)` of int32 positions `(T,)`."""
        if self.config.positions == "learned":
            return tf.gather(self.position_embedding, positions)  # (T, D)
        return tf.gather(tf.constant(self._sinusoids), positions)  # (T, D)

    def call(
        self, tokens: tf.Tensor, training: bool = False, cache: KVCache | None = None
    ) -> tf.Tensor | tuple[tf.Tensor, KVCache]:
        tokens = tf.convert_to_tensor(tokens)
        self._check_length(tokens.shape[1])
        start = 0 if cache is None else cache["index"]  # position of tokens[:, 0]
        length = tf.shape(tokens)[1]  # T
        updated = []  # the layers' updated KV caches, when decoding with one

        def run_block(i, x):  # block i on x (B, T, D) -> (B, T, D), reading and writing layer i's cache
            if cache is None:
                return self.blocks[i](x, training=training)
            layer_cache = (cache["keys"][i], cache["values"][i])  # each (B, nkv, C, hs)
            x, layer_cache = self.blocks[i](x, training=training, cache=layer_cache, cache_index=start)
            updated.append(layer_cache)
            return x

        # TODO: the forward pass, from token ids to logits, left in a variable named logits (~10 lines)
        #   1. look up the token embeddings: tf.gather(self.token_embedding, tokens) -> (B, T, D)
        #   2. unless self.config.positions == "rope" (RoPE rotates q and k inside attention instead), add
        #      self.position_embeddings(start + tf.range(T)) -> (T, D), broadcast over the batch -> (B, T, D)
        #   3. x = self.embedding_dropout(x, training=training) -> (B, T, D)
        #   4. run the blocks in order: x = run_block(i, x) for i in range(self.config.num_layers) -> (B, T, D)
        #   5. x = self.final_norm(x) -> (B, T, D)
        #   6. project to the vocabulary: x times the transposed token embedding when self.config.tie_embeddings,
        #      else x times self.lm_head (D, V) -> logits (B, T, V), returned below
        # BEGIN SOLUTION
        x = tf.gather(self.token_embedding, tokens)  # (B, T, D)
        if self.config.positions != "rope":
            x = x + self.position_embeddings(start + tf.range(length))  # (B, T, D)
        x = self.embedding_dropout(x, training=training)
        for i in range(self.config.num_layers):
            x = run_block(i, x)  # (B, T, D)
        x = self.final_norm(x)  # (B, T, D)
        if self.config.tie_embeddings:
            logits = linear(x, self.token_embedding, transpose_w=True)  # (B, T, V)
        else:
            logits = linear(x, self.lm_head)  # (B, T, V)
        # END SOLUTION
        if cache is None:
            return logits
        return logits, {
            "keys": tuple(k for k, _ in updated),
            "values": tuple(v for _, v in updated),
            "index": start + length,
        }

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}
