"""Part 2a, hidden tests (1.5 of the 8 points): stacked layers, token-by-token generation, clear errors on bad input."""

import numpy as np
import pytest
from checks import assert_close, assert_shape
from reference_recurrent import (
    B,
    E,
    H,
    T,
    V,
    assign_exactly,
    check_ran,
    draw_normal,
    draw_tokens,
    flat_weights,
    reference_rnn,
    rnn_weights,
)


def rnn_session(sizes, num_layers, values, calls):
    """Probe: an RNNLanguageModel(V, E, H, num_layers) given exactly the test's weights `values` (embedding, then
    kernel, recurrent_kernel and bias of each cell, then the output kernel and bias); runs each call (tokens, states
    given or "carried" from the previous call, return_state) and returns each raw output or exception and the
    weights read back."""
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    vocab, embed, hidden = sizes
    model = rnn.RNNLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((2, 1), tf.int32))
    slots = [("embedding", model.embedding.embeddings)]
    for i, cell in enumerate(model.cells):
        slots += [(f"cells[{i}].{n}", getattr(cell, n)) for n in ("kernel", "recurrent_kernel", "bias")]
    slots += [("output_layer.kernel", model.output_layer.kernel), ("output_layer.bias", model.output_layer.bias)]
    assign_exactly(model, slots, values)
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
    return {"weights": [np.asarray(v) for _, v in slots], "results": results}


def _session(student, num_layers, calls):
    """Runs rnn_session with the test's weights; checks the weights read back; returns (results, weights)."""
    weights = rnn_weights(num_layers)
    session = student.run(rnn_session, (V, E, H), num_layers, flat_weights(weights)[1], calls, uses=(assign_exactly,))
    sent = flat_weights(weights)[1]
    assert len(session["weights"]) == len(sent), (
        f"expected {len(sent)} weights read back, got {len(session['weights'])}"
    )
    for got, value in zip(session["weights"], sent):
        assert_shape(got, value.shape, "a weight read back from the model")
        assert np.array_equal(got, value), "a weight of the model no longer holds the value the test gave it"
    return session["results"], weights


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "rnn.rnn_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, the state after reading",
    "rnn.rnn_forward: h_last: float tensor of shape `(B, H)`, the state after the last step (equal to `outputs[:,",
)
def test_two_layers_match_stacked_keras_simple_rnn(student):
    tokens = draw_tokens()
    start = [draw_normal((B, H), seed=4), draw_normal((B, H), seed=5)]
    results, w = _session(student, 2, [{"tokens": tokens, "states": start, "return_state": True}])
    result = check_ran(results[0], "a 2-layer model")
    assert_shape(result["logits"], (B, T, V), "logits of a 2-layer model")
    expected, expected_states, _ = reference_rnn(w, tokens, start)
    for i, h in enumerate(expected_states):
        assert_close(
            result["states"][i],
            h,
            f"final state of layer {i} (reference: stacked simple RNNs; "
            "layer 1 reads the outputs of layer 0 and starts from states[1])",
        )
    assert_close(result["logits"], expected, "logits of a 2-layer model (reference: two stacked simple RNNs)")


@pytest.mark.points(0.5)
@pytest.mark.clause("rnn.rnn_forward: inputs: float tensor of shape `(B, T, D)`.")
def test_one_token_at_a_time_with_carried_state_equals_one_pass(student):
    # How generation reads a sequence: one token per call, carrying the state returned by the previous call; with
    # the whole batch, then with a batch of one (how a single prompt is generated from).
    tokens = draw_tokens()
    calls = []
    for batch in (B, 1):
        calls += [{"tokens": tokens[:batch], "states": None}]
        calls += [{"tokens": tokens[:batch, :1], "states": None, "return_state": True}]
        calls += [{"tokens": tokens[:batch, t : t + 1], "return_state": True} for t in range(1, T)]
    results, w = _session(student, 2, calls)
    for j, batch in enumerate((B, 1)):
        what = "" if batch == B else " (a batch of one)"
        first = j * (T + 1)
        logits = check_ran(results[first], f"model(tokens){what}")["logits"]
        assert_shape(logits, (batch, T, V), f"logits of one pass{what}")
        steps = []
        for t in range(T):
            step = check_ran(results[first + t + 1], f"the one-token call of step {t}{what}")["logits"]
            assert_shape(step, (batch, 1, V), f"logits of a one-token call (step {t}){what}")
            steps.append(step)
        expected = reference_rnn(w, tokens[:batch])[0]
        assert_close(logits, expected, f"logits of one pass{what} (reference: two stacked simple RNNs)")
        assert_close(
            np.concatenate(steps, axis=1),
            expected,
            f"logits read one token at a time with the carried state{what} (reference: one pass of two stacked "
            "simple RNNs)",
        )


@pytest.mark.points(0.5)
def test_bad_input_raises_value_error_naming_the_shapes(student):
    tokens = draw_tokens()
    calls = [
        {"tokens": tokens},
        {"tokens": tokens[0]},  # 1-D: the batch axis is missing
        {"tokens": tokens.astype(np.float32), "dtype": "float32"},
        {"tokens": tokens + V},  # ids outside [0, V)
        {"tokens": tokens, "states": [np.zeros((B, H - 1), np.float32)]},
    ]
    results, w = _session(student, 1, calls)
    valid = check_ran(results[0], "a valid call")["logits"]
    assert_shape(valid, (B, T, V), "logits of a valid call")
    assert_close(valid, reference_rnn(w, tokens)[0], "logits of a valid call (reference: a simple RNN)")
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
