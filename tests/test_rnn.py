"""Part 2a (8 points with the hidden tests): RNNCell, rnn_forward and RNNLanguageModel.

The cell and the whole sequence are compared with a NumPy reference of a simple RNN (h_t = tanh(x_t W + h_{t-1} U
+ b), the equation of Keras' `SimpleRNNCell`) computed from the weights the student's model holds; the model is
checked for invariants (state carried across chunks, no peeking at later tokens) and for the usual sanity checks
of a fresh language model (loss about ln V, gradients everywhere, a tiny batch overfits). Sizes are tiny and all
different (V=11, E=7, H=5), so a transposed weight or a swapped axis shows up as a shape.
"""

import math

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
        if isinstance(x, list | tuple):
            return [tensors(v) for v in x]
        return tf.constant(x, tf.float32)

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


def rnn_cell_session(units, x_t, h_prev, weight_seed):
    """Probe: an RNNCell(units) called on (x_t, h_prev) as built, then again after its weights get random values;
    returns the weight shapes, both outputs and the random weights."""
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    cell = rnn.RNNCell(units)
    x_t, h_prev = tf.constant(x_t), tf.constant(h_prev)
    first = np.asarray(cell(x_t, h_prev))
    rng = np.random.default_rng(weight_seed)
    for w in cell.weights:
        w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))
    names = ("kernel", "recurrent_kernel", "bias")
    return {
        "shapes": {name: tuple(getattr(cell, name).shape) for name in names},
        "first": first,
        "weights": {name: np.asarray(getattr(cell, name)) for name in names},
        "h_t": np.asarray(cell(x_t, h_prev)),
    }


def lm_shapes(sizes, tokens):
    """Probe: what a 2-layer RNNLanguageModel returns: logits, final states, initial states, from_config."""
    import numpy as np
    import tensorflow as tf

    from assignment import rnn

    vocab, embed, hidden = sizes
    model = rnn.RNNLanguageModel(vocab_size=vocab, embed_dim=embed, hidden_dim=hidden, num_layers=2)
    tokens = tf.constant(tokens)
    logits = model(tokens)
    logits_too, states = model(tokens, return_state=True)
    initial = model.get_initial_state(tokens.shape[0])
    rebuilt = rnn.RNNLanguageModel.from_config(model.get_config())
    return {
        "logits": np.asarray(logits),
        "logits_too": np.asarray(logits_too),
        "states_type": type(states).__name__,
        "states": [np.asarray(h) for h in states] if isinstance(states, list | tuple) else np.asarray(states),
        "initial": [np.asarray(h) for h in initial],
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


def reference_rnn(weights, tokens, states):
    """Returns (logits, final states) of stacked simple RNN layers holding `weights` (NumPy, float64)."""
    x = np.asarray(weights["embedding"], np.float64)[tokens]  # (B, T, E)
    final = []
    for cell, h in zip(weights["cells"], states):
        h = np.asarray(h, np.float64)
        outputs = []
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ cell["kernel"] + h @ cell["recurrent_kernel"] + cell["bias"])  # (B, H)
            outputs.append(h)
        x = np.stack(outputs, axis=1)  # (B, T, H)
        final.append(h)
    return x @ weights["output_kernel"] + weights["output_bias"], final  # (B, T, V)


def _run(student, calls, num_layers=1, weight_seed=1):
    return student.run(lm_session, "rnn", "RNNLanguageModel", (V, E, H), num_layers, weight_seed, calls)


def _result(session, i, what):
    result = session["results"][i]
    assert "error" not in result, f"{what} raised {result.get('error')}: {result.get('message')}"
    return result


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
)
def test_cell_matches_keras_simple_rnn_cell(student):
    x_t, h_prev = _normal((B, E), seed=2), _normal((B, H), seed=3)
    out = student.run(rnn_cell_session, H, x_t, h_prev, 1)
    assert_shape(np.zeros(out["shapes"]["kernel"]), (E, H), "RNNCell.kernel")
    assert_shape(np.zeros(out["shapes"]["recurrent_kernel"]), (H, H), "RNNCell.recurrent_kernel")
    assert_shape(np.zeros(out["shapes"]["bias"]), (H,), "RNNCell.bias")
    assert_shape(out["first"], (B, H), "h_t returned by RNNCell")
    w = out["weights"]
    expected = np.tanh(x_t @ w["kernel"] + h_prev @ w["recurrent_kernel"] + w["bias"])
    assert_close(out["h_t"], expected, "h_t (reference: tanh(x_t W + h_prev U + b), as keras.layers.SimpleRNNCell)")


@pytest.mark.points(1)
def test_logits_and_states_have_documented_shapes(student):
    out = student.run(lm_shapes, (V, E, H), _tokens())
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
    assert_close(out["from_initial"], out["logits"], "logits when starting from get_initial_state (vs states=None)")
    assert_shape(out["rebuilt"], (B, T, V), "logits of a model rebuilt with from_config(get_config())")


@pytest.mark.points(1)
@pytest.mark.clause(
    "rnn.rnn_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, the state after reading",
    "rnn.rnn_forward: h0: float tensor of shape `(B, H)`, the hidden state before the first step.",
)
def test_sequence_matches_keras_simple_rnn(student):
    tokens = _tokens()
    h0 = _normal((B, H), seed=4)  # a non-zero start, so the initial state has to be used
    session = _run(student, [{"tokens": tokens, "states": [h0], "return_state": True}])
    result = _result(session, 0, "model(tokens, states=[h0], return_state=True)")
    assert_shape(result["logits"], (B, T, V), "logits")
    expected_logits, expected_states = reference_rnn(session["weights"], tokens, [h0])
    assert_close(
        result["states"][0], expected_states[0], "final state h_T (reference: a simple RNN with the same weights)"
    )
    assert_close(result["logits"], expected_logits, "logits (reference: a simple RNN with the same weights)")


@pytest.mark.points(1)
@pytest.mark.clause(
    "rnn.rnn_forward: h_last: float tensor of shape `(B, H)`, the state after the last step (equal to `outputs[:,",
    "rnn.rnn_forward: h0: float tensor of shape `(B, H)`, the hidden state before the first step.",
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
    assert_close(second["states"][0], whole["states"][0], "final state after two chunks (reference: after one pass)")
    assert_close(first["logits"], whole["logits"][:, :3], "logits of the first chunk (reference: one pass)")


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "rnn.rnn_forward: outputs: float tensor of shape `(B, T, H)`; `outputs[:, t]` is h_t, the state after reading"
)
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
        lm_training_checks, "rnn", "RNNLanguageModel", (V, E, H), 2, _tokens(seed=5), _tokens(seed=6), "gradients"
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
        lm_training_checks, "rnn", "RNNLanguageModel", (V, E, H), 1, _tokens(seed=7), _tokens(seed=8), "loss"
    )
    assert abs(loss - math.log(V)) < 0.1, (
        f"a freshly initialised model should predict about uniformly, with loss ~ ln(V) = {math.log(V):.3f}; "
        f"got {loss:.3f}"
    )


@pytest.mark.points(1)
def test_overfits_one_tiny_batch(student):
    sequence = np.random.default_rng(9).integers(0, V, size=(2, 11)).astype(np.int32)
    first, loss = student.run(
        lm_training_checks, "rnn", "RNNLanguageModel", (V, 16, 32), 1, sequence[:, :-1], sequence[:, 1:], "overfit"
    )
    assert loss < 0.05, (
        f"after 300 Adam steps on one batch of 2 x 10 tokens the loss is {loss:.3f} (it started at {first:.3f}); "
        "a working model memorises such a batch"
    )
