"""Part 2a (8 points with the hidden tests): RNNCell, rnn_forward and RNNLanguageModel.

Every number a verdict uses is computed here, from data this test owns: the test draws every weight and every input,
a probe gives those weights to the student's layer (which must hold exactly its documented weights) and sends back
only raw outputs and the weights read back, and the expected values come from a NumPy reference of a simple RNN
(h_t = tanh(x_t W + h_{t-1} U + b), the equation of Keras' `SimpleRNNCell`) holding the same weights; gradients are
checked against the reference's own backpropagation through time. Properties (shapes, state carried across chunks,
no peeking at later tokens) are checked together with the reference in the same test. Sizes are tiny and all
different (V=11, E=7, H=5), so a transposed weight or a swapped axis shows up as a shape. The sizes, the weights
the test draws, the helpers sent with the probes and the forward reference are shared with the LSTM's tests
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
    reference_rnn,
    rnn_weights,
    session_result,
    unflat_weights,
    weight_slots,
)


def _fresh_weights(num_layers=1, seed=2):
    """Weights drawn as the documented initialisers draw them: Embedding uniform(-0.05, 0.05), glorot-uniform
    kernels, orthogonal recurrent kernels, zero biases."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in, fan_out):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)

    cells = [
        {
            "kernel": glorot(E if i == 0 else H, H),
            "recurrent_kernel": np.linalg.qr(rng.normal(size=(H, H)))[0].astype(np.float32),
            "bias": np.zeros(H, np.float32),
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
    """Probe: an RNNLanguageModel(V, E, H, num_layers) given exactly the test's weights `values` (in the order of
    weight_slots); runs each call of `calls` (a dict: tokens, states, return_state) and returns each call's raw
    output or exception, and the weights read back."""
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    vocab, embed, hidden = sizes
    model = rnn.RNNLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((2, 1), tf.int32))  # builds the weights
    slots = weight_slots(model)
    assign_exactly(model, slots, values)
    results = []
    for call in calls:
        tokens = tf.constant(call["tokens"], tf.int32)
        states = call.get("states")
        states = None if states is None else [tf.constant(h, tf.float32) for h in states]
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
                    "states": [np.asarray(h) for h in states]
                    if isinstance(states, list | tuple)
                    else np.asarray(states),
                    "states_type": type(states).__name__,
                }
            )
        else:
            results.append({"logits": np.asarray(out)})
    return {"weights": [np.asarray(v) for _, v in slots], "results": results}


def rnn_cell_session(units, values, calls):
    """Probe: an RNNCell(units) built by its first call, given exactly the test's weights `values` (kernel,
    recurrent_kernel, bias); returns h_t for each (x_t, h_prev) of `calls` and the weights read back."""
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    cell = rnn.RNNCell(units)
    cell(tf.constant(calls[0][0]), tf.constant(calls[0][1]))  # builds the weights
    slots = [(name, getattr(cell, name)) for name in ("kernel", "recurrent_kernel", "bias")]
    assign_exactly(cell, slots, values)
    outputs = [np.asarray(cell(tf.constant(x_t), tf.constant(h_prev))) for x_t, h_prev in calls]
    return {"outputs": outputs, "weights": [np.asarray(v) for _, v in slots]}


def lm_shapes(sizes, values, tokens):
    """Probe: what a 2-layer RNNLanguageModel holding the test's weights returns: logits, final states, initial
    states, and the logits of a model rebuilt with from_config and given the same weights."""
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    vocab, embed, hidden = sizes
    model = rnn.RNNLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=2)
    tokens = tf.constant(tokens)
    model(tokens)
    assign_exactly(model, weight_slots(model), values)
    logits = model(tokens)
    logits_too, states = model(tokens, return_state=True)
    initial = model.get_initial_state(tokens.shape[0])
    rebuilt = rnn.RNNLanguageModel.from_config(model.get_config())
    rebuilt(tokens)
    assign_exactly(rebuilt, weight_slots(rebuilt), values)
    return {
        "logits": np.asarray(logits),
        "logits_too": np.asarray(logits_too),
        "states_type": type(states).__name__,
        "states": [np.asarray(h) for h in states] if isinstance(states, list | tuple) else np.asarray(states),
        "initial": [np.asarray(h) for h in initial],
        "from_initial": np.asarray(model(tokens, states=initial)),
        "rebuilt": np.asarray(rebuilt(tokens)),
        "weights": [np.asarray(v) for _, v in weight_slots(model)],
    }


