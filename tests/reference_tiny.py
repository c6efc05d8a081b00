"""Part 5's tiny model, shared by its visible and hidden tests: the probe helper that builds it holding the test's
weights, the weights the test draws, and its NumPy references (logits, token losses, gradients)."""

import numpy as np
from checks import assert_shape

V, T = 7, 5  # vocabulary size, sequence length
NAMES = ("embedding", "kernel", "bias")  # the tiny model's weights, in the order the test sends them


def tiny_model(weights, length, shift=0.0, dropout=0.0, gather=False):
    """A built TinyLM holding exactly the test's `weights` (embedding (V, D), kernel (D, V), bias (V,)): the
    embedding by a one-hot product -> dropout (`dropout`, seeded) -> a test layer that adds `shift` to every
    activation in training mode only -> Dense(V), logits `(B, T, V)`. Returns `(model, variables)`, the variables
    in the order of `weights`. Not a student model (a probe helper, sent with `uses=`). The one-hot product makes
    the embedding's gradient a dense tensor; with `gather`, the embedding is looked up with tf.gather as in real
    models, and its gradient is a tf.IndexedSlices holding one row per token (a repeated token's rows are separate
    parts of one row of the dense gradient)."""
    import keras
    import numpy as np
    import tensorflow as tf

    table, kernel, bias = (np.asarray(w, np.float32) for w in weights)
    vocab, dim = table.shape

    class TrainingShift(keras.layers.Layer):
        """Adds `shift` to its input when called with training=True, nothing otherwise."""

        def call(self, x, training=False):
            return x + shift if training else x

    class TinyLM(keras.Model):
        def __init__(self):
            super().__init__()
            self.table = self.add_weight(name="embedding", shape=(vocab, dim), initializer="zeros")
            self.drop = keras.layers.Dropout(dropout, seed=11)
            self.shift = TrainingShift()
            self.out = keras.layers.Dense(vocab)

        def call(self, tokens, training=False):
            if gather:
                x = tf.gather(self.table, tokens)  # (B, T, D)
            else:
                x = tf.matmul(tf.one_hot(tokens, vocab), self.table)  # (B, T, D)
            return self.out(self.shift(self.drop(x, training=training), training=training))  # (B, T, V)

    model = TinyLM()
    model(tf.zeros((1, length), tf.int32))
    variables = [model.table, model.out.kernel, model.out.bias]
    for var, value in zip(variables, (table, kernel, bias)):
        var.assign(value)  # test code, not the student's: the test's weights, by position
    return model, variables


def model_weights(seed, scale=1.0, dim=4):
    """The tiny model's weights, drawn here: embedding (V, D) and kernel (D, V) ~ N(0, scale^2), bias ~ N(0, 0.01),
    float32."""
    rng = np.random.default_rng(1000 + seed)
    table = rng.normal(0.0, scale, (V, dim))
    kernel = rng.normal(0.0, scale, (dim, V))
    bias = rng.normal(0.0, 0.1, (V,))
    return [w.astype(np.float32) for w in (table, kernel, bias)]


def reference_logits(weights, inputs, shift=0.0):
    """The tiny model's logits `(B, T, V)` (with `shift` added to the embeddings: training mode), in float64."""
    table, kernel, bias = (np.asarray(w, np.float64) for w in weights)
    return (table[inputs] + shift) @ kernel + bias


def reference_token_losses(weights, inputs, labels, shift=0.0):
    """Returns -log softmax(logits)[label] for every token, `(B, T)`, in float64 NumPy."""
    logits = reference_logits(weights, inputs, shift)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1)[..., 0]  # (B, T)


def reference_gradients(weights, inputs, labels, shift=0.0, token_weights=None):
    """Returns the gradients of the mean token cross-entropy with respect to (embedding, kernel, bias); with
    `token_weights` `(B, T)`, of the weighted mean sum(w * ce) / sum(w)."""
    table, kernel, _ = (np.asarray(w, np.float64) for w in weights)
    logits = reference_logits(weights, inputs, shift)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if token_weights is None:
        d_logits = (probs - np.eye(V)[labels]) / labels.size  # (B, T, V)
    else:
        w = np.asarray(token_weights, np.float64)
        d_logits = (probs - np.eye(V)[labels]) * (w / w.sum())[..., None]  # (B, T, V)
    x = table[inputs] + shift  # (B, T, D)
    d_x = d_logits @ kernel.T  # (B, T, D)
    d_table = np.zeros_like(table)
    np.add.at(d_table, inputs, d_x)
    return [d_table, np.einsum("btd,btv->dv", x, d_logits), d_logits.sum(axis=(0, 1))]


def assert_weights_sent(read_back, weights, when):
    """The weights read back from the tiny model are exactly the ones the test sent."""
    assert len(read_back) == len(weights), f"expected {len(weights)} weights read back {when}, got {len(read_back)}"
    for name, got, sent in zip(NAMES, read_back, weights):
        assert_shape(got, sent.shape, f"{name} read back {when}")
        assert np.array_equal(np.asarray(got, np.float32), sent), (
            f"the tiny model's {name} read back {when} is not the value the test gave it: the model must hold "
            "exactly the weights the test sent until the student's code runs"
        )
