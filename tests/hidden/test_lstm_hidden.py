"""Part 2b, hidden tests (2.5 of the 12 points): stacked layers, one token at a time, tf.function, bad input."""

import numpy as np
import pytest
from checks import assert_close, assert_shape

V, E, H = 11, 7, 5  # vocabulary, embedding width, hidden units
B, T = 3, 6  # batch, time


def _tokens(batch=B, time=T, seed=0):
    """Returns int32 token ids of shape (batch, time)."""
    return np.random.default_rng(seed).integers(0, V, size=(batch, time)).astype(np.int32)


def _normal(shape, seed, scale=0.5):
    return np.random.default_rng(seed).normal(0.0, scale, size=shape).astype(np.float32)


def _random_states(num_layers, seed=4):
    """Returns a non-zero state in the documented format: a list of (h, c) pairs of shape (B, H)."""
    return [(_normal((B, H), seed + 2 * i), _normal((B, H), seed + 2 * i + 1)) for i in range(num_layers)]


def lstm_session(sizes, num_layers, calls):
    """Probe: an LSTMLanguageModel(V, E, H, num_layers) with random weights (seed 1, biases included); runs each
    call (tokens, states given or "carried" from the previous call, return_state, dtype, compiled: inside
    tf.function) and returns the weights and each output or exception."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    vocab, embed, hidden = sizes
    model = lstm.LSTMLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((1, 1), tf.int32))
    rng = np.random.default_rng(1)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))
    compiled = tf.function(lambda tokens, states: model(tokens, states=states, return_state=True))
    results, states = [], None
    for call in calls:
        tokens = tf.constant(call["tokens"], call.get("dtype", "int32"))
        given = call.get("states", "carried")
        if given != "carried":
            given = None if given is None else [tuple(tf.constant(s) for s in pair) for pair in given]
        else:
            given = states
        try:
            if call.get("compiled"):
                out = compiled(tokens, given)
            else:
                out = model(tokens, states=given, return_state=call.get("return_state", False))
        except Exception as exc:
            results.append({"error": type(exc).__name__, "message": str(exc)[:300]})
            continue
        if call.get("return_state") or call.get("compiled"):
            logits, states = out
            results.append(
                {
                    "logits": np.asarray(logits),
                    "states": [[np.asarray(v) for v in pair] for pair in states],
                    "pair_types": [type(pair).__name__ for pair in states],
                }
            )
        else:
            results.append({"logits": np.asarray(out)})
    return {"results": results}


def _ok(result, what):
    assert "error" not in result, f"{what} raised {result.get('error')}: {result.get('message')}"
    return result


def _assert_states_close(states, expected, what, reference):
    assert len(states) == len(expected), f"expected {what} as a list of {len(expected)} (h, c) pairs, one per layer"
    for i, (pair, (h, c)) in enumerate(zip(states, expected)):
        assert len(pair) == 2, f"expected {what}[{i}] as a pair (h, c)"
        assert_close(pair[0], h, f"{what}[{i}] h (reference: {reference})")
        assert_close(pair[1], c, f"{what}[{i}] c (reference: {reference})")


def weights_session(sizes, num_layers):
    """Probe: the weights of an LSTMLanguageModel(V, E, H, num_layers) after the same random assignment."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    vocab, embed, hidden = sizes
    model = lstm.LSTMLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((1, 1), tf.int32))
    rng = np.random.default_rng(1)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))
    return {
        "embedding": np.asarray(model.embedding.embeddings),
        "cells": [
            {name: np.asarray(getattr(cell, name)) for name in ("kernel", "recurrent_kernel", "bias")}
            for cell in model.cells
        ],
        "output_kernel": np.asarray(model.output_layer.kernel),
        "output_bias": np.asarray(model.output_layer.bias),
    }


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.points(1)
@pytest.mark.clause(
    "lstm.lstm_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, after reading `inputs[:,",
    "lstm.lstm_forward: last_state: pair `(h_T, c_T)`, two float tensors of shape `(B, H)`, the state after the last",
)
def test_two_layers_match_stacked_keras_lstm(student):
    tokens = _tokens()
    start = _random_states(2)
    result = _ok(
        student.run(lstm_session, (V, E, H), 2, [{"tokens": tokens, "states": start, "return_state": True}])["results"][
            0
        ],
        "a 2-layer model",
    )
    assert_shape(result["logits"], (B, T, V), "logits of a 2-layer model")
    w = student.run(weights_session, (V, E, H), 2)
    x = w["embedding"].astype(np.float64)[tokens]  # (B, T, E)
    expected_states = []
    for cell, (h, c) in zip(w["cells"], start):
        h, c = h.astype(np.float64), c.astype(np.float64)
        outputs = []
        for t in range(T):
            z = x[:, t] @ cell["kernel"] + h @ cell["recurrent_kernel"] + cell["bias"]
            i, f, g, o = np.split(z, 4, axis=-1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            outputs.append(h)
        x = np.stack(outputs, axis=1)
        expected_states.append((h, c))
    _assert_states_close(
        result["states"],
        expected_states,
        "final states of a 2-layer model",
        "stacked LSTMs; layer 1 reads the outputs of layer 0 and starts from states[1]",
    )
    expected = x @ w["output_kernel"] + w["output_bias"]
    assert_close(result["logits"], expected, "logits of a 2-layer model (reference: two stacked LSTMs)")


@pytest.mark.points(0.5)
def test_one_token_at_a_time_with_carried_state_equals_one_pass(student):
    tokens = _tokens()
    calls = [{"tokens": tokens}, {"tokens": tokens[:, :1], "states": None, "return_state": True}]
    calls += [{"tokens": tokens[:, t : t + 1], "return_state": True} for t in range(1, T)]
    results = student.run(lstm_session, (V, E, H), 2, calls)["results"]
    logits = _ok(results[0], "model(tokens)")["logits"]
    steps = []
    for t in range(T):
        step = _ok(results[t + 1], f"the one-token call of step {t}")["logits"]
        assert_shape(step, (B, 1, V), f"logits of a one-token call (step {t})")
        steps.append(step)
    assert_close(
        np.concatenate(steps, axis=1),
        logits,
        "logits read one token at a time with the carried state (reference: one pass over the whole sequence)",
    )


@pytest.mark.points(0.5)
def test_compiled_call_matches_eager_call(student):
    # Training runs the model inside tf.function: the loop over time must trace into a graph and agree with eager.
    tokens = _tokens()
    start = _random_states(2)
    calls = [
        {"tokens": tokens, "states": start, "return_state": True},
        {"tokens": tokens, "states": start, "compiled": True},
    ]
    eager, compiled = student.run(lstm_session, (V, E, H), 2, calls)["results"]
    eager, compiled = _ok(eager, "the eager call"), _ok(compiled, "the call inside tf.function")
    assert_close(compiled["logits"], eager["logits"], "logits of the model inside tf.function (reference: eager)")
    _assert_states_close(compiled["states"], eager["states"], "final states inside tf.function", "the eager call")


@pytest.mark.points(0.5)
def test_bad_input_raises_value_error_naming_the_shapes(student):
    tokens = _tokens()
    calls = [
        {"tokens": tokens},
        {"tokens": tokens[0]},  # 1-D: the batch axis is missing
        {"tokens": tokens.astype(np.float32), "dtype": "float32"},
        {"tokens": tokens + V},  # ids outside [0, V)
        {"tokens": tokens, "states": [(np.zeros((B, H), np.float32), np.zeros((B, H - 1), np.float32))]},
    ]
    results = student.run(lstm_session, (V, E, H), 1, calls)["results"]
    assert_shape(_ok(results[0], "a valid call")["logits"], (B, T, V), "logits of a valid call")
    for result, what in zip(results[1:], ("1-D tokens", "float tokens", "ids outside [0, V)", "a bad state")):
        assert result.get("error") == "ValueError", f"{what} must raise a ValueError; got {result}"
    assert "(6,)" in results[1]["message"], (
        f"the error for 1-D tokens should name the shape received (6,): {results[1]['message']}"
    )
    assert str(V) in results[3]["message"], (
        f"the error for ids outside the vocabulary should name V={V}: {results[3]['message']}"
    )
    message = results[4]["message"]
    assert f"({B}, {H - 1})" in message and f"({B}, {H})" in message, (
        f"the error for a state of the wrong shape should name the shape received ({B}, {H - 1}) and the shape "
        f"expected ({B}, {H}): {message}"
    )
