"""Part 2b (12 points with the hidden tests): LSTMCell, lstm_forward and LSTMLanguageModel.

Every number a verdict uses is computed here, from data this test owns: the test draws every weight and every input,
a probe gives those weights to the student's layer (which must hold exactly its documented weights) and sends back
only raw outputs and the weights read back, and the expected values come from a NumPy reference of the LSTM
equations of Keras' `LSTMCell` (gate order input, forget, cell, output) holding the same weights; gradients are
checked against the reference's own backpropagation through time. Properties (shapes, state carried across chunks,
no peeking at later tokens) are checked together with the reference in the same test. Sizes are tiny and all
different (V=11, E=7, H=5, 4H=20), so a transposed weight or a swapped axis shows up as a shape. The sizes, the
weights the test draws, the helpers sent with the probes and the forward reference are shared with the RNN's tests
(reference_recurrent.py).
"""

import math

import numpy as np
import pytest
from checks import assert_close, assert_shape
from reference_recurrent import (
    CELL_WEIGHTS,
    B,
    E,
    H,
    T,
    V,
    assert_weights_kept,
    assign_exactly,
    cross_entropy,
    draw_normal,
    draw_tokens,
    flat_weights,
    lstm_weights,
    random_states,
    reference_cell,
    reference_lstm,
    session_result,
    sigmoid,
    unflat_weights,
    weight_slots,
)

STATE_TYPES = ("list", "tuple", "ListWrapper", "_TupleWrapper")


def _fresh_weights(num_layers=1, seed=2):
    """Weights drawn as the documented initialisers draw them: Embedding uniform(-0.05, 0.05), glorot-uniform
    kernels, orthogonal recurrent kernels, zero biases but the forget-gate quarter at 1."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in, fan_out):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)

    cells = [
        {
            "kernel": glorot(E if i == 0 else H, 4 * H),
            "recurrent_kernel": np.linalg.qr(rng.normal(size=(4 * H, H)))[0].T.astype(np.float32),
            "bias": np.concatenate([np.zeros(H), np.ones(H), np.zeros(2 * H)]).astype(np.float32),
        }
        for i in range(num_layers)
    ]
    return {
        "embedding": rng.uniform(-0.05, 0.05, size=(V, E)).astype(np.float32),
        "cells": cells,
        "output_kernel": glorot(H, V),
        "output_bias": np.zeros(V, np.float32),
    }


# ---------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return plain data (see grading/runtime/probes.py). They give the
# test's weights to the student's layers and return only raw outputs and the weights read back.
# ---------------------------------------------------------------------------------------------------------------


def lm_session(sizes, num_layers, values, calls):
    """Probe: an LSTMLanguageModel(V, E, H, num_layers) given exactly the test's weights `values` (in the order of
    weight_slots); runs each call of `calls` (a dict: tokens, states, return_state) and returns each call's raw
    output or exception, and the weights read back."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    vocab, embed, hidden = sizes
    model = lstm.LSTMLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((2, 1), tf.int32))  # builds the weights
    slots = weight_slots(model)
    assign_exactly(model, slots, values)

    def plain(x):
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        return np.asarray(x)

    results = []
    for call in calls:
        tokens = tf.constant(call["tokens"], tf.int32)
        states = call.get("states")
        states = None if states is None else [tuple(tf.constant(s, tf.float32) for s in pair) for pair in states]
        try:
            out = model(tokens, states=states, return_state=call.get("return_state", False))
        except Exception as exc:
            results.append({"error": type(exc).__name__, "message": str(exc)[:300]})
            continue
        if call.get("return_state"):
            logits, states = out
            results.append(
                {
                    "logits": np.asarray(logits),
                    "states": plain(states) if isinstance(states, list | tuple) else np.asarray(states),
                    "states_type": type(states).__name__,
                    "pair_types": [type(p).__name__ for p in states] if isinstance(states, list | tuple) else [],
                }
            )
        else:
            results.append({"logits": np.asarray(out)})
    return {"weights": [np.asarray(v) for _, v in slots], "results": results}


