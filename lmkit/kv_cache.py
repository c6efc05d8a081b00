"""Given, not graded: how `TransformerLanguageModel` generates text with its KV cache.

Generation (the protocol of `sampling.generate`): `logits, cache = model.prefill(prompt)` reads a prompt
`(B, T)` once; then `logits, cache = model.decode_step(next_ids, cache)` reads one token per sequence,
next_ids `(B, 1)`, and returns logits `(B, 1, V)`. The cache is a dict of fixed shapes, preallocated to the
context length: `keys` and `values`, each a tuple of L tensors `(B, nkv, C, hs)` (one per layer: a stacked
`(B, L, nkv, C, hs)` tensor would have to be re-stacked, i.e. copied whole, at every step), and `index`, the
number of positions filled. The decode step is compiled once (XLA) and its logits equal those of
`model(all_tokens)`. Once the cache is full, `generate` prefills a new one from the last half of the context (see
`sampling._CachedReader`); those refills run as a graph, traced once.
"""

from typing import TypedDict

import tensorflow as tf

LayerCache = tuple[tf.Tensor, tf.Tensor]  # one layer's (keys, values), each (B, nkv, C, hs)


class KVCache(TypedDict):
    """The KV cache of a whole model, of fixed shapes (C = context_length, L = num_layers)."""

    keys: tuple[tf.Tensor, ...]  # L tensors (B, nkv, C, hs), one per layer
    values: tuple[tf.Tensor, ...]  # L tensors (B, nkv, C, hs), one per layer
    index: tf.Tensor  # int32 scalar: the number of positions filled, the position of the next token


class KVCacheDecoding:
    """The generation protocol, mixed into a Keras model whose `call(tokens, training, cache)` reads and updates a
    KV cache (see `TransformerLanguageModel.call`) and whose `config` has `num_layers`, `kv_heads`,
    `context_length` and `head_size`."""

    jit_decode = True  # compile the decode step with XLA: about 3x faster per token than graph mode on a CPU
    _decode_concrete = None  # the compiled decode step, made at the first eager `decode_step`
    _prefill_fn = None  # the prefill as a graph, made at the first eager `prefill` after a decode step (False: eager)

    def _check_length(self, length):
        """Raises ValueError if `length` (an int, or None when unknown while tracing) is longer than the context."""
        if length is not None and length > self.config.context_length:
            raise ValueError(
                f"sequence of length {length} is longer than the model's context_length="
                f"{self.config.context_length}; crop it to its last {self.config.context_length} tokens"
            )

    def init_cache(self, batch_size: int | tf.Tensor) -> KVCache:
        """Returns an empty KV cache for `batch_size` sequences: L zero tensors `(B, nkv, C, hs)` each for the keys
        and the values, and index 0."""
        c = self.config
        zeros = tf.zeros([batch_size, c.kv_heads, c.context_length, c.head_size])  # (B, nkv, C, hs)
        return {"keys": (zeros,) * c.num_layers, "values": (zeros,) * c.num_layers, "index": tf.constant(0, tf.int32)}

    def prefill(self, tokens: tf.Tensor) -> tuple[tf.Tensor, KVCache]:
        """Returns `(logits, cache)`: the logits `(B, T, V)` of a prompt `(B, T)` and the KV cache holding it.

        Args:
            tokens: int tensor `(B, T)`, 1 <= T <= context_length.
        """
        tokens = tf.cast(tokens, tf.int32)
        length = tokens.shape[1] if tokens.shape.rank == 2 else 0  # None when unknown while tracing
        if tokens.shape.rank != 2 or (length is not None and not 1 <= length <= self.config.context_length):
            raise ValueError(
                f"prefill needs tokens of shape (B, T) with 1 <= T <= context_length="
                f"{self.config.context_length}; got shape {tuple(tokens.shape)}"
            )
        if tf.executing_eagerly() and self._decode_concrete is not None:
            # The model is generating (its decode step is compiled), so this is a refill of `sampling.generate`, one
            # every context_length / 2 tokens: run it as a graph, traced once for every length (about 50x faster
            # than eagerly). A model whose code cannot be traced with an unknown length stays eager.
            if self._prefill_fn is None:
                self._prefill_fn = tf.function(
                    lambda tokens: self(tokens, training=False, cache=self.init_cache(tf.shape(tokens)[0])),
                    autograph=False,
                    input_signature=[tf.TensorSpec((None, None), tf.int32)],
                )
                try:
                    self._prefill_fn.get_concrete_function()
                except Exception:  # noqa: BLE001 -- any failure to trace means: run eagerly, as before
                    self._prefill_fn = False
            if self._prefill_fn:
                return self._prefill_fn(tokens)
        # The first prompt runs as it comes (eagerly, or inside the caller's tf.function): compiling it would cost
        # more than it saves for a single prompt.
        return self(tokens, training=False, cache=self.init_cache(tf.shape(tokens)[0]))

    def decode_step(self, next_ids: tf.Tensor, cache: KVCache) -> tuple[tf.Tensor, KVCache]:
        """Returns `(logits, cache)`: the logits `(B, 1, V)` of one more token per sequence and the updated cache.

        Args:
            next_ids: int tensor `(B, 1)` (or `(B,)`), the token at position `cache["index"]`.
            cache: the cache returned by `prefill` or by the previous `decode_step`; it must not be full.
        """
        if not (tf.is_tensor(next_ids) and next_ids.dtype == tf.int32 and next_ids.shape.rank == 2):
            next_ids = tf.reshape(tf.cast(next_ids, tf.int32), [-1, 1])  # (B, 1)
        if not tf.executing_eagerly():  # inside the caller's tf.function: trace the step into it
            return self(next_ids, training=False, cache=cache)
        if int(cache["index"]) >= self.config.context_length:
            raise ValueError(
                f"the KV cache is full: it holds context_length={self.config.context_length} "
                f"positions; re-read the last tokens with prefill instead"
            )
        if self._decode_concrete is None:
            self._compile_decode_step()
        cache = {
            "keys": tuple(cache["keys"]),
            "values": tuple(cache["values"]),
            "index": tf.convert_to_tensor(cache["index"], tf.int32),
        }  # exactly the traced structure
        return self._decode_concrete(next_ids, cache)

    def _compile_decode_step(self):
        """Traces the decode step once for every batch size; calling the concrete function directly skips
        tf.function's dispatch (about 0.3 ms a token)."""
        c = self.config
        layer_spec = tf.TensorSpec((None, c.kv_heads, c.context_length, c.head_size))  # (B, nkv, C, hs)
        cache_spec = {
            "keys": (layer_spec,) * c.num_layers,
            "values": (layer_spec,) * c.num_layers,
            "index": tf.TensorSpec((), tf.int32),
        }
        self._decode_fn = tf.function(
            lambda next_ids, cache: self(next_ids, training=False, cache=cache),
            jit_compile=self.jit_decode,
            autograph=False,
            input_signature=[tf.TensorSpec((None, 1), tf.int32), cache_spec],
        )
        self._decode_concrete = self._decode_fn.get_concrete_function()
