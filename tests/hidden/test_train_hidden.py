"""Part 5, hidden tests (4 points): padding weights in `train_step` and `evaluate`, evaluation mode, and a tie of
validation losses in `save_if_best`."""

import numpy as np
import pytest
from checks import assert_close

V, T = 7, 5
NAMES = ("embedding", "kernel", "bias")  # the tiny model's weights, in the order the test sends them


def _tiny(weights, length, dropout=0.0, shift=0.0):
    """A built TinyLM holding exactly the test's `weights` (embedding (V, D), kernel (D, V), bias (V,)): the
    embedding by a one-hot product -> optional dropout -> a test layer that adds `shift` to every activation in
    training mode only -> Dense(V), logits `(B, T, V)`. Returns `(model, variables)`, the variables in the order of
    `weights` (a probe helper)."""
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
            x = tf.matmul(tf.one_hot(tokens, vocab), self.table)  # (B, T, D)
            return self.out(self.shift(self.drop(x, training=training), training=training))  # (B, T, V)

    model = TinyLM()
    model(tf.zeros((1, length), tf.int32))
    variables = [model.table, model.out.kernel, model.out.bias]
    for var, value in zip(variables, (table, kernel, bias)):
        var.assign(value)  # test code, not the student's: the test's weights, by position
    return model, variables


def evaluate_on(model_kwargs, weights, tensors, batch_size):
    """Probe: the tiny model given the test's `weights`, its weights read back, then train.evaluate of it on the
    dataset of `tensors` in batches; returns the weights read back and what evaluate returned, as floats."""
    import numpy as np
    import tensorflow as tf

    from assignment import train

    model, variables = _tiny(weights, **model_kwargs)
    before = [np.asarray(v) for v in variables]
    dataset = tf.data.Dataset.from_tensor_slices(tuple(tensors)).batch(batch_size)
    loss, perplexity = train.evaluate(model, dataset)
    return before, float(loss), float(perplexity)


def weighted_steps(model_kwargs, weights, inputs, label_sets, token_weights, learning_rate, clip_norm):
    """Probe: for each labels of `label_sets`, a fresh tiny model given the test's `weights` and one SGD train_step
    with sample_weight; returns, for each, the weights read back before the step, the loss and the weights after."""
    import keras
    import numpy as np
    import tensorflow as tf

    from assignment import train

    results = []
    for labels in label_sets:
        model, variables = _tiny(weights, **model_kwargs)
        before = [np.asarray(v) for v in variables]
        loss, _ = train.train_step(
            model,
            keras.optimizers.SGD(learning_rate),
            tf.constant(inputs),
            tf.constant(labels),
            clip_norm=clip_norm,
            sample_weight=tf.constant(token_weights),
        )
        results.append({"before": before, "loss": float(loss), "after": [np.asarray(v) for v in variables]})
    return results


