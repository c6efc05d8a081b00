"""Part 2b (12 points with the hidden tests): LSTMCell, lstm_forward and LSTMLanguageModel.

The cell and the whole sequence are compared with a NumPy reference of the LSTM equations of Keras' `LSTMCell`
(gate order input, forget, cell, output) computed from the weights the student's model holds; the model is checked
for invariants (state carried across chunks, no peeking at later tokens) and for the usual sanity checks of a fresh
language model (loss about ln V, gradients everywhere, a tiny batch overfits). Sizes are tiny and all different
(V=11, E=7, H=5, 4H=20), so a transposed weight or a swapped axis shows up as a shape.
"""

import math

import numpy as np
import pytest
from checks import assert_close, assert_shape

V, E, H = 11, 7, 5  # vocabulary, embedding width, hidden units
B, T = 3, 6  # batch, time
STATE_TYPES = ("list", "tuple", "ListWrapper", "_TupleWrapper")


def _tokens(batch=B, time=T, seed=0):
    """Returns int32 token ids of shape (batch, time)."""
    return np.random.default_rng(seed).integers(0, V, size=(batch, time)).astype(np.int32)


def _normal(shape, seed, scale=0.5):
    return np.random.default_rng(seed).normal(0.0, scale, size=shape).astype(np.float32)


def _random_states(num_layers=1, seed=4):
    """Returns a non-zero state in the documented format: a list of (h, c) pairs of shape (B, H)."""
    return [(_normal((B, H), seed + 2 * i), _normal((B, H), seed + 2 * i + 1)) for i in range(num_layers)]


# ---------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return plain data (see grading/runtime/probes.py)
# ---------------------------------------------------------------------------------------------------------------


def lm_session(module, class_name, sizes, num_layers, weight_seed, calls):
    """Probe: builds assignment.<module>.<class_name>(V, E, H, num_layers), gives every weight (biases included)
    random values drawn with `weight_seed` (None keeps the initial ones), then runs each call of `calls` (a dict:
    tokens, states, return_state, dtype) and returns the model's weights and each call's output or exception."""
    import importlib

    import numpy as np
    import tensorflow as tf

    vocab, embed, hidden = sizes
    cls = getattr(importlib.import_module(f"assignment.{module}"), class_name)
    model = cls(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    model(tf.zeros((1, 1), tf.int32))  # builds the weights
    if weight_seed is not None:
        rng = np.random.default_rng(weight_seed)
        for w in model.weights:
            w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))

    def plain(x):
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        return np.asarray(x)

    def tensors(x):
        if x is None:
            return None
        return [tuple(tf.constant(s, tf.float32) for s in pair) for pair in x]  # a list of (h, c) pairs

    results = []
    for call in calls:
        tokens = tf.constant(call["tokens"], call.get("dtype", "int32"))
        try:
            out = model(tokens, states=tensors(call.get("states")), return_state=call.get("return_state", False))
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


