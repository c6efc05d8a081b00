"""The recurrent language-model shell that part 2's RNN and LSTM share: input checks, embedding, stacked layers,
dropout and the output projection (given, not graded).

Dimension letters: B batch, T time, E embedding width, H hidden units, V vocabulary.

    tokens (B, T) -> embedding (B, T, E) -> num_layers x forward (B, T, H) -> output_layer -> logits (B, T, V)

A subclass names its cell (`make_cell`), its loop over time (`forward`) and the parts of its state
(`state_parts`: `("h",)` for the RNN, whose state per layer is one tensor; `("h", "c")` for the LSTM, a pair).
"""

import keras
import tensorflow as tf


def check_tokens(tokens, vocab_size: int) -> tf.Tensor:
    """Returns `tokens` as a 2-D integer tensor, or raises ValueError naming what was received and expected."""
    tokens = tf.convert_to_tensor(tokens)
    if tokens.shape.rank != 2 or not tokens.dtype.is_integer:
        raise ValueError(
            f"expected tokens as an integer tensor of shape (batch_size, seq_len); got shape {tuple(tokens.shape)} "
            f"with dtype {tokens.dtype.name}"
            + (". Add a batch axis with tokens[None, :]" if tokens.shape.rank == 1 else "")
        )
    if tf.executing_eagerly() and tokens.shape.num_elements():  # ids cannot be read inside a compiled graph
        low, high = int(tf.reduce_min(tokens)), int(tf.reduce_max(tokens))
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"expected token ids in [0, {vocab_size}) (vocab_size={vocab_size}); got ids from {low} to {high} "
                f"in tokens of shape {tuple(tokens.shape)}"
            )
    return tokens


class RecurrentLanguageModel(keras.Model):
    """Returns next-token logits from an embedding, `num_layers` stacked recurrent layers and a projection.

    Subclasses define `make_cell(units, name)`, `forward(cell, inputs, state) -> (outputs, last_state)`,
    `state_parts` and `cell_prefix`; the arguments, attributes and call arguments are those of `RNNLanguageModel`.
    """

    state_parts: tuple[str, ...] = ("h",)  # the tensors of one layer's state, each (B, H)
    cell_prefix = "cell"  # cells are named f"{cell_prefix}_{i}"

    def __init__(
        self, vocab_size: int, embed_dim: int, hidden_dim: int, num_layers: int = 1, dropout: float = 0.0, **kwargs
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("vocab_size", vocab_size),
            ("embed_dim", embed_dim),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {name}={value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got dropout={dropout!r}")
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.dropout = dropout
        self.embedding = keras.layers.Embedding(vocab_size, embed_dim, name="embedding")
        self.cells = [self.make_cell(hidden_dim, name=f"{self.cell_prefix}_{i}") for i in range(num_layers)]
        for i, cell in enumerate(self.cells):
            # tf.train.Checkpoint does not look inside Keras' tracked lists: one attribute per cell gets it saved.
            setattr(self, f"cell_{i}", cell)
        self.dropout_layer = keras.layers.Dropout(dropout)
        self.output_layer = keras.layers.Dense(vocab_size, name="output_layer")

    def make_cell(self, units: int, name: str) -> keras.layers.Layer:
        """Returns one cell of `units` hidden units."""
        raise NotImplementedError

    def forward(self, cell, inputs: tf.Tensor, state):
        """Returns `(outputs (B, T, H), last_state)`: `cell` run over the time axis of `inputs` from `state`."""
        raise NotImplementedError

    def build(self, input_shape):
        # Built here, outside any loop, so that no weight is ever created inside tf.scan / tf.while_loop.
        self.embedding.build(input_shape)
        for i, cell in enumerate(self.cells):
            cell.build((None, self.embed_dim if i == 0 else self.hidden_dim))
        self.output_layer.build((None, None, self.hidden_dim))

    def get_initial_state(self, batch_size: int) -> list:
        """Returns the zero state: a list of `num_layers` states, each a `(batch_size, H)` tensor per state part."""
        zeros = [[tf.zeros((batch_size, self.hidden_dim), self.compute_dtype) for _ in self.state_parts]]
        return [self._pack(parts) for parts in zeros * self.num_layers]

    def _pack(self, parts):
        return parts[0] if len(self.state_parts) == 1 else tuple(parts)

    def _check_states(self, states, batch_size):
        """Returns `states` as a list of per-layer states of `(B, H)` tensors, or raises ValueError naming the
        shape received."""
        one = len(self.state_parts) == 1
        pair = "(" + ", ".join(self.state_parts) + ")"
        what = "tensors (one per layer) of shape" if one else f"pairs {pair} (one per layer), each of shape"
        if not isinstance(states, (list, tuple)) or len(states) != self.num_layers:
            got = f"a list of {len(states)}" if isinstance(states, (list, tuple)) else f"a {type(states).__name__}"
            raise ValueError(
                f"expected states as a list of {self.num_layers} {what} (batch_size, hidden_dim); got {got}"
            )
        expected = (batch_size, self.hidden_dim)
        checked = []
        for i, state in enumerate(states):
            parts = [state] if one else state
            if not one and (not isinstance(parts, (list, tuple)) or len(parts) != len(self.state_parts)):
                raise ValueError(
                    f"expected states[{i}] as a pair {pair} of tensors of shape {expected} "
                    f"(batch_size, hidden_dim); got {type(parts).__name__}"
                    + (f" of shape {tuple(parts.shape)}" if hasattr(parts, "shape") else "")
                )
            parts = [tf.convert_to_tensor(t) for t in parts]
            for name, t in zip(self.state_parts, parts):
                if not t.shape.is_compatible_with(expected):
                    label = f"states[{i}]" if one else f"states[{i}] {name}"
                    raise ValueError(
                        f"expected {label} of shape {expected} (batch_size, hidden_dim); got {tuple(t.shape)}"
                    )
            checked.append(self._pack(parts))
        return checked

    def call(self, tokens: tf.Tensor, states: list | None = None, return_state: bool = False, training: bool = False):
        tokens = check_tokens(tokens, self.vocab_size)
        if states is None:
            states = self.get_initial_state(tf.shape(tokens)[0])
        else:
            states = self._check_states(states, tokens.shape[0])
        x = self.dropout_layer(self.embedding(tokens), training=training)  # (B, T, E)
        final_states = []
        for cell, state in zip(self.cells, states):
            x, last_state = self.forward(cell, x, state)  # (B, T, H), the layer's last state
            x = self.dropout_layer(x, training=training)
            final_states.append(self._pack(list(last_state)) if len(self.state_parts) > 1 else last_state)
        logits = self.output_layer(x)  # (B, T, V)
        return (logits, final_states) if return_state else logits

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embed_dim": self.embed_dim,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
        }
