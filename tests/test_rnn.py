"""Part 2a (8 points with the hidden tests): RNNCell, rnn_forward and RNNLanguageModel.

The cell and the whole sequence are compared with Keras' own `SimpleRNNCell` / `SimpleRNN` loaded with the same
weights; the model is checked for invariants (state carried across chunks, no peeking at later tokens) and for the
usual sanity checks of a fresh language model (loss about ln V, gradients everywhere, a tiny batch overfits).
Sizes are tiny and all different (V=11, E=7, H=5), so a transposed weight or a swapped axis shows up as a shape.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import assert_close, assert_shape

from assignment import rnn

V, E, H = 11, 7, 5  # vocabulary, embedding width, hidden units
B, T = 3, 6  # batch, time


def _tokens(batch=B, time=T, seed=0):
    """Returns int32 token ids of shape (batch, time)."""
    return tf.constant(np.random.default_rng(seed).integers(0, V, size=(batch, time)), tf.int32)


def _normal(shape, seed, scale=0.5):
    return tf.constant(np.random.default_rng(seed).normal(0.0, scale, size=shape), tf.float32)


def _randomize(layer, seed=1, scale=0.5):
    """Gives every weight of `layer` random values (biases included), so that no term of an equation hides as 0."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0.0, scale, size=tuple(w.shape)).astype("float32"))


def _model(num_layers=1, randomize=True, **kwargs):
    """Returns a built RNNLanguageModel(V, E, H), with random weights unless `randomize` is False."""
    model = rnn.RNNLanguageModel(vocab_size=V, embed_dim=E, hidden_dim=H, num_layers=num_layers, **kwargs)
    model(_tokens(1, 1))  # builds the weights
    if randomize:
        _randomize(model)
    return model


def keras_reference(model, tokens, states):
    """Returns (logits, final states) of `keras.layers.SimpleRNN` layers holding the weights of `model`."""
    x = tf.gather(model.embedding.embeddings, tokens)  # (B, T, E)
    final = []
    for cell, h0 in zip(model.cells, states):
        layer = keras.layers.SimpleRNN(H, return_sequences=True, return_state=True)
        layer.build(x.shape)
        layer.cell.kernel.assign(cell.kernel)
        layer.cell.recurrent_kernel.assign(cell.recurrent_kernel)
        layer.cell.bias.assign(cell.bias)
        x, h = layer(x, initial_state=[h0])  # (B, T, H), (B, H)
        final.append(h)
    logits = tf.matmul(x, model.output_layer.kernel) + model.output_layer.bias  # (B, T, V)
    return logits, final


def _loss(model, tokens, labels):
    logits = model(tokens, training=True)
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


@pytest.mark.points(1)
def test_cell_matches_keras_simple_rnn_cell():
    cell = rnn.RNNCell(H)
    x_t, h_prev = _normal((B, E), seed=2), _normal((B, H), seed=3)
    h_t = cell(x_t, h_prev)
    assert_shape(cell.kernel, (E, H), "RNNCell.kernel")
    assert_shape(cell.recurrent_kernel, (H, H), "RNNCell.recurrent_kernel")
    assert_shape(cell.bias, (H,), "RNNCell.bias")
    assert_shape(h_t, (B, H), "h_t returned by RNNCell")

    _randomize(cell)
    reference = keras.layers.SimpleRNNCell(H)
    reference.build((None, E))
    for name in ("kernel", "recurrent_kernel", "bias"):
        getattr(reference, name).assign(getattr(cell, name))
    expected, _ = reference(x_t, [h_prev])
    assert_close(cell(x_t, h_prev), expected, "h_t (reference: keras.layers.SimpleRNNCell with the same weights)")


@pytest.mark.points(1)
def test_logits_and_states_have_documented_shapes():
    model = _model(num_layers=2)
    tokens = _tokens()
    logits = model(tokens)
    assert_shape(logits, (B, T, V), "logits")

    logits_too, states = model(tokens, return_state=True)
    assert_shape(logits_too, (B, T, V), "logits with return_state=True")
    assert isinstance(states, (list, tuple)) and len(states) == 2, (
        f"expected the final states as a list with one entry per layer (2 layers), got {type(states).__name__}"
        + (f" of length {len(states)}" if isinstance(states, (list, tuple)) else "")
    )
    for i, h in enumerate(states):
        assert_shape(h, (B, H), f"final states[{i}]")

    initial = model.get_initial_state(B)
    assert len(initial) == 2, f"expected get_initial_state to give one state per layer (2), got {len(initial)}"
    for i, h in enumerate(initial):
        assert_shape(h, (B, H), f"get_initial_state(B)[{i}]")
        assert_close(h, np.zeros((B, H)), f"get_initial_state(B)[{i}]")
    assert_close(model(tokens, states=initial), logits, "logits when starting from get_initial_state (vs states=None)")

    rebuilt = rnn.RNNLanguageModel.from_config(model.get_config())
    assert_shape(rebuilt(tokens), (B, T, V), "logits of a model rebuilt with from_config(get_config())")


