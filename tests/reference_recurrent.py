"""The NumPy references and helpers shared by the graded tests of part 2 (RNN and LSTM, visible and hidden).

The sizes every recurrent test uses, the inputs and weights the test draws, the weights as the flat list the probes
assign in order (`flat_weights`), the check that the weights read back are the ones sent, the helpers sent with the
probes, and NumPy references of stacked simple RNN and LSTM layers holding the test's weights. Imported by the judge,
which never imports TensorFlow: NumPy and the standard library only (the probe helpers import what they need inside).
"""

import numpy as np
from checks import assert_shape

V, E, H = 11, 7, 5  # vocabulary, embedding width, hidden units
B, T = 3, 6  # batch, time
CELL_WEIGHTS = ("kernel", "recurrent_kernel", "bias")


def draw_tokens(batch=B, time=T, seed=0):
    """Returns int32 token ids of shape (batch, time)."""
    return np.random.default_rng(seed).integers(0, V, size=(batch, time)).astype(np.int32)


def draw_normal(shape, seed, scale=0.5):
    """Returns float32 draws of N(0, scale^2) of `shape`."""
    return np.random.default_rng(seed).normal(0.0, scale, size=shape).astype(np.float32)


def _draw_weights(gates, num_layers, seed, scale):
    """The weights the test gives a model whose cells have `gates` blocks of H units: a dict of float32 arrays
    (embedding, cells, output_kernel, output_bias), drawn from N(0, scale^2) in a fixed order."""
    rng = np.random.default_rng(seed)

    def draw(*shape):
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    cells = [
        {"kernel": draw(E if i == 0 else H, gates * H), "recurrent_kernel": draw(H, gates * H), "bias": draw(gates * H)}
        for i in range(num_layers)
    ]
    return {"embedding": draw(V, E), "cells": cells, "output_kernel": draw(H, V), "output_bias": draw(V)}


def rnn_weights(num_layers=1, seed=1, scale=0.5):
    """The weights the test gives an RNNLanguageModel: cells of kernel (E or H, H), recurrent_kernel (H, H) and
    bias (H,)."""
    return _draw_weights(1, num_layers, seed, scale)


def lstm_weights(num_layers=1, seed=1, scale=0.5):
    """The weights the test gives an LSTMLanguageModel: cells of kernel (E or H, 4H), recurrent_kernel (H, 4H),
    bias (4H,)."""
    return _draw_weights(4, num_layers, seed, scale)


def random_states(num_layers=1, seed=4):
    """Returns a non-zero state in the documented format: a list of (h, c) pairs of shape (B, H)."""
    return [(draw_normal((B, H), seed + 2 * i), draw_normal((B, H), seed + 2 * i + 1)) for i in range(num_layers)]


def flat_weights(weights):
    """The weights as a list, in the order of the probes' `weight_slots`: (names, arrays)."""
    names, arrays = ["embedding"], [weights["embedding"]]
    for i, cell in enumerate(weights["cells"]):
        names += [f"cells[{i}].{n}" for n in CELL_WEIGHTS]
        arrays += [cell[n] for n in CELL_WEIGHTS]
    return names + ["output_layer.kernel", "output_layer.bias"], arrays + [
        weights["output_kernel"],
        weights["output_bias"],
    ]


def unflat_weights(arrays, num_layers):
    """The inverse of `flat_weights`: the dict of weights of a model of `num_layers` layers from its list."""
    cells = [dict(zip(CELL_WEIGHTS, arrays[1 + 3 * i : 4 + 3 * i])) for i in range(num_layers)]
    return {"embedding": arrays[0], "cells": cells, "output_kernel": arrays[-2], "output_bias": arrays[-1]}


def assert_weights_kept(read_back, weights, what="the model"):
    """The weights read back from the student's layer are exactly the ones the test gave it."""
    names, sent = flat_weights(weights) if isinstance(weights, dict) else weights
    assert len(read_back) == len(sent), f"expected {len(sent)} weights read back from {what}, got {len(read_back)}"
    for name, got, value in zip(names, read_back, sent):
        assert_shape(got, value.shape, f"{name} read back from {what}")
        assert np.array_equal(np.asarray(got, np.float32), value), (
            f"{name} of {what} changed: it no longer holds the value the test gave it"
        )


# Helpers sent with the probes (`uses=(assign_exactly, weight_slots)`): top-level and self-contained, since only
# their source crosses to the process that runs the student's code