def lm_gradients(sizes, num_layers, values, tokens, states, cotangent):
    """Probe: an RNNLanguageModel holding the test's weights, called in training mode from `states`; returns its
    raw logits and the raw gradient of sum(logits * cotangent) with respect to each weight (in the order of
    weight_slots; None where the tape finds no path to the weight)."""
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    vocab, embed, hidden = sizes
    model = rnn.RNNLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((2, 1), tf.int32))
    slots = weight_slots(model)
    assign_exactly(model, slots, values)
    with tf.GradientTape() as tape:
        logits = model(tf.constant(tokens), states=[tf.constant(h) for h in states], training=True)
    grads = tape.gradient(logits, [v for _, v in slots], output_gradients=tf.constant(cotangent))
    return {
        "logits": np.asarray(logits),
        "gradients": [None if g is None else np.asarray(tf.convert_to_tensor(g)) for g in grads],
    }


def lm_training_steps(sizes, values, tokens, labels, learning_rate, steps):
    """Probe: `steps` steps of plain gradient descent on the mean cross-entropy of a 1-layer RNNLanguageModel
    holding the test's weights, each step compiled with tf.function and run in training mode; returns the raw logits
    of each step (before its update) and the weights read back after the last one."""
    import keras
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    vocab, embed, hidden = sizes
    model = rnn.RNNLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=1)
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
# The backward pass of the NumPy reference (reference_rnn, in reference_recurrent.py)
# ---------------------------------------------------------------------------------------------------------------


def reference_gradients(weights, tokens, states, dlogits):
    """The gradient of sum(logits * dlogits) with respect to every weight of the reference, by backpropagation
    through time (NumPy, float64), as a list in the order of `flat_weights`."""
    _, _, layers = reference_rnn(weights, tokens, states)
    top = np.stack(layers[-1][1][1:], axis=1)  # (B, T, H)
    dlogits = np.asarray(dlogits, np.float64)
    grads_out = [np.einsum("bth,btv->hv", top, dlogits), dlogits.sum(axis=(0, 1))]
    dx = dlogits @ np.asarray(weights["output_kernel"], np.float64).T  # (B, T, H)
    grads_cells = []
    for cell, (inputs, hs) in reversed(list(zip(weights["cells"], layers))):
        g = {n: np.zeros(np.shape(cell[n])) for n in CELL_WEIGHTS}
        dinputs, dh = np.zeros(inputs.shape), np.zeros(hs[0].shape)
        for t in reversed(range(inputs.shape[1])):
            da = (dh + dx[:, t]) * (1.0 - hs[t + 1] ** 2)  # (B, H)
            g["kernel"] += inputs[:, t].T @ da
            g["recurrent_kernel"] += hs[t].T @ da
            g["bias"] += da.sum(axis=0)
            dinputs[:, t] = da @ np.asarray(cell["kernel"], np.float64).T
            dh = da @ np.asarray(cell["recurrent_kernel"], np.float64).T
        grads_cells.insert(0, [g[n] for n in CELL_WEIGHTS])
        dx = dinputs
    d_embedding = np.zeros(np.shape(weights["embedding"]))
    np.add.at(d_embedding, tokens, dx)
    return [d_embedding] + [g for cell in grads_cells for g in cell] + grads_out