def lstm_cell_session(units, x_t, h_prev, c_prev, weight_seed):
    """Probe: an LSTMCell(units) called on (x_t, (h_prev, c_prev)) as built, then again after its weights get random
    values (None: only the fresh call); returns the weight shapes, what each call returned and the weights."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    cell = lstm.LSTMCell(units)
    x_t, state = tf.constant(x_t), (tf.constant(h_prev), tf.constant(c_prev))
    first = cell(x_t, state)
    names = ("kernel", "recurrent_kernel", "bias")
    out = {
        "shapes": {name: tuple(getattr(cell, name).shape) for name in names},
        "first_type": type(first).__name__,
        "first": [np.asarray(v) for v in first] if isinstance(first, list | tuple) else np.asarray(first),
    }
    if weight_seed is not None:
        rng = np.random.default_rng(weight_seed)
        for w in cell.weights:
            w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))
        h_t, c_t = cell(x_t, state)
        out.update(h_t=np.asarray(h_t), c_t=np.asarray(c_t))
    out["weights"] = {name: np.asarray(getattr(cell, name)) for name in names}
    return out


def lstm_shapes(sizes, tokens):
    """Probe: what a 2-layer LSTMLanguageModel returns: logits, final states, initial states, from_config."""
    import numpy as np
    import tensorflow as tf

    from assignment import lstm

    vocab, embed, hidden = sizes
    model = lstm.LSTMLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=2)
    tokens = tf.constant(tokens)
    logits = model(tokens)
    logits_too, states = model(tokens, return_state=True)
    initial = model.get_initial_state(tokens.shape[0])

    def pairs(states):
        if not isinstance(states, list | tuple):
            return np.asarray(states)
        return [[np.asarray(v) for v in p] if isinstance(p, list | tuple) else np.asarray(p) for p in states]

    rebuilt = lstm.LSTMLanguageModel.from_config(model.get_config())
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
    }


def lm_training_checks(module, class_name, sizes, num_layers, tokens, labels, what):
    """Probe: `what` = "gradients" (each trainable weight's path and gradient norm, None when no gradient) or
    "loss" (the mean cross-entropy of a fresh model) or "overfit" (first and last loss of up to 300 Adam steps)."""
    import importlib

    import keras
    import tensorflow as tf

    vocab, embed, hidden = sizes
    cls = getattr(importlib.import_module(f"assignment.{module}"), class_name)
    model = cls(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=num_layers)
    tokens, labels = tf.constant(tokens), tf.constant(labels)
    model(tokens)

    def loss_of():
        logits = model(tokens, training=True)
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

    if what == "gradients":
        with tf.GradientTape() as tape:
            loss = loss_of()
        grads = tape.gradient(loss, model.trainable_weights)
        return [
            (w.path, None if g is None else float(tf.norm(tf.convert_to_tensor(g))))
            for w, g in zip(model.trainable_weights, grads)
        ]
    if what == "loss":
        return float(loss_of())
    optimizer = keras.optimizers.Adam(0.02)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of()
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
        return loss

    first = loss = float(step())
    for _ in range(300):
        loss = float(step())
        if loss < 0.05:
            break
    return first, loss


# ---------------------------------------------------------------------------------------------------------------
# The NumPy reference
# ---------------------------------------------------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_cell(x_t, h, c, kernel, recurrent_kernel, bias):
    """One LSTM step as Keras' LSTMCell computes it: z = x W + h U + b split into gates i, f, g, o."""
    z = x_t @ kernel + h @ recurrent_kernel + bias  # (B, 4H)
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def reference_lstm(weights, tokens, states):
    """Returns (logits, final states) of stacked LSTM layers holding `weights` (NumPy, float64)."""
    x = np.asarray(weights["embedding"], np.float64)[tokens]  # (B, T, E)
    final = []
    for cell, (h, c) in zip(weights["cells"], states):
        h, c = np.asarray(h, np.float64), np.asarray(c, np.float64)
        outputs = []
        for t in range(x.shape[1]):
            h, c = reference_cell(x[:, t], h, c, cell["kernel"], cell["recurrent_kernel"], cell["bias"])
            outputs.append(h)
        x = np.stack(outputs, axis=1)  # (B, T, H)
        final.append((h, c))
    return x @ weights["output_kernel"] + weights["output_bias"], final  # (B, T, V)


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


def _run(student, calls, num_layers=1, weight_seed=1):
    return student.run(lm_session, "lstm", "LSTMLanguageModel", (V, E, H), num_layers, weight_seed, calls)


def _result(session, i, what):
    result = session["results"][i]
    assert "error" not in result, f"{what} raised {result.get('error')}: {result.get('message')}"
    return result


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
)
def test_cell_matches_keras_lstm_cell(student):
    x_t, h_prev, c_prev = _normal((B, E), seed=2), _normal((B, H), seed=3), _normal((B, H), seed=4)
    out = student.run(lstm_cell_session, H, x_t, h_prev, c_prev, 1)
    assert_shape(np.zeros(out["shapes"]["kernel"]), (E, 4 * H), "LSTMCell.kernel")
    assert_shape(np.zeros(out["shapes"]["recurrent_kernel"]), (H, 4 * H), "LSTMCell.recurrent_kernel")
    assert_shape(np.zeros(out["shapes"]["bias"]), (4 * H,), "LSTMCell.bias")
    assert out["first_type"] in STATE_TYPES and len(out["first"]) == 2, (
        f"expected LSTMCell to return the pair (h_t, c_t), got {out['first_type']}"
    )
    assert_shape(out["first"][0], (B, H), "h_t returned by LSTMCell")
    assert_shape(out["first"][1], (B, H), "c_t returned by LSTMCell")
    w = out["weights"]
    h_expected, c_expected = reference_cell(x_t, h_prev, c_prev, w["kernel"], w["recurrent_kernel"], w["bias"])
    assert_close(
        out["c_t"], c_expected, "c_t (reference: the LSTM equations of keras.layers.LSTMCell, gates i, f, g, o)"
    )
    assert_close(
        out["h_t"], h_expected, "h_t (reference: the LSTM equations of keras.layers.LSTMCell, gates i, f, g, o)"
    )


@pytest.mark.points(1)
@pytest.mark.clause("lstm.LSTMCell: the forget-gate quarter `bias[H:2H]` starts at 1")
def test_fresh_cell_keeps_its_memory_through_the_forget_gate(student):
    # With x_t = 0 and h_prev = 0 every gate sees only its bias: i = o = sigmoid(0), g = tanh(0) = 0, and the
    # forget gate's bias starts at 1, so c_t = sigmoid(1) * c_prev and h_t = sigmoid(0) * tanh(c_t).
    c_prev = _normal((B, H), seed=5, scale=1.0)
    out = student.run(lstm_cell_session, H, np.zeros((B, E), np.float32), np.zeros((B, H), np.float32), c_prev, None)
    assert out["first_type"] in STATE_TYPES and len(out["first"]) == 2, (
        f"expected LSTMCell to return the pair (h_t, c_t), got {out['first_type']}"
    )
    h_t, c_t = out["first"]
    c_expected = _sigmoid(1.0) * c_prev.astype(np.float64)
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