def assign_exactly(layer, slots, values):
    """Helper sent with the probes: gives each documented weight of `layer` (`slots`: (name, variable) pairs) the
    test's value; raises ValueError unless the layer holds exactly these weights, with these shapes."""
    import numpy as np

    held = list(layer.weights)
    missing = [name for name, var in slots if not any(var is w for w in held)]
    extra = [getattr(w, "path", getattr(w, "name", "?")) for w in held if not any(w is var for _, var in slots)]
    if missing or extra or len(held) != len(slots):
        raise ValueError(
            f"expected {type(layer).__name__} to hold exactly its documented weights "
            f"{[name for name, _ in slots]} as weights of the layer (created with add_weight); "
            f"not weights of the layer: {missing}; weights not documented: {extra}"
        )
    for (name, var), value in zip(slots, values):
        value = np.asarray(value, np.float32)
        if tuple(var.shape) != value.shape:
            raise ValueError(f"expected {name} of shape {value.shape}, got {tuple(var.shape)}")
        var.assign(value)


def weight_slots(model):
    """Helper sent with the probes: the model's documented weights, in the test's order, as (name, variable)."""
    slots = [("embedding", model.embedding.embeddings)]
    for i, cell in enumerate(model.cells):
        slots += [(f"cells[{i}].{n}", getattr(cell, n)) for n in ("kernel", "recurrent_kernel", "bias")]
    return slots + [("output_layer.kernel", model.output_layer.kernel), ("output_layer.bias", model.output_layer.bias)]


# The NumPy references (float64), computed in the test from the weights it sent


def reference_rnn(weights, tokens, states=None):
    """Returns (logits, final states, per-layer (inputs, states)) of stacked simple RNN layers holding `weights`
    (NumPy, float64); `states` None starts every layer from zeros."""
    x = np.asarray(weights["embedding"], np.float64)[tokens]  # (B, T, E)
    if states is None:
        states = [np.zeros((x.shape[0], H))] * len(weights["cells"])
    final, layers = [], []
    for cell, h in zip(weights["cells"], states):
        hs = [np.asarray(h, np.float64)]
        for t in range(x.shape[1]):
            hs.append(np.tanh(x[:, t] @ cell["kernel"] + hs[-1] @ cell["recurrent_kernel"] + cell["bias"]))  # (B, H)
        layers.append((x, hs))
        x = np.stack(hs[1:], axis=1)  # (B, T, H)
        final.append(hs[-1])
    return x @ weights["output_kernel"] + weights["output_bias"], final, layers  # (B, T, V)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_cell(x_t, h, c, kernel, recurrent_kernel, bias):
    """One LSTM step as Keras' LSTMCell computes it: z = x W + h U + b split into gates i, f, g, o."""
    z = x_t @ kernel + h @ recurrent_kernel + bias  # (B, 4H)
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def reference_lstm(weights, tokens, states=None):
    """Returns (logits, final states, per-layer (inputs, hs, cs)) of stacked LSTM layers holding `weights` (NumPy,
    float64); `states` None starts every layer from zeros."""
    x = np.asarray(weights["embedding"], np.float64)[tokens]  # (B, T, E)
    if states is None:
        states = [(np.zeros((x.shape[0], H)), np.zeros((x.shape[0], H)))] * len(weights["cells"])
    final, layers = [], []
    for cell, (h, c) in zip(weights["cells"], states):
        hs, cs = [np.asarray(h, np.float64)], [np.asarray(c, np.float64)]
        for t in range(x.shape[1]):
            h, c = reference_cell(x[:, t], hs[-1], cs[-1], cell["kernel"], cell["recurrent_kernel"], cell["bias"])
            hs.append(h)
            cs.append(c)
        layers.append((x, hs, cs))
        x = np.stack(hs[1:], axis=1)  # (B, T, H)
        final.append((hs[-1], cs[-1]))
    return x @ weights["output_kernel"] + weights["output_bias"], final, layers  # (B, T, V)


def cross_entropy(logits, labels):
    """(mean cross-entropy, its gradient with respect to the logits) (NumPy, float64)."""
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    onehot = np.eye(logits.shape[-1])[labels]
    n = labels.size
    return float(-(np.log(p) * onehot).sum() / n), (p - onehot) / n


def check_ran(result, what):
    """A result of a session, checked to be an output, not an exception of the student's code."""
    assert "error" not in result, f"{what} raised {result.get('error')}: {result.get('message')}"
    return result


def session_result(session, i, what):
    """The i-th result of a session, checked to be an output, not an exception of the student's code."""
    return check_ran(session["results"][i], what)