def _run(student, calls, num_layers=1, weights=None):
    weights = rnn_weights(num_layers) if weights is None else weights
    session = student.run(
        lm_session, (V, E, H), num_layers, flat_weights(weights)[1], calls, uses=(assign_exactly, weight_slots)
    )
    assert_weights_kept(session["weights"], weights)
    return session, weights


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.clause(
    "rnn.RNNCell: returns `h_t = tanh(x_t W + h_prev U + b)`",
    "rnn.RNNCell: kernel: `(D, H)`, W, applied to the input.",
    "rnn.RNNCell: recurrent_kernel: `(H, H)`, U, applied to the previous hidden state.",
    "rnn.RNNCell: bias: `(H,)`, b.",
    "rnn.RNNCell: h_t: float tensor of shape `(B, H)`.",
    "rnn.RNNCell: x_t: float tensor of shape `(B, D)`, the input at one time step.",
)
def test_cell_matches_keras_simple_rnn_cell(student):
    x_t, h_prev = draw_normal((B, E), seed=2), draw_normal((B, H), seed=3)
    w = rnn_weights()["cells"][0]
    values = [w[n] for n in CELL_WEIGHTS]
    calls = [(x_t, h_prev), (x_t[:1], h_prev[:1])]  # the whole batch, then a batch of one
    out = student.run(rnn_cell_session, H, values, calls, uses=(assign_exactly,))
    assert_weights_kept(out["weights"], (["kernel", "recurrent_kernel", "bias"], values), "RNNCell")
    for (x, h), got, what in zip(calls, out["outputs"], ("", " for a batch of one")):
        assert_shape(got, (x.shape[0], H), f"h_t returned by RNNCell{what}")
        expected = np.tanh(x @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"])
        assert_close(got, expected, f"h_t{what} (reference: tanh(x_t W + h_prev U + b), as keras.layers.SimpleRNNCell)")


@pytest.mark.points(1)
def test_logits_and_states_have_documented_shapes(student):
    tokens = draw_tokens()
    weights = rnn_weights(num_layers=2)
    out = student.run(lm_shapes, (V, E, H), flat_weights(weights)[1], tokens, uses=(assign_exactly, weight_slots))
    assert_weights_kept(out["weights"], weights)
    assert_shape(out["logits"], (B, T, V), "logits")
    assert_shape(out["logits_too"], (B, T, V), "logits with return_state=True")
    states = out["states"]
    assert out["states_type"] in ("list", "tuple", "ListWrapper") and len(states) == 2, (
        f"expected the final states as a list with one entry per layer (2 layers), got {out['states_type']}"
        + (f" of length {len(states)}" if isinstance(states, list) else "")
    )
    for i, h in enumerate(states):
        assert_shape(h, (B, H), f"final states[{i}]")
    initial = out["initial"]
    assert len(initial) == 2, f"expected get_initial_state to give one state per layer (2), got {len(initial)}"
    for i, h in enumerate(initial):
        assert_shape(h, (B, H), f"get_initial_state(B)[{i}]")
        assert_close(h, np.zeros((B, H)), f"get_initial_state(B)[{i}]")
    expected_logits, expected_states, _ = reference_rnn(weights, tokens)
    reference = "two stacked simple RNNs with the same weights, from zeros"
    assert_close(out["logits"], expected_logits, f"logits (reference: {reference})")
    assert_close(out["logits_too"], expected_logits, f"logits with return_state=True (reference: {reference})")
    for i, h in enumerate(expected_states):
        assert_close(states[i], h, f"final states[{i}] (reference: {reference})")
    assert_close(out["from_initial"], expected_logits, f"logits when starting from get_initial_state ({reference})")
    assert_close(out["rebuilt"], expected_logits, f"logits of a model rebuilt with from_config ({reference})")


@pytest.mark.points(1)
@pytest.mark.clause(
    "rnn.rnn_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, the state after reading",
    "rnn.rnn_forward: h0: float tensor of shape `(B, H)`, the hidden state before the first step.",
    "rnn.rnn_forward: inputs: float tensor of shape `(B, T, D)`.",
)
def test_sequence_matches_keras_simple_rnn(student):
    tokens = draw_tokens()
    h0 = draw_normal((B, H), seed=4)  # a non-zero start, so the initial state has to be used
    calls = [
        {"tokens": tokens, "states": [h0], "return_state": True},
        {"tokens": tokens[:1], "states": [h0[:1]], "return_state": True},  # a batch of one
    ]
    session, weights = _run(student, calls)
    for i, (batch, what) in enumerate(((B, ""), (1, " for a batch of one"))):
        result = session_result(session, i, f"model(tokens, states=[h0], return_state=True){what}")
        assert_shape(result["logits"], (batch, T, V), f"logits{what}")
        expected_logits, expected_states, _ = reference_rnn(weights, tokens[:batch], [h0[:batch]])
        reference = "a simple RNN with the same weights"
        assert_close(result["states"][0], expected_states[0], f"final state h_T{what} (reference: {reference})")
        assert_close(result["logits"], expected_logits, f"logits{what} (reference: {reference})")


@pytest.mark.points(1)
@pytest.mark.clause(
    "rnn.rnn_forward: h_last: float tensor of shape `(B, H)`, the state after the last step (equal to `outputs[:,",
    "rnn.rnn_forward: h0: float tensor of shape `(B, H)`, the hidden state before the first step.",
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
    expected_logits, expected_states, _ = reference_rnn(weights, tokens)
    reference = "a simple RNN with the same weights, one pass over both chunks"
    assert_close(whole["logits"], expected_logits, f"logits of one pass (reference: {reference})")
    assert_close(whole["states"][0], expected_states[0], f"final state of one pass (reference: {reference})")
    assert_close(first["logits"], expected_logits[:, :3], f"logits of the first chunk (reference: {reference})")
    assert_close(
        second["logits"],
        expected_logits[:, 3:],
        f"logits of the second chunk, started from the first chunk's final state (reference: {reference})",
    )
    assert_close(second["states"][0], expected_states[0], f"final state after two chunks (reference: {reference})")


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "rnn.rnn_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, the state after reading"
)
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
        assert_close(got, reference_rnn(weights, ids)[0], f"logits{what} (reference: a simple RNN, same weights)")


@pytest.mark.points(0.5)
def test_gradients_reach_every_trainable_weight(student):
    weights = rnn_weights(num_layers=2)
    tokens = draw_tokens(seed=5)
    states = [draw_normal((B, H), seed=6), draw_normal((B, H), seed=7)]
    cotangent = draw_normal((B, T, V), seed=8, scale=1.0)
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
    expected_logits, _, _ = reference_rnn(weights, tokens, states)
    assert_close(out["logits"], expected_logits, "logits in training mode (reference: two stacked simple RNNs)")
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
    assert_close(logits, reference_rnn(weights, tokens)[0], "logits of a fresh model (reference: a simple RNN)")
    loss, _ = cross_entropy(logits, labels)
    assert abs(loss - math.log(V)) < 0.1, (
        f"a freshly initialised model should predict about uniformly, with loss ~ ln(V) = {math.log(V):.3f}; "
        f"got {loss:.3f}"
    )


@pytest.mark.points(1)
def test_training_steps_match_reference_gradient_descent(student):
    # Training runs the model inside tf.function with gradients from the tape: three steps of plain gradient
    # descent on one batch must move every weight as the reference's own gradients do.
    weights = rnn_weights(scale=0.3)
    sequence = np.random.default_rng(9).integers(0, V, size=(2, 11)).astype(np.int32)
    tokens, labels = sequence[:, :-1], sequence[:, 1:]
    rate, steps = 0.5, 3
    out = student.run(
        lm_training_steps,
        (V, E, H),
        flat_weights(weights)[1],
        tokens,
        labels,
        rate,
        steps,
        uses=(assign_exactly, weight_slots),
    )
    names, current = flat_weights(weights)
    current = [np.asarray(w, np.float64) for w in current]
    for k in range(steps):
        model = unflat_weights(current, 1)
        expected = reference_rnn(model, tokens)[0]
        assert_close(
            out["logits"][k], expected, f"logits of training step {k + 1} (reference: a simple RNN)", atol=1e-4
        )
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