@pytest.mark.points(1)
def test_logits_and_states_have_documented_shapes(student):
    out = student.run(lstm_shapes, (V, E, H), _tokens())
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
    assert_close(out["from_initial"], out["logits"], "logits when starting from get_initial_state (vs states=None)")
    assert_shape(out["rebuilt"], (B, T, V), "logits of a model rebuilt with from_config(get_config())")


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "lstm.lstm_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, after reading `inputs[:,",
    "lstm.lstm_forward: state: pair `(h0, c0)`, two float tensors of shape `(B, H)`, the state before the first",
)
def test_sequence_matches_keras_lstm(student):
    tokens = _tokens()
    start = _random_states()  # a non-zero start, so the initial state has to be used
    session = _run(student, [{"tokens": tokens, "states": start, "return_state": True}])
    result = _result(session, 0, "model(tokens, states=start, return_state=True)")
    assert_shape(result["logits"], (B, T, V), "logits")
    expected_logits, expected_states = reference_lstm(session["weights"], tokens, start)
    assert_states_close(result, expected_states, "final states", "an LSTM with the same weights")
    assert_close(result["logits"], expected_logits, "logits (reference: an LSTM with the same weights)")


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "lstm.lstm_forward: last_state: pair `(h_T, c_T)`, two float tensors of shape `(B, H)`, the state after the last",
    "lstm.lstm_forward: state: pair `(h0, c0)`, two float tensors of shape `(B, H)`, the state before the first",
)
def test_carrying_state_across_two_chunks_equals_one_pass(student):
    tokens = _tokens(time=8)
    session = _run(
        student,
        [{"tokens": tokens, "return_state": True}, {"tokens": tokens[:, :3], "return_state": True}],
    )
    whole = _result(session, 0, "one pass")
    first = _result(session, 1, "the first chunk")
    session = _run(student, [{"tokens": tokens[:, 3:], "states": first["states"], "return_state": True}])
    second = _result(session, 0, "the second chunk, from the first chunk's final state")
    assert_shape(first["logits"], (B, 3, V), "logits of the first chunk")
    assert_shape(second["logits"], (B, 5, V), "logits of the second chunk")
    assert_close(
        second["logits"],
        whole["logits"][:, 3:],
        "logits of the second chunk, started from the first chunk's final state "
        "(reference: the same positions in one pass over both chunks)",
    )
    assert_states_close(second, whole["states"], "final states after two chunks", "after one pass over both chunks")
    assert_close(first["logits"], whole["logits"][:, :3], "logits of the first chunk (reference: one pass)")


@pytest.mark.points(0.5)
def test_later_token_never_changes_earlier_logits(student):
    tokens = _tokens()
    k = 3
    changed = tokens.copy()
    changed[:, k] = (changed[:, k] + 1) % V
    session = _run(student, [{"tokens": tokens}, {"tokens": changed}])
    logits, logits_changed = _result(session, 0, "model")["logits"], _result(session, 1, "model")["logits"]
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
def test_gradients_reach_every_trainable_weight(student):
    grads = student.run(
        lm_training_checks, "lstm", "LSTMLanguageModel", (V, E, H), 2, _tokens(seed=5), _tokens(seed=6), "gradients"
    )
    assert len(grads) == 9, (
        f"expected 9 trainable weights (embedding, 3 per layer for 2 layers, output kernel and bias), "
        f"got {[path for path, _ in grads]}"
    )
    for path, norm in grads:
        assert norm is not None and norm > 0.0, (
            f"no gradient reaches {path} (gradient {'None' if norm is None else 'all zeros'}): "
            "is the weight used, and does every op between it and the loss keep the tape connected?"
        )


@pytest.mark.points(0.5)
def test_initial_loss_is_about_log_vocab(student):
    # A fresh model knows nothing: its predictions are close to uniform.
    loss = student.run(
        lm_training_checks, "lstm", "LSTMLanguageModel", (V, E, H), 1, _tokens(seed=7), _tokens(seed=8), "loss"
    )
    assert abs(loss - math.log(V)) < 0.1, (
        f"a freshly initialised model should predict about uniformly, with loss ~ ln(V) = {math.log(V):.3f}; "
        f"got {loss:.3f}"
    )


@pytest.mark.points(1.5)
def test_overfits_one_tiny_batch(student):
    sequence = np.random.default_rng(9).integers(0, V, size=(2, 11)).astype(np.int32)
    first, loss = student.run(
        lm_training_checks, "lstm", "LSTMLanguageModel", (V, 16, 32), 1, sequence[:, :-1], sequence[:, 1:], "overfit"
    )
    assert loss < 0.05, (
        f"after 300 Adam steps on one batch of 2 x 10 tokens the loss is {loss:.3f} (it started at {first:.3f}); "
        "a working model memorises such a batch"
    )
