"""Part 2a, hidden tests (1.5 of the 8 points): stacked layers, token-by-token generation, clear errors on bad input."""

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


def rnn_session(sizes, num_layers, calls):
    """Probe: an RNNLanguageModel(V, E, H, num_layers) with random weights (seed 1, biases included); runs each
    call (tokens, states, return_state, dtype) and returns the weights and each output or exception."""
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    vocab, embed, hidden = sizes
    model = rnn.RNNLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((1, 1), tf.int32))
    rng = np.random.default_rng(1)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))
    results = []
    states = None
    for call in calls:
        tokens = tf.constant(call["tokens"], call.get("dtype", "int32"))
        given = call.get("states", "carried")
        given = states if given == "carried" else None if given is None else [tf.constant(h) for h in given]
        try:
            out = model(tokens, states=given, return_state=call.get("return_state", False))
        except Exception as exc:
            results.append({"error": type(exc).__name__, "message": str(exc)[:300]})
            continue
        if call.get("return_state"):
            logits, states = out
            results.append({"logits": np.asarray(logits), "states": [np.asarray(h) for h in states]})
        else:
            results.append({"logits": np.asarray(out)})
    weights = {
        "embedding": np.asarray(model.embedding.embeddings),
        "cells": [
            {name: np.asarray(getattr(cell, name)) for name in ("kernel", "recurrent_kernel", "bias")}
            for cell in model.cells
        ],
        "output_kernel": np.asarray(model.output_layer.kernel),
        "output_bias": np.asarray(model.output_layer.bias),
    }
    return {"weights": weights, "results": results}


def _ok(result, what):
    assert "error" not in result, f"{what} raised {result.get('error')}: {result.get('message')}"
    return result


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "rnn.rnn_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, the state after reading",
    "rnn.rnn_forward: h_last: float tensor of shape `(B, H)`, the state after the last step (equal to `outputs[:,",
)
def test_two_layers_match_stacked_keras_simple_rnn(student):
    tokens = _tokens()
    start = [_normal((B, H), seed=4), _normal((B, H), seed=5)]
    session = student.run(rnn_session, (V, E, H), 2, [{"tokens": tokens, "states": start, "return_state": True}])
    result = _ok(session["results"][0], "a 2-layer model")
    assert_shape(result["logits"], (B, T, V), "logits of a 2-layer model")
    w = session["weights"]
    x = w["embedding"].astype(np.float64)[tokens]  # (B, T, E)
    for i, (cell, h) in enumerate(zip(w["cells"], start)):
        outputs = []
        for t in range(T):
            h = np.tanh(x[:, t] @ cell["kernel"] + h @ cell["recurrent_kernel"] + cell["bias"])
            outputs.append(h)
        x = np.stack(outputs, axis=1)
        assert_close(
            result["states"][i],
            h,
            f"final state of layer {i} (reference: stacked simple RNNs; "
            "layer 1 reads the outputs of layer 0 and starts from states[1])",
        )
    expected = x @ w["output_kernel"] + w["output_bias"]
    assert_close(result["logits"], expected, "logits of a 2-layer model (reference: two stacked simple RNNs)")


@pytest.mark.points(0.5)
def test_one_token_at_a_time_with_carried_state_equals_one_pass(student):
    # How generation reads a sequence: one token per call, carrying the state returned by the previous call.
    tokens = _tokens()
    calls = [{"tokens": tokens}, {"tokens": tokens[:, :1], "states": None, "return_state": True}]
    calls += [{"tokens": tokens[:, t : t + 1], "return_state": True} for t in range(1, T)]
    session = student.run(rnn_session, (V, E, H), 2, calls)
    logits = _ok(session["results"][0], "model(tokens)")["logits"]
    steps = []
    for t in range(T):
        step = _ok(session["results"][t + 1], f"the one-token call of step {t}")["logits"]
        assert_shape(step, (B, 1, V), f"logits of a one-token call (step {t})")
        steps.append(step)
    assert_close(
        np.concatenate(steps, axis=1),
        logits,
        "logits read one token at a time with the carried state (reference: one pass over the whole sequence)",
    )


@pytest.mark.points(0.5)
def test_bad_input_raises_value_error_naming_the_shapes(student):
    tokens = _tokens()
    calls = [
        {"tokens": tokens},
        {"tokens": tokens[0]},  # 1-D: the batch axis is missing
        {"tokens": tokens.astype(np.float32), "dtype": "float32"},
        {"tokens": tokens + V},  # ids outside [0, V)
        {"tokens": tokens, "states": [np.zeros((B, H - 1), np.float32)]},
    ]
    results = student.run(rnn_session, (V, E, H), 1, calls)["results"]
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
