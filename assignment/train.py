"""Part 5: one training step and the evaluation that every language model's training loop calls.

Dimension letters: B batch size, T sequence length, V vocabulary size.

You write two functions: `train_step` (one optimizer update with `tf.GradientTape`) and `evaluate` (the loss over a
whole dataset). `train` runs the given loop of `lmkit.loop` (checkpoints that resume, TensorBoard, a progress bar)
with them; `python -m lmrun train --help` is its command line.
"""

import math
import os
from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from lmkit import loop
from lmkit.loop import TrainConfig

# ----------------------------------------------------------------------------------------------------------------
# The two functions you write.
# ----------------------------------------------------------------------------------------------------------------


def split_batch(batch: tuple) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns `(inputs, labels, weights)` from a batch of `(inputs, labels)` or `(inputs, labels, weights)`.

    `inputs` and `labels` are int32 `(B, T)`; `weights` is float32 `(B, T)`, the weight of every label token:
    0 for padding that must not count, 1 otherwise (all ones when the batch has no weights).
    """
    if len(batch) == 2:
        inputs, labels = batch
        weights = tf.ones(tf.shape(labels), tf.float32)
    elif len(batch) == 3:
        inputs, labels, weights = batch
        weights = tf.cast(weights, tf.float32)
    else:
        raise ValueError(f"a batch must be (inputs, labels) or (inputs, labels, weights); got {len(batch)} parts")
    return inputs, labels, weights


def train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    inputs: tf.Tensor,
    labels: tf.Tensor,
    clip_norm: float = 1.0,
    sample_weight: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns `(loss, grad_norm)` after one optimizer update of `model` on one batch.

    Args:
        model: a `keras.Model` mapping int32 tokens `(B, T)` to logits `(B, T, V)` (scores before the softmax).
        optimizer: a `keras.optimizers.Optimizer`.
        inputs: int32 tensor of shape `(B, T)`.
        labels: int32 tensor of shape `(B, T)`: the token that follows each input position.
        clip_norm: positive float. The gradients of all trainable variables, taken together as one long vector,
            are scaled down to this norm when their norm is larger (clipping by *global* norm, so the direction
            of the update is kept).
        sample_weight: float tensor of shape `(B, T)` or None: the weight of each label token (0 for padding).
            None means every token has weight 1. At least one weight must be > 0 (the loop's batches always
            have one); with every weight 0 the mean is 0 / 0, which nothing here defines.

    Returns:
        loss: float32 scalar tensor, the weighted mean cross-entropy per token, computed *before* the update:
            `sum(w * ce) / sum(w)` over the batch, where `ce[b, t] = -log softmax(logits[b, t])[labels[b, t]]`.
        grad_norm: float32 scalar tensor, the global norm of the gradients *before* clipping.

    The model runs in training mode (`training=True`), so its dropout is active.
    Runs eagerly and inside `tf.function` (the loop compiles it), so use TensorFlow ops, not NumPy.
    """
    # TODO: one update: weighted mean cross-entropy under a tape, gradients clipped by global norm (~10 lines)
    #   1. under a tf.GradientTape, run the model in training mode -> logits (B, T, V)
    #   2. per-token cross-entropy from the logits: keras.losses.sparse_categorical_crossentropy with
    #      from_logits=True, or tf.nn.sparse_softmax_cross_entropy_with_logits -> (B, T)
    #   3. loss = sum(w * ce) / sum(w), with w = sample_weight, or all ones when it is None -> scalar
    #   4. gradients of the loss with respect to model.trainable_variables, outside the tape's block -> a list
    #   5. clip them together with tf.clip_by_global_norm, which also returns the norm before clipping (an
    #      embedding's gradient is a tf.IndexedSlices: tf.convert_to_tensor makes it dense, so its norm is exact
    #      when an id repeats in the batch) -> clipped list, scalar norm
    #   6. optimizer.apply_gradients(zip(clipped gradients, variables))
    # BEGIN SOLUTION
    if sample_weight is None:
        sample_weight = tf.ones(tf.shape(labels), tf.float32)
    weights = tf.cast(sample_weight, tf.float32)
    with tf.GradientTape() as tape:
        logits = model(inputs, training=True)  # (B, T, V)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))  # (B, T)
        loss = tf.reduce_sum(weights * ce) / tf.reduce_sum(weights)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    # An embedding lookup's gradient is a tf.IndexedSlices whose rows repeat for repeated ids; made dense, its
    # norm is the true one (the norm of IndexedSlices counts a repeated row's parts separately).
    grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
    grads, grad_norm = tf.clip_by_global_norm(grads, clip_norm)
    optimizer.apply_gradients(zip(grads, variables))
    # END SOLUTION
    return loss, grad_norm


def evaluate(model: keras.Model, dataset: Iterable) -> tuple[float, float]:
    """Returns `(loss, perplexity)` of `model` over the whole `dataset`, as Python floats.

    `loss` is the mean cross-entropy per label token over the *whole* dataset, each token counted once with its
    weight: the sum over all batches of `sum(w * ce)`, divided by the sum over all batches of `sum(w)`. Batches
    may have different sizes (the last one is often smaller), so this is not the mean of the per-batch means.
    `perplexity = exp(loss)`, `inf` once exp overflows a float (past a loss of about 709.78).

    Args:
        model: a `keras.Model` mapping int32 tokens `(B, T)` to logits `(B, T, V)`; run it with `training=False`.
        dataset: an iterable (e.g. a `tf.data.Dataset`) of batches `(inputs, labels)` or
            `(inputs, labels, weights)`, each `(B, T)`; `split_batch(batch)` gives all three. It must hold at
            least one token of weight > 0 (the loop checks the validation split is long enough before training).
    """
    # TODO: the weighted mean cross-entropy per token over every batch, and its exponential (~8 lines)
    #   1. for each batch: inputs, labels, weights = split_batch(batch); model(inputs, training=False) -> (B, T, V)
    #   2. per-token cross-entropy from the logits, as in train_step -> (B, T)
    #   3. add sum(weights * ce) to a running total and sum(weights) to a running token count -> two floats
    #   4. loss = total / count as a Python float, perplexity = math.exp(loss) -> two floats
    # BEGIN SOLUTION
    total, count = 0.0, 0.0
    for batch in dataset:
        inputs, labels, weights = split_batch(batch)
        logits = model(inputs, training=False)  # (B, T, V)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))  # (B, T)
        total += float(tf.reduce_sum(tf.cast(weights, tf.float64) * tf.cast(ce, tf.float64)))
        count += float(tf.reduce_sum(tf.cast(weights, tf.float64)))
    loss = total / count
    try:
        perplexity = math.exp(loss)
    except OverflowError:  # past a loss of ~709.78
        perplexity = math.inf
    # END SOLUTION
    return loss, perplexity


def train(
    model_fn: Callable[[], keras.Model],
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    **options,
) -> dict:
    """Returns the results of `lmkit.loop.train` (given) run with this file's `train_step` and `evaluate`;
    `options` are that function's (`strategy`, `progress`, `log`, `stop_at`, ...)."""
    return loop.train(
        model_fn, train_ids, val_ids, config, run_dir, train_step=train_step, evaluate=evaluate, **options
    )
