"""Part 5, hidden tests (4 points): padding weights in `train_step` and `evaluate`, evaluation mode, and a tie of
validation losses in `save_if_best`."""

import numpy as np
import pytest
from checks import assert_close
from reference_tiny import (
    NAMES,
    T,
    V,
    assert_weights_sent,
    model_weights,
    reference_gradients,
    reference_token_losses,
    tiny_model,
)


def evaluate_on(model_kwargs, weights, tensors, batch_size):
    """Probe: the tiny model given the test's `weights`, its weights read back, then train.evaluate of it on the
    dataset of `tensors` in batches; returns the weights read back and what evaluate returned, as floats."""
    import numpy as np
    import tensorflow as tf

    from assignment import train

    model, variables = tiny_model(weights, **model_kwargs)
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
        model, variables = tiny_model(weights, **model_kwargs)
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


@pytest.mark.points(1)
@pytest.mark.clause(
    "train.evaluate: the sum over all batches of `sum(w * ce)`, divided by the sum over all batches of `sum(w)`",
    "train.evaluate: batches `(inputs, labels)` or `(inputs, labels, weights)`",
)
def test_evaluate_counts_only_weighted_tokens(student):
    inputs, labels, weights = padded_batch(0)
    sent = model_weights(1000 + 0)
    before, loss, perplexity = student.run(
        evaluate_on,
        dict(length=T),
        sent,
        [inputs, labels, weights],
        3,
        uses=(tiny_model,),  # batches of 3 and 1
    )
    assert_weights_sent(before, sent, "before evaluate")
    expected = (reference_token_losses(sent, inputs, labels) * weights).sum() / weights.sum()
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
    sent = model_weights(1000 + 1)
    (result,) = student.run(
        weighted_steps, dict(length=T), sent, inputs, [labels], weights, 0.1, 1.0, uses=(tiny_model,)
    )
    assert_weights_sent(result["before"], sent, "before train_step")
    expected = (reference_token_losses(sent, inputs, labels) * weights).sum() / weights.sum()
    assert_close(result["loss"], expected, "train_step loss with sample_weight: sum(w * ce) / sum(w)", atol=1e-5)

    # Changing the labels of padding positions must change nothing: both updates are the test's own.
    relabelled = np.where(weights == 0, (labels + 3) % V, labels).astype(np.int32)
    results = student.run(
        weighted_steps, dict(length=T), sent, inputs, [labels, relabelled], weights, 1.0, 100.0, uses=(tiny_model,)
    )
    grads = reference_gradients(sent, inputs, labels, token_weights=weights)
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
    sent = model_weights(1000 + 2)
    before, loss, _ = student.run(
        evaluate_on, dict(length=T, dropout=0.5, shift=1.5), sent, [inputs, labels], 2, uses=(tiny_model,)
    )
    assert_weights_sent(before, sent, "before evaluate")
    expected = reference_token_losses(sent, inputs, labels).mean()  # training=False: no dropout, no shift
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