def lstm_cell_session(units, values, calls):
    """Probe: an LSTMCell(units) built by its first call, then given exactly the test's weights `values` (kernel,
    recurrent_kernel, bias; None keeps the fresh ones); returns what the cell returned for each (x_t, h_prev, c_prev)
    of `calls` and the weights read back."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    cell = lstm.LSTMCell(units)
    x_t, h_prev, c_prev = calls[0]
    first = cell(tf.constant(x_t), (tf.constant(h_prev), tf.constant(c_prev)))  # builds the weights
    slots = [(name, getattr(cell, name)) for name in ("kernel", "recurrent_kernel", "bias")]
    if values is not None:
        assign_exactly(cell, slots, values)
    outputs = []
    for x_t, h_prev, c_prev in calls:
        out = (
            first
            if values is None and not outputs
            else cell(tf.constant(x_t), (tf.constant(h_prev), tf.constant(c_prev)))
        )
        outputs.append(
            {
                "type": type(out).__name__,
                "value": [np.asarray(v) for v in out] if isinstance(out, list | tuple) else np.asarray(out),
            }
        )
    return {"outputs": outputs, "weights": [np.asarray(v) for _, v in slots]}


def lstm_shapes(sizes, values, tokens):
    """Probe: what a 2-layer LSTMLanguageModel holding the test's weights returns: logits, final states, initial
    states, and the logits of a model rebuilt with from_config and given the same weights."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    vocab, embed, hidden = sizes
    model = lstm.LSTMLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=2)
    tokens = tf.constant(tokens)
    model(tokens)
    assign_exactly(model, weight_slots(model), values)
    logits = model(tokens)
    logits_too, states = model(tokens, return_state=True)
    initial = model.get_initial_state(tokens.shape[0])

    def pairs(states):
        if not isinstance(states, list | tuple):
            return np.asarray(states)
        return [[np.asarray(v) for v in p] if isinstance(p, list | tuple) else np.asarray(p) for p in states]

    rebuilt = lstm.LSTMLanguageModel.from_config(model.get_config())
    rebuilt(tokens)
    assign_exactly(rebuilt, weight_slots(rebuilt), values)
    return {
        "logits": np.asarray(logits),
        "logits_too": np.asarray(logits_too),
        "states_type": type(states).__name__,
        "pair_types": [type(p).__name__ for p in states] if isinstance(states, list | tuple) else [],
        "states": pairs(states),
        "initial_type": type(initial).__name__,
        "initial_pair_types": [type(p).__name__ for p in initial] if isinstance(initial, list | tuple) else [],
        "initial": pairs(initial),
        "from_initial": np.asarray(model(tokens, states=initial)),
        "rebuilt": np.asarray(rebuilt(tokens)),
        "weights": [np.asarray(v) for _, v in weight_slots(model)],
    }