def padded_batch(seed, size=4):
    """Returns inputs, labels and weights `(size, T)`: sequences of different lengths, padded with zeros."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, V, (size, T)).astype(np.int32)
    labels = rng.integers(1, V, (size, T)).astype(np.int32)
    lengths = np.array([T, 2, 4, 1][:size])
    weights = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)  # (B, T)
    inputs[weights == 0] = 0
    labels[weights == 0] = 0
    return inputs, labels, weights


def model_weights(seed, dim=4):
    """The tiny model's weights, drawn here: embedding (V, D) and kernel (D, V) ~ N(0, 1), bias ~ N(0, 0.01),
    float32."""
    rng = np.random.default_rng(2000 + seed)
    return [
        rng.normal(0.0, s, shape).astype(np.float32) for s, shape in ((1.0, (V, dim)), (1.0, (dim, V)), (0.1, (V,)))
    ]


def assert_weights_sent(read_back, weights, when):
    """The weights read back from the tiny model are exactly the ones the test sent."""
    assert len(read_back) == len(weights), f"expected {len(weights)} weights read back {when}, got {len(read_back)}"
    for name, got, sent in zip(NAMES, read_back, weights):
        assert np.shape(got) == sent.shape and np.array_equal(np.asarray(got, np.float32), sent), (
            f"the tiny model's {name} read back {when} is not the value the test gave it: the model must hold "
            "exactly the weights the test sent until the student's code runs"
        )


def token_losses(model_weights, inputs, labels):
    """-log softmax(logits)[label] of the tiny model in inference mode, `(B, T)`, in float64."""
    table, kernel, bias = (np.asarray(w, np.float64) for w in model_weights)
    logits = table[inputs] @ kernel + bias
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1)[..., 0]


def weighted_gradients(model_weights, inputs, labels, token_weights):
    """The gradients of sum(w * ce) / sum(w) with respect to (embedding, kernel, bias), in float64."""
    table, kernel, bias = (np.asarray(w, np.float64) for w in model_weights)
    x = table[inputs]  # (B, T, D)
    logits = x @ kernel + bias
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    w = np.asarray(token_weights, np.float64)
    d_logits = (probs - np.eye(V)[labels]) * (w / w.sum())[..., None]  # (B, T, V)
    d_table = np.zeros_like(table)
    np.add.at(d_table, inputs, d_logits @ kernel.T)
    return [d_table, np.einsum("btd,btv->dv", x, d_logits), d_logits.sum(axis=(0, 1))]


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.evaluate: the sum over all batches of `sum(w * ce)`, divided by the sum over all batches of `sum(w)`",
    "train.evaluate: batches `(inputs, labels)` or `(inputs, labels, weights)`",
)
def test_evaluate_counts_only_weighted_tokens(student):
    inputs, labels, weights = padded_batch(0)
    sent = model_weights(0)
    before, loss, perplexity = student.run(
        evaluate_on,
        dict(length=T),
        sent,
        [inputs, labels, weights],
        3,
        uses=(_tiny,),  # batches of 3 and 1
    )
    assert_weights_sent(before, sent, "before evaluate")
    expected = (token_losses(sent, inputs, labels) * weights).sum() / weights.sum()
    assert_close(
        loss,
        expected,
        "evaluate loss when the dataset yields (inputs, labels, weights): "
        "sum(w * ce) / sum(w) over the whole dataset, padding (w = 0) left out",
        atol=1e-5,
    )
    assert_close(perplexity, np.exp(expected), "perplexity", rtol=1e-5)


@pytest.mark.points(1)
@pytest.mark.clause("train.train_step: `sum(w * ce) / sum(w)` over the batch")
def test_train_step_ignores_padding_tokens(student):
    inputs, labels, weights = padded_batch(1)
    sent = model_weights(1)
    (result,) = student.run(weighted_steps, dict(length=T), sent, inputs, [labels], weights, 0.1, 1.0, uses=(_tiny,))
    assert_weights_sent(result["before"], sent, "before train_step")
    expected = (token_losses(sent, inputs, labels) * weights).sum() / weights.sum()
    assert_close(result["loss"], expected, "train_step loss with sample_weight: sum(w * ce) / sum(w)", atol=1e-5)

    # Changing the labels of padding positions must change nothing: both updates are the test's own.
    relabelled = np.where(weights == 0, (labels + 3) % V, labels).astype(np.int32)
    results = student.run(
        weighted_steps, dict(length=T), sent, inputs, [labels, relabelled], weights, 1.0, 100.0, uses=(_tiny,)
    )
    grads = weighted_gradients(sent, inputs, labels, weights)
    assert sum(float(np.sum(g * g)) for g in grads) < 100.0**2  # the test's own premise: no clipping
    for result, what in zip(results, ("the labels", "labels changed at padding positions (weight 0)")):
        assert_weights_sent(result["before"], sent, "before train_step")
        for name, got, w, g in zip(NAMES, result["after"], sent, grads):
            assert_close(
                got,
                w - g,
                f"{name} after one SGD(learning_rate=1.0) step with sample_weight and {what}: the gradient of "
                "sum(w * ce) / sum(w), to which padding tokens contribute nothing",
                atol=1e-5,
                rtol=1e-4,
            )


@pytest.mark.points(1)
@pytest.mark.clause("train.evaluate: run it with `training=False`")
def test_evaluate_runs_the_model_in_inference_mode(student):
    # The tiny model holds dropout and a test layer that adds 1.5 to every activation in training mode only.
    inputs, labels, _ = padded_batch(2)
    sent = model_weights(2)
    before, loss, _ = student.run(
        evaluate_on, dict(length=T, dropout=0.5, shift=1.5), sent, [inputs, labels], 2, uses=(_tiny,)
    )
    assert_weights_sent(before, sent, "before evaluate")
    expected = token_losses(sent, inputs, labels).mean()  # training=False: no dropout, no shift
    assert_close(
        loss,
        expected,
        "evaluate loss of a model with dropout and other training-only behaviour: evaluate must call the model "
        "with training=False, so the same data always gives the same loss",
        atol=1e-5,
    )


def best_with_ties(losses):
    """Probe: save_if_best on a fresh best manager (make_managers) for each validation loss, numbered 1, 2, ...;
    returns each answer, best_val_loss after each, and the best checkpoint's step and loss read back."""
    import math
    import tempfile

    import tensorflow as tf

    from assignment import train

    root = tempfile.mkdtemp()
    step = tf.Variable(0, dtype=tf.int64)
    best_val_loss = tf.Variable(math.inf, dtype=tf.float64)
    weights = tf.Module()
    weights.values = [tf.Variable(0.0)]
    objects = dict(step=step, model=weights, best_val_loss=best_val_loss)
    _, best = train.make_managers(root, objects, dict(step=step, val_loss=best_val_loss, model=weights), 2)
    answers, after = [], []
    for i, loss in enumerate(losses, start=1):
        step.assign(i)
        answers.append(bool(train.save_if_best(best, loss, best_val_loss, i)))
        after.append(float(best_val_loss.numpy()))
    read = tf.train.load_checkpoint(tf.train.latest_checkpoint(root + "/best"))
    return {
        "answers": answers,
        "after": after,
        "step": int(read.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")),
        "val_loss": float(read.get_tensor("val_loss/.ATTRIBUTES/VARIABLE_VALUE")),
    }


@pytest.mark.points(0.5)
@pytest.mark.clause("train.save_if_best: (strictly lower: a tie is no improvement)")
def test_a_tied_validation_loss_keeps_the_earlier_best_checkpoint(student):
    losses = [2.5, 2.25, 2.25, 2.5, 2.25]
    out = student.run(best_with_ties, losses)
    assert out["answers"] == [True, True, False, False, False], (
        f"validation losses {losses}: only a strictly lower loss is an improvement; save_if_best returned "
        f"{out['answers']}"
    )
    assert out["step"] == 2 and out["val_loss"] == 2.25, (
        f"the best checkpoint must stay the first one of loss 2.25 (step 2); it is step {out['step']}"
    )
    assert_close(out["after"], [2.5, 2.25, 2.25, 2.25, 2.25], "best_val_loss after each evaluation")
