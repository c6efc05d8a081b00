"""Part 2b, hidden tests (2.5 of the 12 points): stacked layers, one token at a time, tf.function, bad input."""

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
    draw_tokens,
    flat_weights,
    lstm_weights,
    random_states,
    reference_lstm,
)


def lstm_session(sizes, num_layers, values, calls):
    """Probe: an LSTMLanguageModel(V, E, H, num_layers) given exactly the test's weights `values` (embedding, then
    kernel, recurrent_kernel and bias of each cell, then the output kernel and bias); runs each call (tokens, states
    given or "carried" from the previous call, return_state, compiled: inside tf.function) and returns each raw
    output or exception and the weights read back."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    vocab, embed, hidden = sizes
    model = lstm.LSTMLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((2, 1), tf.int32))
    slots = [("embedding", model.embedding.embeddings)]
    for i, cell in enumerate(model.cells):
        slots += [(f"cells[{i}].{n}", getattr(cell, n)) for n in ("kernel", "recurrent_kernel", "bias")]
    slots += [("output_layer.kernel", model.output_layer.kernel), ("output_layer.bias", model.output_layer.bias)]
    assign_exactly(model, slots, values)
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
    return {"weights": [np.asarray(v) for _, v in slots], "results": results}


def _session(student, num_layers, calls):
    """Runs lstm_session with the test's weights; checks the weights read back; returns (results, weights)."""
    weights = lstm_weights(num_layers)
    sent = flat_weights(weights)[1]
    session = student.run(lstm_session, (V, E, H), num_layers, sent, calls, uses=(assign_exactly,))
    assert len(session["weights"]) == len(sent), (
        f"expected {len(sent)} weights read back, got {len(session['weights'])}"
    )
    for got, value in zip(session["weights"], sent):
        assert_shape(got, value.shape, "a weight read back from the model")
        assert np.array_equal(got, value), "a weight of the model no longer holds the value the test gave it"
    return session["results"], weights


def _assert_states_close(states, expected, what, reference):
    assert len(states) == len(expected), f"expected {what} as a list of {len(expected)} (h, c) pairs, one per layer"
    for i, (pair, (h, c)) in enumerate(zip(states, expected)):
        assert len(pair) == 2, f"expected {what}[{i}] as a pair (h, c)"
        assert_close(pair[0], h, f"{what}[{i}] h (reference: {reference})")
        assert_close(pair[1], c, f"{what}[{i}] c (reference: {reference})")


@pytest.mark.points(1)
@pytest.mark.clause(
    "lstm.lstm_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, after reading `inputs[:,",
    "lstm.lstm_forward: last_state: pair `(h_T, c_T)`, two float tensors of shape `(B, H)`, the state after the last",
)
def test_two_layers_match_stacked_keras_lstm(student):
    tokens = draw_tokens()
    start = random_states(2)
    results, w = _session(student, 2, [{"tokens": tokens, "states": start, "return_state": True}])
    result = check_ran(results[0], "a 2-layer model")
    assert_shape(result["logits"], (B, T, V), "logits of a 2-layer model")
    expected, expected_states, _ = reference_lstm(w, tokens, start)
    _assert_states_close(
        result["states"],
        expected_states,
        "final states of a 2-layer model",
        "stacked LSTMs; layer 1 reads the outputs of layer 0 and starts from states[1]",
    )
    assert_close(result["logits"], expected, "logits of a 2-layer model (reference: two stacked LSTMs)")


@pytest.mark.points(0.5)
@pytest.mark.clause("lstm.lstm_forward: inputs: float tensor of shape `(B, T, D)`.")
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
        expected = reference_lstm(w, tokens[:batch])[0]
        assert_close(logits, expected, f"logits of one pass{what} (reference: two stacked LSTMs)")
        assert_close(
            np.concatenate(steps, axis=1),
            expected,
            f"logits read one token at a time with the carried state{what} (reference: one pass of two stacked LSTMs)",
        )


@pytest.mark.points(0.5)
def test_compiled_call_matches_eager_call(student):
    # Training runs the model inside tf.function: the loop over time must trace into a graph and agree with eager.
    tokens = draw_tokens()
    start = random_states(2)
    calls = [
        {"tokens": tokens, "states": start, "return_state": True},
        {"tokens": tokens, "states": start, "compiled": True},
    ]
    results, w = _session(student, 2, calls)
    eager, compiled = check_ran(results[0], "the eager call"), check_ran(results[1], "the call inside tf.function")
    expected, expected_states, _ = reference_lstm(w, tokens, start)
    assert_close(eager["logits"], expected, "logits of the eager call (reference: two stacked LSTMs)")
    assert_close(compiled["logits"], expected, "logits of the model inside tf.function (reference: two stacked LSTMs)")
    _assert_states_close(compiled["states"], expected_states, "final states inside tf.function", "two stacked LSTMs")


@pytest.mark.points(0.5)
def test_bad_input_raises_value_error_naming_the_shapes(student):
    tokens = draw_tokens()
    calls = [
        {"tokens": tokens},
        {"tokens": tokens[0]},  # 1-D: the batch axis is missing
        {"tokens": tokens.astype(np.float32), "dtype": "float32"},
        {"tokens": tokens + V},  # ids outside [0, V)
        {"tokens": tokens, "states": [(np.zeros((B, H), np.float32), np.zeros((B, H - 1), np.float32))]},
    ]
    results, w = _session(student, 1, calls)
    valid = check_ran(results[0], "a valid call")["logits"]
    assert_shape(valid, (B, T, V), "logits of a valid call")
    assert_close(valid, reference_lstm(w, tokens)[0], "logits of a valid call (reference: an LSTM)")
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