@pytest.mark.points(1)
def test_sequence_matches_keras_simple_rnn():
    model = _model()
    tokens = _tokens()
    h0 = _normal((B, H), seed=4)  # a non-zero start, so the initial state has to be used
    logits, states = model(tokens, states=[h0], return_state=True)
    assert_shape(logits, (B, T, V), "logits")
    expected_logits, expected_states = keras_reference(model, tokens, [h0])
    assert_close(states[0], expected_states[0], "final state h_T (reference: keras.layers.SimpleRNN, same weights)")
    assert_close(logits, expected_logits, "logits (reference: keras.layers.SimpleRNN with the same weights)")


@pytest.mark.points(1)
def test_carrying_state_across_two_chunks_equals_one_pass():
    model = _model()
    tokens = _tokens(time=8)
    logits, states = model(tokens, return_state=True)
    first, mid_states = model(tokens[:, :3], return_state=True)
    second, end_states = model(tokens[:, 3:], states=mid_states, return_state=True)
    assert_shape(first, (B, 3, V), "logits of the first chunk")
    assert_shape(second, (B, 5, V), "logits of the second chunk")
    assert_close(
        second,
        logits[:, 3:],
        "logits of the second chunk, started from the first chunk's final state "
        "(reference: the same positions in one pass over both chunks)",
    )
    assert_close(end_states[0], states[0], "final state after two chunks (reference: after one pass)")
    assert_close(first, logits[:, :3], "logits of the first chunk (reference: one pass over both chunks)")


@pytest.mark.points(0.5)
def test_later_token_never_changes_earlier_logits():
    model = _model()
    tokens = _tokens().numpy()
    k = 3
    changed = tokens.copy()
    changed[:, k] = (changed[:, k] + 1) % V
    logits, logits_changed = model(tokens).numpy(), model(changed).numpy()
    assert_close(
        logits_changed[:, :k],
        logits[:, :k],
        f"logits at positions < {k} after changing the token at "
        f"position {k} (they must not change: position t may only read tokens 0..t)",
        atol=1e-6,
    )
    assert np.abs(logits_changed[:, k] - logits[:, k]).max() > 1e-4, (
        f"changing the token at position {k} did not change the logits at position {k}: the model ignores its input"
    )


@pytest.mark.points(0.5)
def test_gradients_reach_every_trainable_weight():
    model = _model(num_layers=2, randomize=False)
    tokens, labels = _tokens(seed=5), _tokens(seed=6)
    with tf.GradientTape() as tape:
        loss = _loss(model, tokens, labels)
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(model.trainable_weights) == 9, (
        f"expected 9 trainable weights (embedding, 3 per layer for 2 layers, output kernel and bias), "
        f"got {[w.path for w in model.trainable_weights]}"
    )
    for w, g in zip(model.trainable_weights, grads):
        norm = 0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g)))
        assert norm > 0.0, (
            f"no gradient reaches {w.path} (gradient {'None' if g is None else 'all zeros'}): "
            "is the weight used, and does every op between it and the loss keep the tape connected?"
        )


@pytest.mark.points(0.5)
def test_initial_loss_is_about_log_vocab():
    model = _model(randomize=False)  # a fresh model knows nothing: its predictions are close to uniform
    loss = float(_loss(model, _tokens(seed=7), _tokens(seed=8)))
    assert abs(loss - math.log(V)) < 0.1, (
        f"a freshly initialised model should predict about uniformly, with loss ~ ln(V) = {math.log(V):.3f}; "
        f"got {loss:.3f}"
    )


@pytest.mark.points(1)
def test_overfits_one_tiny_batch():
    model = rnn.RNNLanguageModel(vocab_size=V, embed_dim=16, hidden_dim=32)
    sequence = np.random.default_rng(9).integers(0, V, size=(2, 11))
    tokens, labels = tf.constant(sequence[:, :-1], tf.int32), tf.constant(sequence[:, 1:], tf.int32)
    optimizer = keras.optimizers.Adam(0.02)
    model(tokens)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = _loss(model, tokens, labels)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
        return loss

    first = loss = float(step())
    for _ in range(300):
        loss = float(step())
        if loss < 0.05:
            break
    assert loss < 0.05, (
        f"after 300 Adam steps on one batch of 2 x 10 tokens the loss is {loss:.3f} (it started at {first:.3f}); "
        "a working model memorises such a batch"
    )
