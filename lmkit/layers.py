"""Given, not graded: the small pieces part 4 builds its layers from.

`linear` (a matmul over the last axis), GPT-2's weight initializer, the fixed sinusoidal position table, and the
norm and position-wise feed-forward net of every decoder block.
"""

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from lmkit.transformer_config import TransformerConfig

TensorLike = tf.Tensor | np.ndarray  # what the functions of part 4 accept: tensors, and NumPy arrays too


def linear(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor | None = None, transpose_w: bool = False) -> tf.Tensor:
    """Returns `x w + b`: x `(..., D_in)` times w `(D_in, D_out)` (or w `(D_out, D_in)` with `transpose_w`).

    The leading axes are flattened into one 2-D matmul, which runs faster than `tf.matmul` broadcasting a 2-D
    weight over a batch, forward and backward (its weight gradient becomes one matmul instead of one per batch
    element and a sum).
    """
    d_out = w.shape[0] if transpose_w else w.shape[-1]
    y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), w, transpose_b=transpose_w)  # (N, D_out)
    if b is not None:
        y = y + b
    return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [d_out]], axis=0))  # (..., D_out)


def normal_init(stddev: float = 0.02) -> keras.initializers.Initializer:
    """GPT-2's initializer: N(0, 0.02) keeps the initial logits small, so the initial loss is about ln(V)."""
    return keras.initializers.RandomNormal(stddev=stddev)


def sinusoidal_table(length: int, d_model: int) -> np.ndarray:
    """Returns the fixed positions of "Attention is all you need": float32 `(length, d_model)`, sin on even columns
    and cos on odd ones, at frequencies 10000^(-2i / d_model)."""
    positions = np.arange(length)[:, None]  # (C, 1)
    frequencies = 10000.0 ** (-np.arange(0, d_model, 2) / d_model)  # (ceil(D/2),)
    table = np.zeros((length, d_model), np.float32)
    table[:, 0::2] = np.sin(positions * frequencies)
    table[:, 1::2] = np.cos(positions * frequencies[: d_model // 2])
    return table


class FeedForward(keras.layers.Layer):
    """The position-wise feed-forward net: `gelu(x w_in + b_in) w_out + b_out`, or `swiglu(x w_gate, x w_in) w_out`.

    Weights: `w_in (D, F)`, `w_out (F, D)`, with SwiGLU also `w_gate (D, F)`; when `use_bias`, `b_in (F,)`,
    `b_out (D,)` (and `b_gate (F,)`). GELU is GPT-2's tanh approximation.

    Args:
        hidden_dim: int, F.
        activation: `"gelu"` or `"swiglu"`.
        use_bias: bool.

    Call arguments:
        x: float tensor `(B, T, D)`.

    Returns:
        float tensor `(B, T, D)`.
    """

    def __init__(
        self,
        hidden_dim: int,
        activation: str = "gelu",
        use_bias: bool = True,
        gate: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation == "swiglu" and gate is None:
            raise ValueError(
                "activation='swiglu' needs `gate`, the function gate(gate, up) -> (B, T, F): part 4's swiglu"
            )
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.use_bias = use_bias
        self.gate = gate

    def build(self, input_shape):
        d_model = input_shape[-1]
        self.w_in = self.add_weight(name="w_in", shape=(d_model, self.hidden_dim), initializer=normal_init())
        self.w_gate = None
        if self.activation == "swiglu":
            self.w_gate = self.add_weight(name="w_gate", shape=(d_model, self.hidden_dim), initializer=normal_init())
        self.w_out = self.add_weight(name="w_out", shape=(self.hidden_dim, d_model), initializer=normal_init())
        if self.use_bias:
            self.b_in = self.add_weight(name="b_in", shape=(self.hidden_dim,), initializer="zeros")
            if self.activation == "swiglu":
                self.b_gate = self.add_weight(name="b_gate", shape=(self.hidden_dim,), initializer="zeros")
            self.b_out = self.add_weight(name="b_out", shape=(d_model,), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        h = linear(x, self.w_in, self.b_in if self.use_bias else None)  # (B, T, F)
        if self.activation == "swiglu":
            gate = linear(x, self.w_gate, self.b_gate if self.use_bias else None)  # (B, T, F)
            h = self.gate(gate, h)  # (B, T, F)
        else:
            h = tf.nn.gelu(h, approximate=True)  # (B, T, F)
        return linear(h, self.w_out, self.b_out if self.use_bias else None)  # (B, T, D)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "activation": self.activation,
            "use_bias": self.use_bias,
        }


def make_norm(
    config: TransformerConfig, name: str | None = None, rms_norm: type[keras.layers.Layer] | None = None
) -> keras.layers.Layer:
    """Returns the norm layer the config asks for (LayerNorm with or without bias, non-parametric, or RMSNorm:
    `rms_norm(epsilon=..., name=...)`, part 4's RMSNorm class, which the caller passes)."""
    if config.norm == "rmsnorm":
        if rms_norm is None:
            raise ValueError("norm='rmsnorm' needs `rms_norm`, the RMSNorm layer class of part 4")
        return rms_norm(epsilon=config.norm_epsilon, name=name)
    parametric = config.norm == "layernorm"
    return keras.layers.LayerNormalization(
        epsilon=config.norm_epsilon, scale=parametric, center=parametric and config.bias != "none", name=name
    )


class FromConfig:
    """`from_config` for a Keras layer or model built from one `TransformerConfig`, whose `get_config` stores
    `config.to_dict()` under `"config"`."""

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(TransformerConfig.from_dict(config.pop("config")), **config)
