"""Part 5, hidden tests (4 points): padding weights in `train_step` and `evaluate`, evaluation mode, and a tie of
validation losses in `save_if_best`."""

import numpy as np
import pytest
from checks import assert_close

V, T = 7, 5


def _tiny(vocab, length, dropout=0.0):
    """A built TinyLM: embedding (V, D) by a one-hot product -> optional dropout -> Dense(V), logits `(B, T, V)`
    (a probe helper)."""
    import keras
    import tensorflow as tf

    class TinyLM(keras.Model):
        def __init__(self):
            super().__init__()
            self.table = self.add_weight(
                name="embedding", shape=(vocab, 4), initializer=keras.initializers.RandomNormal(seed=11)
            )
            self.drop = keras.layers.Dropout(dropout, seed=11)
            self.out = keras.layers.Dense(vocab, kernel_initializer=keras.initializers.RandomNormal(seed=12))

        def call(self, tokens, training=False):
            x = tf.matmul(tf.one_hot(tokens, vocab), self.table)  # (B, T, D)
            return self.out(self.drop(x, training=training))  # (B, T, V)

    model = TinyLM()
    model(tf.zeros((1, length), tf.int32))
    return model


def evaluate_on(model_kwargs, tensors, batch_size):
    """Probe: the tiny model's weights and train.evaluate of it on the dataset of `tensors` in batches."""
    import numpy as np
    import tensorflow as tf

    from assignment import train

    model = _tiny(**model_kwargs)
    dataset = tf.data.Dataset.from_tensor_slices(tuple(tensors)).batch(batch_size)
    loss, perplexity = train.evaluate(model, dataset)
    return [np.asarray(v) for v in model.trainable_variables], float(loss), float(perplexity)


def weighted_steps(model_kwargs, inputs, label_sets, weights, learning_rate, clip_norm):
    """Probe: for each labels of `label_sets`, a fresh tiny model (the same initial weights) and one SGD train_step
    with sample_weight; returns the weights before, and each step's loss and weights after."""
    import keras
    import numpy as np
    import tensorflow as tf

    from assignment import train

    results = []
    before = None
    for labels in label_sets:
        model = _tiny(**model_kwargs)
        before = [np.asarray(v) for v in model.trainable_variables]
        loss, _ = train.train_step(
            model,
            keras.optimizers.SGD(learning_rate),
            tf.constant(inputs),
            tf.constant(labels),
            clip_norm=clip_norm,
            sample_weight=tf.constant(weights),
        )
        results.append({"loss": float(loss), "after": [np.asarray(v) for v in model.trainable_variables]})
    return {"before": before, "results": results}


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


def token_losses(model_weights, inputs, labels):
    """-log softmax(logits)[label] of the tiny model without dropout, `(B, T)`, in float64."""
    table, kernel, bias = (np.asarray(w, np.float64) for w in model_weights)
    logits = table[inputs] @ kernel + bias
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1)[..., 0]


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "train.evaluate: the sum over all batches of `sum(w * ce)`, divided by the sum over all batches of `sum(w)`",
    "train.evaluate: batches `(inputs, labels)` or `(inputs, labels, weights)`",
)
def test_evaluate_counts_only_weighted_tokens(student):
    inputs, labels, weights = padded_batch(0)
    model_weights, loss, perplexity = student.run(
        evaluate_on,
        dict(vocab=V, length=T),
        [inputs, labels, weights],
        3,
        uses=(_tiny,),  # batches of 3 and 1
    )
    expected = (token_losses(model_weights, inputs, labels) * weights).sum() / weights.sum()
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
    result = student.run(weighted_steps, dict(vocab=V, length=T), inputs, [labels], weights, 0.1, 1.0, uses=(_tiny,))
    expected = (token_losses(result["before"], inputs, labels) * weights).sum() / weights.sum()
    loss = result["results"][0]["loss"]
    assert_close(loss, expected, "train_step loss with sample_weight: sum(w * ce) / sum(w)", atol=1e-5)

    # Changing the labels of padding positions must change nothing.
    relabelled = np.where(weights == 0, (labels + 3) % V, labels).astype(np.int32)
    result = student.run(
        weighted_steps, dict(vocab=V, length=T), inputs, [labels, relabelled], weights, 1.0, 100.0, uses=(_tiny,)
    )
    a, b = result["results"]
    for name, va, vb in zip(("embedding", "kernel", "bias"), a["after"], b["after"]):
        assert_close(
            va, vb, f"{name} after a step: labels at padding positions (weight 0) must not affect the update", atol=1e-6
        )


@pytest.mark.points(1)
@pytest.mark.clause("train.evaluate: run it with `training=False`")
def test_evaluate_runs_the_model_in_inference_mode(student):
    inputs, labels, _ = padded_batch(2)
    model_weights, loss, _ = student.run(
        evaluate_on, dict(vocab=V, length=T, dropout=0.5), [inputs, labels], 2, uses=(_tiny,)
    )
    expected = token_losses(model_weights, inputs, labels).mean()  # training=False: dropout off
    assert_close(
        loss,
        expected,
        "evaluate loss of a model with dropout: evaluate must call the model with "
        "training=False (no dropout), so the same data always gives the same loss",
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
