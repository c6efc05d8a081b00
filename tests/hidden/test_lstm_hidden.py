"""Part 2b, hidden tests (2.5 of the 12 points): stacked layers, one token at a time, tf.function, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import assert_close, assert_shape

from assignment import lstm

V, E, H = 11, 7, 5  # vocabulary, embedding width, hidden units
B, T = 3, 6  # batch, time


def _tokens(batch=B, time=T, seed=0):
    """Returns int32 token ids of shape (batch, time)."""
    return tf.constant(np.random.default_rng(seed).integers(0, V, size=(batch, time)), tf.int32)


def _normal(shape, seed, scale=0.5):
    return tf.constant(np.random.default_rng(seed).normal(0.0, scale, size=shape), tf.float32)


def _model(num_layers=1):
    """Returns a built LSTMLanguageModel(V, E, H) whose weights (biases included) are all random."""
    model = lstm.LSTMLanguageModel(vocab_size=V, embed_dim=E, hidden_dim=H, num_layers=num_layers)
    model(_tokens(1, 1))  # builds the weights
    rng = np.random.default_rng(1)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))
    return model


def _random_states(num_layers, seed=4):
    """Returns a non-zero state in the documented format: a list of (h, c) pairs of shape (B, H)."""
    return [(_normal((B, H), seed + 2 * i), _normal((B, H), seed + 2 * i + 1)) for i in range(num_layers)]


def _assert_states_close(states, expected, what, reference):
    assert isinstance(states, (list, tuple)) and len(states) == len(expected), (
        f"expected {what} as a list of {len(expected)} (h, c) pairs, one per layer"
    )
    for i, (pair, (h, c)) in enumerate(zip(states, expected)):
        assert isinstance(pair, (list, tuple)) and len(pair) == 2, f"expected {what}[{i}] as a pair (h, c)"
        assert_close(pair[0], h, f"{what}[{i}] h (reference: {reference})")
        assert_close(pair[1], c, f"{what}[{i}] c (reference: {reference})")


@pytest.mark.points(1)
def test_two_layers_match_stacked_keras_lstm():
    model = _model(num_layers=2)
    tokens = _tokens()
    start = _random_states(2)
    logits, states = model(tokens, states=start, return_state=True)
    assert_shape(logits, (B, T, V), "logits of a 2-layer model")

    x = tf.gather(model.embedding.embeddings, tokens)  # (B, T, E)
    expected_states = []
    for cell, (h0, c0) in zip(model.cells, start):
        layer = keras.layers.LSTM(H, return_sequences=True, return_state=True)
        layer.build(x.shape)
        for name in ("kernel", "recurrent_kernel", "bias"):
            getattr(layer.cell, name).assign(getattr(cell, name))
        x, h, c = layer(x, initial_state=[h0, c0])  # (B, T, H), (B, H), (B, H)
        expected_states.append((h, c))
    _assert_states_close(
        states,
        expected_states,
        "final states of a 2-layer model",
        "stacked keras.layers.LSTM; layer 1 reads the outputs of layer 0 and starts from states[1]",
    )
    expected = tf.matmul(x, model.output_layer.kernel) + model.output_layer.bias
    assert_close(logits, expected, "logits of a 2-layer model (reference: two stacked keras.layers.LSTM)")


@pytest.mark.points(0.5)
def test_one_token_at_a_time_with_carried_state_equals_one_pass():
    # How generation reads a sequence: one token per call, carrying the state returned by the previous call.
    model = _model(num_layers=2)
    tokens = _tokens()
    logits = model(tokens)
    states, steps = None, []
    for t in range(T):
        step, states = model(tokens[:, t : t + 1], states=states, return_state=True)
        assert_shape(step, (B, 1, V), f"logits of a one-token call (step {t})")
        steps.append(step)
    assert_close(
        tf.concat(steps, axis=1),
        logits,
        "logits read one token at a time with the carried state (reference: one pass over the whole sequence)",
    )


@pytest.mark.points(0.5)
def test_compiled_call_matches_eager_call():
    # Training runs the model inside tf.function: the loop over time must trace into a graph and agree with eager.
    model = _model(num_layers=2)
    tokens = _tokens()
    start = _random_states(2)
    logits, states = model(tokens, states=start, return_state=True)
    compiled = tf.function(lambda tokens, states: model(tokens, states=states, return_state=True))
    compiled_logits, compiled_states = compiled(tokens, start)
    assert_close(compiled_logits, logits, "logits of the model called inside tf.function (reference: eager call)")
    _assert_states_close(compiled_states, states, "final states inside tf.function", "the eager call")


@pytest.mark.points(0.5)
def test_bad_input_raises_value_error_naming_the_shapes():
    model = _model()
    tokens = _tokens()
    assert_shape(model(tokens), (B, T, V), "logits of a valid call")

    with pytest.raises(ValueError) as error:
        model(tokens[0])  # 1-D: the batch axis is missing
    assert "(6,)" in str(error.value), f"the error for 1-D tokens should name the shape received (6,): {error.value}"
    with pytest.raises(ValueError):
        model(tf.cast(tokens, tf.float32))
    with pytest.raises(ValueError) as error:
        model(tokens + V)  # ids outside [0, V)
    assert str(V) in str(error.value), f"the error for ids outside the vocabulary should name V={V}: {error.value}"
    with pytest.raises(ValueError) as error:
        model(tokens, states=[(tf.zeros((B, H)), tf.zeros((B, H - 1)))])
    message = str(error.value)
    assert f"({B}, {H - 1})" in message and f"({B}, {H})" in message, (
        f"the error for a state of the wrong shape should name the shape received ({B}, {H - 1}) and the shape "
        f"expected ({B}, {H}): {message}"
    )