def lm_gradients(sizes, num_layers, values, tokens, states, cotangent):
    """Probe: an LSTMLanguageModel holding the test's weights, called in training mode from `states`; returns its
    raw logits and the raw gradient of sum(logits * cotangent) with respect to each weight (in the order of
    weight_slots; None where the tape finds no path to the weight)."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    vocab, embed, hidden = sizes
    model = lstm.LSTMLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((2, 1), tf.int32))
    slots = weight_slots(model)
    assign_exactly(model, slots, values)
    states = [tuple(tf.constant(s) for s in pair) for pair in states]
    with tf.GradientTape() as tape:
        logits = model(tf.constant(tokens), states=states, training=True)
    grads = tape.gradient(logits, [v for _, v in slots], output_gradients=tf.constant(cotangent))
    return {
        "logits": np.asarray(logits),
        "gradients": [None if g is None else np.asarray(tf.convert_to_tensor(g)) for g in grads],
    }


def lm_training_steps(sizes, values, tokens, labels, learning_rate, steps):
    """Probe: `steps` steps of plain gradient descent on the mean cross-entropy of a 1-layer LSTMLanguageModel
    holding the test's weights, each step compiled with tf.function and run in training mode; returns the raw logits
    of each step (before its update) and the weights read back after the last one."""
    import keras
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    vocab, embed, hidden = sizes
    model = lstm.LSTMLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=1)
    model(tf.zeros((2, 1), tf.int32))
    slots = weight_slots(model)
    assign_exactly(model, slots, values)
    variables = [v for _, v in slots]
    tokens, labels = tf.constant(tokens), tf.constant(labels)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(tokens, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        grads = tape.gradient(loss, variables)
        for (name, var), g in zip(slots, grads):
            if g is None:
                raise ValueError(f"no gradient reaches {name}")
            var.assign_sub(learning_rate * tf.convert_to_tensor(g))
        return logits

    logits = [np.asarray(step()) for _ in range(steps)]
    return {"logits": logits, "weights": [np.asarray(v) for v in variables]}


# ---------------------------------------------------------------------------------------------------------------
# The backward pass of the NumPy reference (reference_lstm, in reference_recurrent.py)
# ---------------------------------------------------------------------------------------------------------------


def reference_gradients(weights, tokens, states, dlogits):
    """The gradient of sum(logits * dlogits) with respect to every weight of the reference, by backpropagation
    through time (NumPy, float64), as a list in the order of `flat_weights`."""
    _, _, layers = reference_lstm(weights, tokens, states)
    top = np.stack(layers[-1][1][1:], axis=1)  # (B, T, H)
    dlogits = np.asarray(dlogits, np.float64)
    grads_out = [np.einsum("bth,btv->hv", top, dlogits), dlogits.sum(axis=(0, 1))]
    dx = dlogits @ np.asarray(weights["output_kernel"], np.float64).T  # (B, T, H)
    grads_cells = []
    for cell, (inputs, hs, cs) in reversed(list(zip(weights["cells"], layers))):
        kernel, recurrent = np.asarray(cell["kernel"], np.float64), np.asarray(cell["recurrent_kernel"], np.float64)
        g = {n: np.zeros(np.shape(cell[n])) for n in CELL_WEIGHTS}
        dinputs, dh, dc = np.zeros(inputs.shape), np.zeros(hs[0].shape), np.zeros(cs[0].shape)
        for t in reversed(range(inputs.shape[1])):
            z = inputs[:, t] @ kernel + hs[t] @ recurrent + cell["bias"]
            i, f, gg, o = np.split(z, 4, axis=-1)
            i, f, gg, o = sigmoid(i), sigmoid(f), np.tanh(gg), sigmoid(o)
            tanh_c = np.tanh(cs[t + 1])
            dh = dh + dx[:, t]
            dc = dc + dh * o * (1.0 - tanh_c**2)
            dz = np.concatenate(
                [dc * gg * i * (1 - i), dc * cs[t] * f * (1 - f), dc * i * (1 - gg**2), dh * tanh_c * o * (1 - o)],
                axis=-1,
            )  # (B, 4H)
            g["kernel"] += inputs[:, t].T @ dz
            g["recurrent_kernel"] += hs[t].T @ dz
            g["bias"] += dz.sum(axis=0)
            dinputs[:, t] = dz @ kernel.T
            dh, dc = dz @ recurrent.T, dc * f
        grads_cells.insert(0, [g[n] for n in CELL_WEIGHTS])
        dx = dinputs
    d_embedding = np.zeros(np.shape(weights["embedding"]))
    np.add.at(d_embedding, tokens, dx)
    return [d_embedding] + [g for cell in grads_cells for g in cell] + grads_out


def assert_states_close(result, expected, what, reference):
    """Compares two states in the documented format (a list of (h, c) pairs), h and c of each layer apart."""
    states = result["states"]
    assert result["states_type"] in STATE_TYPES and len(states) == len(expected), (
        f"expected {what} as a list of {len(expected)} (h, c) pairs, one per layer; got {result['states_type']}"
        + (f" of length {len(states)}" if isinstance(states, list) else "")
    )
    for i, (pair, (h, c)) in enumerate(zip(states, expected)):
        assert result["pair_types"][i] in STATE_TYPES and len(pair) == 2, (
            f"expected {what}[{i}] as a pair (h, c), got {result['pair_types'][i]}"
        )
        assert_close(pair[0], h, f"{what}[{i}] h (reference: {reference})")
        assert_close(pair[1], c, f"{what}[{i}] c (reference: {reference})")


def _run(student, calls, num_layers=1, weights=None):
    weights = lstm_weights(num_layers) if weights is None else weights
    values = flat_weights(weights)[1]
    session = student.run(lm_session, (V, E, H), num_layers, values, calls, uses=(assign_exactly, weight_slots))
    assert_weights_kept(session["weights"], weights)
    return session, weights


def _cell_output(output, batch, what):
    """(h_t, c_t) of what LSTMCell returned, checked to be a pair of (batch, H) arrays."""
    assert output["type"] in STATE_TYPES and len(output["value"]) == 2, (
        f"expected LSTMCell to return the pair (h_t, c_t){what}, got {output['type']}"
    )
    h_t, c_t = output["value"]
    assert_shape(h_t, (batch, H), f"h_t returned by LSTMCell{what}")
    assert_shape(c_t, (batch, H), f"c_t returned by LSTMCell{what}")
    return h_t, c_t


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "lstm.LSTMCell: split in Keras' order, input, forget, cell, output",
    "lstm.LSTMCell: c_t = f * c_prev + i * g",
    "lstm.LSTMCell: h_t = o * tanh(c_t)",
    "lstm.LSTMCell: kernel: `(D, 4H)`, W, the input weights of the four gates side by side (i, f, g, o).",
    "lstm.LSTMCell: recurrent_kernel: `(H, 4H)`, U, the recurrent weights in the same order.",
    "lstm.LSTMCell: `(h_t, c_t)`: two float tensors of shape `(B, H)`.",
    "lstm.LSTMCell: x_t: float tensor of shape `(B, D)`, the input at one time step.",
)
def test_cell_matches_keras_lstm_cell(student):
    x_t, h_prev, c_prev = draw_normal((B, E), seed=2), draw_normal((B, H), seed=3), draw_normal((B, H), seed=4)
    w = lstm_weights()["cells"][0]
    values = [w[n] for n in CELL_WEIGHTS]
    calls = [(x_t, h_prev, c_prev), (x_t[:1], h_prev[:1], c_prev[:1])]  # the whole batch, then a batch of one
    out = student.run(lstm_cell_session, H, values, calls, uses=(assign_exactly,))
    assert_weights_kept(out["weights"], (list(CELL_WEIGHTS), values), "LSTMCell")
    for (x, h, c), output, what in zip(calls, out["outputs"], ("", " for a batch of one")):
        h_t, c_t = _cell_output(output, x.shape[0], what)
        h_expected, c_expected = reference_cell(x, h, c, w["kernel"], w["recurrent_kernel"], w["bias"])
        reference = "the LSTM equations of keras.layers.LSTMCell, gates i, f, g, o"
        assert_close(c_t, c_expected, f"c_t{what} (reference: {reference})")
        assert_close(h_t, h_expected, f"h_t{what} (reference: {reference})")


@pytest.mark.points(1)
@pytest.mark.clause("lstm.LSTMCell: the forget-gate quarter `bias[H:2H]` starts at 1")
def test_fresh_cell_keeps_its_memory_through_the_forget_gate(student):
    # A fresh cell's bias is [0 | 1 | 0 | 0] (i, f, g, o). With x_t = 0 and h_prev = 0 every gate sees only its bias:
    # i = o = sigmoid(0), g = tanh(0) = 0 and f = sigmoid(1), so c_t = sigmoid(1) * c_prev, h_t = tanh(c_t) / 2.
    c_prev = draw_normal((B, H), seed=5, scale=1.0)
    zeros_x, zeros_h = np.zeros((B, E), np.float32), np.zeros((B, H), np.float32)
    out = student.run(lstm_cell_session, H, None, [(zeros_x, zeros_h, c_prev)], uses=(assign_exactly,))
    fresh_bias = out["weights"][2]
    expected_bias = np.concatenate([np.zeros(H), np.ones(H), np.zeros(2 * H)])
    assert_close(fresh_bias, expected_bias, "the bias of a fresh LSTMCell (expected [0 | 1 | 0 | 0]: i, f, g, o)")
    h_t, c_t = _cell_output(out["outputs"][0], B, " for a fresh cell")
    c_expected = sigmoid(1.0) * c_prev.astype(np.float64)
    assert_close(
        c_t,
        c_expected,
        "c_t of a fresh LSTMCell with x_t = 0 and h_prev = 0 (expected sigmoid(1) * c_prev: "
        "the forget gate is the 2nd quarter of z and its bias starts at 1)",
    )
    assert_close(
        h_t,
        0.5 * np.tanh(c_expected),
        "h_t of a fresh LSTMCell with x_t = 0 and h_prev = 0 (expected sigmoid(0) * tanh(c_t))",
    )
    # The same cell code with the test's weights, whose forget quarter is not 1: the bias must be read, not assumed.
    w = _fresh_weights()["cells"][0]
    w = {**w, "bias": draw_normal((4 * H,), seed=6)}
    values = [w[n] for n in CELL_WEIGHTS]
    out = student.run(lstm_cell_session, H, values, [(zeros_x, zeros_h, c_prev)], uses=(assign_exactly,))
    assert_weights_kept(out["weights"], (list(CELL_WEIGHTS), values), "LSTMCell")
    h_t, c_t = _cell_output(out["outputs"][0], B, " with the test's weights")
    h_expected, c_expected = reference_cell(zeros_x, zeros_h, c_prev, w["kernel"], w["recurrent_kernel"], w["bias"])
    assert_close(c_t, c_expected, "c_t with x_t = 0, h_prev = 0 and the test's bias (reference: the LSTM equations)")
    assert_close(h_t, h_expected, "h_t with x_t = 0, h_prev = 0 and the test's bias (reference: the LSTM equations)")


@pytest.mark.points(1)
def test_logits_and_states_have_documented_shapes(student):
    tokens = draw_tokens()
    weights = lstm_weights(num_layers=2)
    out = student.run(lstm_shapes, (V, E, H), flat_weights(weights)[1], tokens, uses=(assign_exactly, weight_slots))
    assert_weights_kept(out["weights"], weights)
    assert_shape(out["logits"], (B, T, V), "logits")
    assert_shape(out["logits_too"], (B, T, V), "logits with return_state=True")
    states = out["states"]
    assert out["states_type"] in STATE_TYPES and len(states) == 2, (
        f"expected the final states as a list with one (h, c) pair per layer (2 layers), got {out['states_type']}"
        + (f" of length {len(states)}" if isinstance(states, list) else "")
    )
    for i, pair in enumerate(states):
        assert out["pair_types"][i] in STATE_TYPES and len(pair) == 2, f"expected states[{i}] as a pair (h, c)"
        assert_shape(pair[0], (B, H), f"final states[{i}] h")
        assert_shape(pair[1], (B, H), f"final states[{i}] c")
    zeros = [(np.zeros((B, H)), np.zeros((B, H)))] * 2
    initial = {"states": out["initial"], "states_type": out["initial_type"], "pair_types": out["initial_pair_types"]}
    assert_states_close(initial, zeros, "get_initial_state(B)", "zeros")
    expected_logits, expected_states, _ = reference_lstm(weights, tokens)
    reference = "two stacked LSTMs with the same weights, from zeros"
    assert_close(out["logits"], expected_logits, f"logits (reference: {reference})")
    assert_close(out["logits_too"], expected_logits, f"logits with return_state=True (reference: {reference})")
    assert_states_close(out, expected_states, "final states", reference)
    assert_close(out["from_initial"], expected_logits, f"logits when starting from get_initial_state ({reference})")
    assert_close(out["rebuilt"], expected_logits, f"logits of a model rebuilt with from_config ({reference})")


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "lstm.lstm_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, after reading `inputs[:,",
    "lstm.lstm_forward: state: pair `(h0, c0)`, two float tensors of shape `(B, H)`, the state before the first",
    "lstm.lstm_forward: inputs: float tensor of shape `(B, T, D)`.",
)
def test_sequence_matches_keras_lstm(student):
    tokens = draw_tokens()
    start = random_states()  # a non-zero start, so the initial state has to be used
    one = [(h[:1], c[:1]) for h, c in start]
    calls = [
        {"tokens": tokens, "states": start, "return_state": True},
        {"tokens": tokens[:1], "states": one, "return_state": True},  # a batch of one
    ]
    session, weights = _run(student, calls)
    for i, (batch, begin, what) in enumerate(((B, start, ""), (1, one, " for a batch of one"))):
        result = session_result(session, i, f"model(tokens, states=start, return_state=True){what}")
        assert_shape(result["logits"], (batch, T, V), f"logits{what}")
        expected_logits, expected_states, _ = reference_lstm(weights, tokens[:batch], begin)
        reference = "an LSTM with the same weights"
        assert_states_close(result, expected_states, f"final states{what}", reference)
        assert_close(result["logits"], expected_logits, f"logits{what} (reference: {reference})")


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "lstm.lstm_forward: last_state: pair `(h_T, c_T)`, two float tensors of shape `(B, H)`, the state after the last",
    "lstm.lstm_forward: state: pair `(h0, c0)`, two float tensors of shape `(B, H)`, the state before the first",
)
def test_carrying_state_across_two_chunks_equals_one_pass(student):
    tokens = draw_tokens(time=8)
    session, weights = _run(
        student,
        [{"tokens": tokens, "return_state": True}, {"tokens": tokens[:, :3], "return_state": True}],
    )
    whole = session_result(session, 0, "one pass")
    first = session_result(session, 1, "the first chunk")
    session, _ = _run(student, [{"tokens": tokens[:, 3:], "states": first["states"], "return_state": True}])
    second = session_result(session, 0, "the second chunk, from the first chunk's final state")
    assert_shape(whole["logits"], (B, 8, V), "logits of one pass")
    assert_shape(first["logits"], (B, 3, V), "logits of the first chunk")
    assert_shape(second["logits"], (B, 5, V), "logits of the second chunk")
    expected_logits, expected_states, _ = reference_lstm(weights, tokens)
    reference = "an LSTM with the same weights, one pass over both chunks"
    assert_close(whole["logits"], expected_logits, f"logits of one pass (reference: {reference})")
    assert_states_close(whole, expected_states, "final states of one pass", reference)
    assert_close(first["logits"], expected_logits[:, :3], f"logits of the first chunk (reference: {reference})")
    assert_close(
        second["logits"],
        expected_logits[:, 3:],
        f"logits of the second chunk, started from the first chunk's final state (reference: {reference})",
    )
    assert_states_close(second, expected_states, "final states after two chunks", reference)


@pytest.mark.points(0.5)
def test_later_token_never_changes_earlier_logits(student):
    tokens = draw_tokens()
    k = 3
    changed = tokens.copy()
    changed[:, k] = (changed[:, k] + 1) % V
    session, weights = _run(student, [{"tokens": tokens}, {"tokens": changed}])
    logits, logits_changed = (
        session_result(session, 0, "model")["logits"],
        session_result(session, 1, "model")["logits"],
    )
    assert_shape(logits, (B, T, V), "logits")
    assert_shape(logits_changed, (B, T, V), "logits after changing one token")
    assert_close(
        logits_changed[:, :k],
        logits[:, :k],
        f"logits at positions < {k} after changing the token at "
        f"position {k} (they must not change: position t may only read tokens 0..t)",
        atol=1e-6,
    )
    for got, ids, what in ((logits, tokens, ""), (logits_changed, changed, f" after changing the token at {k}")):
        assert_close(got, reference_lstm(weights, ids)[0], f"logits{what} (reference: an LSTM, same weights)")


@pytest.mark.points(0.5)
def test_gradients_reach_every_trainable_weight(student):
    weights = lstm_weights(num_layers=2)
    tokens = draw_tokens(seed=5)
    states = random_states(num_layers=2, seed=6)
    cotangent = draw_normal((B, T, V), seed=10, scale=1.0)
    out = student.run(
        lm_gradients,
        (V, E, H),
        2,
        flat_weights(weights)[1],
        tokens,
        states,
        cotangent,
        uses=(assign_exactly, weight_slots),
    )
    expected_logits, _, _ = reference_lstm(weights, tokens, states)
    assert_close(out["logits"], expected_logits, "logits in training mode (reference: two stacked LSTMs)")
    names = flat_weights(weights)[0]
    assert len(out["gradients"]) == len(names), f"expected a gradient for each of {names}"
    for name, got, expected in zip(names, out["gradients"], reference_gradients(weights, tokens, states, cotangent)):
        assert got is not None, (
            f"no gradient reaches {name}: is the weight used, and does every op between it and the logits keep "
            "the tape connected?"
        )
        assert_close(
            got,
            expected,
            f"gradient of sum(logits * G) with respect to {name} (reference: backpropagation through time in NumPy)",
            atol=1e-4,
            rtol=1e-4,
        )


@pytest.mark.points(0.5)
def test_initial_loss_is_about_log_vocab(student):
    # A model holding freshly initialised weights knows nothing: its predictions are close to uniform.
    weights = _fresh_weights()
    tokens, labels = draw_tokens(seed=7), draw_tokens(seed=8)
    session, _ = _run(student, [{"tokens": tokens}], weights=weights)
    logits = session_result(session, 0, "model(tokens)")["logits"]
    assert_shape(logits, (B, T, V), "logits")
    assert_close(logits, reference_lstm(weights, tokens)[0], "logits of a fresh model (reference: an LSTM)")
    loss, _ = cross_entropy(logits, labels)
    assert abs(loss - math.log(V)) < 0.1, (
        f"a freshly initialised model should predict about uniformly, with loss ~ ln(V) = {math.log(V):.3f}; "
        f"got {loss:.3f}"
    )


@pytest.mark.points(1.5)
def test_training_steps_match_reference_gradient_descent(student):
    # Training runs the model inside tf.function with gradients from the tape: three steps of plain gradient
    # descent on one batch must move every weight as the reference's own gradients do.
    weights = lstm_weights(scale=0.3)
    sequence = np.random.default_rng(9).integers(0, V, size=(2, 11)).astype(np.int32)
    tokens, labels = sequence[:, :-1], sequence[:, 1:]
    rate, steps = 0.5, 3
    values = flat_weights(weights)[1]
    out = student.run(
        lm_training_steps, (V, E, H), values, tokens, labels, rate, steps, uses=(assign_exactly, weight_slots)
    )
    names, current = flat_weights(weights)
    current = [np.asarray(w, np.float64) for w in current]
    for k in range(steps):
        model = unflat_weights(current, 1)
        expected = reference_lstm(model, tokens)[0]
        assert_close(out["logits"][k], expected, f"logits of training step {k + 1} (reference: an LSTM)", atol=1e-4)
        _, dlogits = cross_entropy(expected, labels)
        grads = reference_gradients(model, tokens, None, dlogits)
        current = [w - rate * g for w, g in zip(current, grads)]
    for name, got, expected in zip(names, out["weights"], current):
        assert_close(
            got,
            expected,
            f"{name} after {steps} steps of gradient descent (reference: the same steps with the gradients of "
            "backpropagation through time in NumPy)",
            atol=1e-4,
            rtol=1e-4,
        )
