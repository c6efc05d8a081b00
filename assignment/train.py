"""Part 5: one training loop for every language model, with checkpoints that resume, TensorBoard and a progress bar.

Dimension letters: B batch size, T sequence length, V vocabulary size.

You write two functions: `train_step` (one optimizer update with `tf.GradientTape`) and `evaluate` (the loss over a
whole dataset). Everything else here is given: the loop that calls them, the optimizers and the learning-rate
schedule, checkpoints through `tf.train.CheckpointManager`, TensorBoard logs, fine-tuning with frozen layers,
`tf.distribute` support, and the command line (`python -m assignment.train --help`).

A run directory (`runs/<name>/`) holds everything a run needs to resume or to generate text:
    config.json      the model kind and config, the tokenizer kind, the corpus and the training settings
    tokenizer.json   the fitted tokenizer
    ckpt/            the latest checkpoints (step, model, optimizer, data position), the last `keep_last` kept
    best/            the checkpoint with the lowest validation loss so far
    logs/            TensorBoard event files
    history.jsonl    one JSON line per evaluation (step, wall time, losses, tokens/s), read by `compare`
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides the progress bar
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# The two functions you write.
# ----------------------------------------------------------------------------------------------------------------


def split_batch(batch):
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


def train_step(model, optimizer, inputs, labels, clip_norm=1.0, sample_weight=None):
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
            None means every token has weight 1.

    Returns:
        loss: float32 scalar tensor, the weighted mean cross-entropy per token, computed *before* the update:
            `sum(w * ce) / sum(w)` over the batch, where `ce[b, t] = -log softmax(logits[b, t])[labels[b, t]]`.
        grad_norm: float32 scalar tensor, the global norm of the gradients *before* clipping.

    Runs eagerly and inside `tf.function` (the loop compiles it), so use TensorFlow ops, not NumPy.
    """
    # TODO: 1. under a tf.GradientTape, run the model in training mode: logits (B, T, V)
    #       2. per-token cross-entropy from the logits (B, T): keras.losses.sparse_categorical_crossentropy
    #          with from_logits=True, or tf.nn.sparse_softmax_cross_entropy_with_logits
    #       3. loss = sum(w * ce) / sum(w), with w = sample_weight, or all ones when it is None (scalar)
    #       4. gradients of the loss with respect to model.trainable_variables (outside the tape's block)
    #       5. clip them together with tf.clip_by_global_norm, which also returns the norm before clipping
    #          (an embedding's gradient is a tf.IndexedSlices: tf.convert_to_tensor makes it dense, so its norm
    #          is exact when an id repeats in the batch)
    #       6. optimizer.apply_gradients(zip(clipped gradients, variables)) (~10 lines)
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


def evaluate(model, dataset):
    """Returns `(loss, perplexity)` of `model` over the whole `dataset`, as Python floats.

    `loss` is the mean cross-entropy per label token over the *whole* dataset, each token counted once with its
    weight: the sum over all batches of `sum(w * ce)`, divided by the sum over all batches of `sum(w)`. Batches
    may have different sizes (the last one is often smaller), so this is not the mean of the per-batch means.
    `perplexity = exp(loss)`.

    Args:
        model: a `keras.Model` mapping int32 tokens `(B, T)` to logits `(B, T, V)`; run it with `training=False`.
        dataset: an iterable (e.g. a `tf.data.Dataset`) of batches `(inputs, labels)` or
            `(inputs, labels, weights)`, each `(B, T)`; `split_batch(batch)` gives all three.
    """
    # TODO: 1. for each batch: inputs, labels, weights = split_batch(batch); logits = model(..., training=False)
    #       2. per-token cross-entropy from the logits (B, T), as in train_step
    #       3. add sum(weights * ce) to a running total and sum(weights) to a running token count
    #       4. loss = total / count as a Python float, perplexity = math.exp(loss) (~8 lines)
    # BEGIN SOLUTION
    total, count = 0.0, 0.0
    for batch in dataset:
        inputs, labels, weights = split_batch(batch)
        logits = model(inputs, training=False)  # (B, T, V)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))  # (B, T)
        total += float(tf.reduce_sum(tf.cast(weights, tf.float64) * tf.cast(ce, tf.float64)))
        count += float(tf.reduce_sum(tf.cast(weights, tf.float64)))
    loss = total / count
    perplexity = math.exp(loss) if loss < 700 else math.inf  # exp overflows a float beyond ~709
    # END SOLUTION
    return loss, perplexity


# ----------------------------------------------------------------------------------------------------------------
# Everything below is given: optimizers, data, checkpoints, fine-tuning, the loop and the command line.
# ----------------------------------------------------------------------------------------------------------------

OPTIMIZERS = ("adamw", "lion", "muon", "schedulefree", "adam", "sgd")

# Learning rate of each optimizer relative to `--lr` (which is tuned for AdamW) when `--lr` is not given: Lion's
# sign updates are larger than Adam's, so it wants a smaller step (its paper: 3-10x); SGD's steps are gradient-sized.
LR_SCALE = {"adamw": 1.0, "adam": 1.0, "lion": 0.3, "muon": 1.0, "schedulefree": 2.0, "sgd": 100.0}


def learning_rate_schedule(lr, steps, warmup_steps=0, min_lr_ratio=0.1):
    """Returns nanoGPT's schedule: a linear warmup to `lr` over `warmup_steps`, then a cosine decay to
    `lr * min_lr_ratio` at step `steps` (constant after that)."""
    warmup_steps = max(0, min(int(warmup_steps), int(steps) - 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / (warmup_steps + 1) if warmup_steps else lr,  # step 0 already moves
        decay_steps=max(int(steps) - warmup_steps, 1),
        alpha=min_lr_ratio,
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def _embedding_like(model):
    """Returns the 2-D variables Muon must leave to AdamW: embeddings and the projection to the vocabulary."""
    embedding_ids = {
        id(v) for layer in _sublayers(model) if isinstance(layer, keras.layers.Embedding) for v in layer.weights
    }
    vocab = int(model(tf.zeros((1, 1), tf.int32)).shape[-1])
    return [
        v
        for v in model.trainable_variables
        if len(v.shape) == 2 and (id(v) in embedding_ids or vocab in v.shape or "embed" in v.path.lower())
    ]


class ScheduleFreeAdamW(keras.optimizers.ScheduleFreeAdamW):
    """Keras 3's schedule-free AdamW (Defazio et al., 2024) with its update step corrected.

    The model holds y = (1 - b1) z + b1 x; the optimizer keeps z (`momentum`) and the Adam second moment. Each
    step recovers x from y and z, moves z by the Adam step, averages x toward z with weight 1 / t and writes the
    new y. Keras 3.15 reads z for that recovery after it has already moved z, which pushes x uphill by
    (1 - b1) / b1 of every step; here z is read first. Measured with `python -m assignment.compare --optimizers`
    (500 steps): with Keras' step, x had a validation loss of 2.62 where the training weights y had 1.65; with
    this one, 1.31 and 1.34, as the paper predicts (x better than y).
    """

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(step / ops.cast(self.warmup_steps, dtype), 1.0)
        index = self._get_variable_index(variable)
        z, velocity = self._momentums[index], self._velocities[index]
        x = (ops.convert_to_tensor(variable) - (1 - beta_1) * ops.convert_to_tensor(z)) / beta_1  # before z moves
        self.assign_add(velocity, (ops.square(gradient) - velocity) * (1 - beta_2))
        denominator = ops.sqrt(velocity / (1 - ops.power(beta_2, step))) + ops.cast(self.epsilon, dtype)
        self.assign_sub(z, lr * gradient / denominator)
        x = (1 - 1 / step) * x + (1 / step) * ops.convert_to_tensor(z)
        self.assign(variable, (1 - beta_1) * z + beta_1 * x)


def make_optimizer(
    name, lr, steps, warmup_steps=0, min_lr_ratio=0.1, weight_decay=0.1, beta_1=0.9, beta_2=0.99, model=None, replicas=1
):
    """Returns the Keras optimizer `name` (one of `OPTIMIZERS`), following `learning_rate_schedule`.

    Schedule-free AdamW is the exception: it needs no schedule (only its own warmup), which is its point; it trains
    at one point and is evaluated at another (see `evaluation_weights`). Weight decay skips 1-D variables (norm
    gains, biases), as nanoGPT does. `replicas`: under `tf.distribute`, the optimizer sums the replicas'
    gradients; dividing each by the number of replicas first (Keras' `loss_scale_factor`) makes the sum a mean.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    schedule = learning_rate_schedule(lr, steps, warmup_steps, min_lr_ratio)
    common = dict(loss_scale_factor=float(replicas) if replicas > 1 else None)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2, **common)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(schedule, beta_1=beta_1, beta_2=beta_2, **common)
    elif name == "lion":
        optimizer = keras.optimizers.Lion(schedule, beta_1=beta_1, beta_2=beta_2, weight_decay=weight_decay, **common)
    elif name == "muon":
        exclude = [re.escape(v.path) for v in _embedding_like(model)] if model is not None else None
        optimizer = keras.optimizers.Muon(
            schedule,
            adam_beta_1=beta_1,
            adam_beta_2=beta_2,
            adam_weight_decay=weight_decay,
            weight_decay=weight_decay,
            exclude_layers=exclude,
            **common,
        )
    elif name == "schedulefree":
        optimizer = ScheduleFreeAdamW(
            lr, beta_1=beta_1, beta_2=beta_2, warmup_steps=warmup_steps, weight_decay=weight_decay, **common
        )
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, **common)
    if model is not None and getattr(optimizer, "weight_decay", None):
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    return optimizer


@contextlib.contextmanager
def evaluation_weights(model, optimizer):
    """Inside the block, `model` holds the weights to evaluate and to save as the best checkpoint.

    Schedule-free AdamW trains at y = (1 - b1) z + b1 x but is evaluated at the average x = (y - (1 - b1) z) / b1;
    every other optimizer evaluates the weights it trains. The training weights come back on exit.
    """
    if not isinstance(optimizer, keras.optimizers.ScheduleFreeAdamW) or not optimizer.built:
        yield
        return
    variables = model.trainable_variables
    saved = [tf.identity(v) for v in variables]
    b1 = float(optimizer.beta_1)
    for v in variables:
        z = optimizer._momentums[optimizer._get_variable_index(v)]
        v.assign((v - (1 - b1) * z) / b1)
    try:
        yield
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)


# ----------------------------------------------------------------------------------------------------------------
# Data: random windows for training (a stream you can restart anywhere), fixed windows for validation.
# ----------------------------------------------------------------------------------------------------------------


def random_windows(ids, batch_size, seq_len, seed=0, start=0):
    """Returns an endless `tf.data.Dataset` of `(inputs, labels)` batches, each int32 `(B, T)`, cut at random
    offsets of the token stream `ids` (nanoGPT's `get_batch`).

    Batch number p depends only on `(seed, p)` (stateless random numbers), so the stream restarts exactly at any
    position `start`: a resumed run sees the same batches as a run that never stopped.
    """
    ids = tf.constant(np.asarray(ids, dtype=np.int32))
    num_starts = int(ids.shape[0]) - seq_len  # a window is seq_len + 1 tokens
    offsets = tf.range(seq_len + 1, dtype=tf.int64)

    def batch_at(position):
        starts = tf.random.stateless_uniform(
            [batch_size],
            seed=tf.stack([tf.constant(seed, tf.int64), position]),
            minval=0,
            maxval=num_starts,
            dtype=tf.int64,
        )  # (B,)
        windows = tf.gather(ids, starts[:, None] + offsets[None, :])  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    dataset = tf.data.Dataset.counter(start).map(batch_at).prefetch(4)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def validation_batches(ids, seq_len, batch_size, max_batches=0):
    """Returns the validation set: non-overlapping windows of `ids`, in order, as `(inputs, labels)` batches."""
    from assignment import preprocess

    inputs, labels = preprocess.make_sequences(ids, seq_len)
    dataset = preprocess.make_dataset(inputs, labels, batch_size, shuffle=False)
    return dataset.take(max_batches) if max_batches else dataset


class CorpusTooSmall(ValueError):
    """The corpus has too few tokens for one training batch or one validation window."""


def check_data_size(train_ids, val_ids, batch_size, seq_len):
    """Raises `CorpusTooSmall`, saying what is needed, unless there is a batch to train on and a window to validate."""
    need_train, need_val = batch_size * seq_len + 1, seq_len + 1
    if len(train_ids) < need_train or len(val_ids) < need_val:
        raise CorpusTooSmall(
            f"the corpus is too small for one batch: {len(train_ids)} training and {len(val_ids)} validation tokens, "
            f"but a batch of {batch_size} x {seq_len} tokens needs at least {need_train} training tokens and "
            f"validation needs at least {need_val}; use a larger corpus, or a smaller --batch-size or "
            f"--context-length"
        )


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: keep the last N, save every K steps and every M minutes, keep the best separately, restore.
# ----------------------------------------------------------------------------------------------------------------


def model_state(model):
    """Returns a trackable object holding every variable of `model`, in order, for `tf.train.Checkpoint`.

    Keras 3 layers keep lists of sublayers (a transformer's `blocks`, a recurrent model's `cells`) in Keras' own
    tracking, which TensorFlow's checkpoint graph does not follow, and dropout's random-number state outside the
    layers' attributes; `model.variables` lists them all (weights, frozen or not, and RNG states), in an order
    fixed by the model's code. Saving the RNG states makes a resumed run draw the same dropout masks.
    """
    state = tf.Module()
    state.values = [v.value for v in model.variables]
    return state


class Checkpoints:
    """The checkpoints of one run directory, through two `tf.train.CheckpointManager`s.

    `ckpt/` holds the latest `keep_last` checkpoints of everything a resumed run needs: the step, the model, the
    optimizer (its moments and its step count), the position in the data stream, the training time so far and
    the best validation loss. `best/` holds one checkpoint: the model with the lowest validation loss so far.
    TensorFlow writes a checkpoint's files first and then replaces the small `checkpoint` index file atomically,
    so a run killed at any moment leaves the index naming a complete checkpoint.

    Args:
        directory: the run directory.
        model, optimizer: what to save (the optimizer may be None, e.g. for generation).
        keep_last: how many of the latest checkpoints to keep.
        save_every_steps: save when the step is a multiple of this (0: never by step count).
        save_every_minutes: also save when this much time has passed since the last save (0: never by time).
        writer: False on the non-chief workers of a multi-worker run, which save to a scratch directory.
    """

    def __init__(
        self, directory, model, optimizer=None, keep_last=3, save_every_steps=500, save_every_minutes=10.0, writer=True
    ):
        self.directory = Path(directory)
        self.save_every_steps = save_every_steps
        self.save_every_minutes = save_every_minutes
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.data_position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position")
        self.train_time = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_time")
        self.wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="wall_time")
        self.best_val_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best_val_loss")
        parts = dict(
            step=self.step,
            data_position=self.data_position,
            train_time=self.train_time,
            wall_time=self.wall_time,
            best_val_loss=self.best_val_loss,
            model=model_state(model),
        )
        if optimizer is not None:
            parts["optimizer"] = optimizer
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.best_checkpoint = tf.train.Checkpoint(
            step=self.step, val_loss=self.best_val_loss, model=model_state(model)
        )
        self.writer = writer
        # A multi-worker run saves on every worker (the save is collective), but only the chief writes the run
        # directory; the others write to a scratch directory, deleted by `close`, and restore from the chief's.
        root = self.directory if writer else self.directory / f".scratch-{os.getpid()}"
        self._root = root
        self.latest = tf.train.CheckpointManager(
            self.checkpoint, str(root / "ckpt"), max_to_keep=keep_last, checkpoint_name="ckpt"
        )
        self.best = tf.train.CheckpointManager(
            self.best_checkpoint, str(root / "best"), max_to_keep=1, checkpoint_name="best"
        )
        self._last_save = time.monotonic()
        self._last_saved_step = None

    def restore(self):
        """Restores the latest checkpoint and returns its step, or returns None when there is none."""
        if self.writer:
            self._remove_debris()
        path = self.restored_path = tf.train.latest_checkpoint(str(self.directory / "ckpt"))
        if path is None:
            return None
        _assert_matched(self.checkpoint.restore(path), path)
        self._last_saved_step = int(self.step)
        return int(self.step)

    def _remove_debris(self):
        """Deletes what a run killed while saving leaves behind: `*_temp` directories of unfinished writes, and
        finished files the index never came to name (the index is the only thing a restore reads)."""
        for manager in (self.latest, self.best):
            directory = Path(manager.directory)
            if not directory.is_dir():
                continue
            listed = {Path(p).name for p in manager.checkpoints}
            for path in directory.iterdir():
                prefix = path.name.split(".")[0]
                if path.is_dir() and path.name.endswith("_temp"):
                    shutil.rmtree(path, ignore_errors=True)
                elif path.name != "checkpoint" and prefix not in listed:
                    path.unlink(missing_ok=True)

    def save(self):
        """Saves a checkpoint numbered by the step (dropping the oldest beyond `keep_last`) and returns its path."""
        path = self.latest.save(checkpoint_number=int(self.step), check_interval=False)
        self._last_save = time.monotonic()
        self._last_saved_step = int(self.step)
        return path

    def maybe_save(self):
        """Saves when the step is a multiple of `save_every_steps` or `save_every_minutes` have passed."""
        step = int(self.step)
        due_by_step = self.save_every_steps and step % self.save_every_steps == 0
        due_by_time = self.save_every_minutes and time.monotonic() - self._last_save >= 60 * self.save_every_minutes
        if (due_by_step or due_by_time) and step != self._last_saved_step:
            return self.save()
        return None

    def save_if_best(self, val_loss):
        """Saves the model to `best/` and returns True if `val_loss` is the lowest seen; returns False otherwise."""
        if not val_loss < float(self.best_val_loss):
            return False
        self.best_val_loss.assign(val_loss)
        self.best.save(checkpoint_number=int(self.step), check_interval=False)
        return True

    def close(self):
        """Deletes a non-chief worker's scratch directory."""
        if not self.writer:
            shutil.rmtree(self._root, ignore_errors=True)

    @property
    def saved_steps(self):
        """Returns the steps of the checkpoints kept in `ckpt/`, oldest first."""
        return [int(path.rsplit("-", 1)[1]) for path in self.latest.checkpoints]


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning: start from another run's weights, and freeze the embeddings and the first blocks/layers.
# ----------------------------------------------------------------------------------------------------------------


def _sublayers(model):
    """Returns every layer inside `model`, depth first (Keras 3's `_flatten_layers` without the model itself)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)]


def _stack(model):
    """Returns the list of repeated blocks of `model`: a transformer's decoder blocks, a recurrent model's layers."""
    for name in ("blocks", "cells", "rnn_layers", "recurrent_layers", "layers_", "stack"):
        value = getattr(model, name, None)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, keras.layers.Layer) for v in value):
            return list(value)
    raise ValueError(
        f"cannot find the blocks/layers of {type(model).__name__}: expected a list attribute named "
        f"'blocks' (transformer) or 'cells' (RNN, LSTM)"
    )


def freeze(model, embeddings=False, first_layers=0):
    """Marks the embeddings and/or the first `first_layers` blocks (transformer) or recurrent layers (RNN, LSTM)
    of a built `model` as not trainable, and returns the frozen variables.

    Frozen variables leave `model.trainable_variables`, so `train_step` computes no gradient for them and the
    optimizer (weight decay included) never touches them. Embeddings are the variables whose path names an
    embedding (token and learned position embeddings). With tied embeddings, freezing the embeddings also
    freezes the output projection: it is the same matrix.
    """
    variables = []
    if embeddings:
        variables += [v for v in model.trainable_variables if "embed" in v.path.lower()]
        if not variables:
            raise ValueError(f"{type(model).__name__} has no embedding to freeze")
    if first_layers:
        stack = _stack(model)
        if first_layers > len(stack):
            raise ValueError(f"cannot freeze the first {first_layers} blocks/layers: the model has {len(stack)}")
        for layer in stack[:first_layers]:
            variables += layer.trainable_weights
    frozen = {id(v): v for v in variables}
    for v in frozen.values():
        v.trainable = False
    return list(frozen.values())


def parse_freeze(items):
    """Returns `(embeddings, first_layers)` from `--freeze` items such as `["embeddings", "2"]`."""
    embeddings, first_layers = False, 0
    for item in items or ():
        if item in ("embeddings", "embedding", "emb"):
            embeddings = True
        elif str(item).isdigit():
            first_layers = int(item)
        else:
            raise ValueError(f"--freeze takes 'embeddings' and/or a number of blocks/layers N; got {item!r}")
    return embeddings, first_layers


# ----------------------------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainConfig:
    """Everything the loop needs besides the model and the data. Defaults are nanoGPT's CPU run."""

    steps: int = 2000  # optimizer updates in total; a resumed run continues up to this
    batch_size: int = 12  # sequences per update (global, split across replicas under a strategy)
    seq_len: int = 64  # tokens per sequence, T (the transformer's context length)
    optimizer: str = "adamw"  # one of OPTIMIZERS
    lr: float = 1e-3  # peak learning rate, reached after the warmup
    min_lr_ratio: float = 0.1  # the cosine decay ends at lr * min_lr_ratio, as in nanoGPT
    warmup_steps: int = 100  # linear warmup: Adam's moments are unreliable in the first steps
    weight_decay: float = 0.1  # decoupled weight decay on matrices (not on norms and biases)
    beta_1: float = 0.9
    beta_2: float = 0.99  # nanoGPT's for small models: adapts faster than 0.999
    clip_norm: float = 1.0  # gradients are clipped to this global norm
    seed: int = 0  # seeds the initial weights (in the CLI) and the order of the batches
    eval_every: int = 250  # evaluate (and log a sample) every this many steps, and at the end
    eval_batch_size: int = 64  # validation windows per forward pass
    max_eval_batches: int = 0  # batches of the evaluations before the last (0: all); the last uses all
    log_every: int = 10  # refresh the progress bar and the training scalars every this many steps
    save_every_steps: int = 500  # checkpoint every this many steps ...
    save_every_minutes: float = 5.0  # ... and whenever this much time has passed since the last one
    keep_last: int = 3  # the latest checkpoints kept in ckpt/
    jit_compile: bool = True  # compile the train step with XLA (single device only)
    time_budget_minutes: float = 0.0  # stop (checkpointed, evaluated) after this long; rerun to go on (0: none)

    @classmethod
    def from_dict(cls, values):
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in fields})


def compile_train_step(model, optimizer, clip_norm, counters=(), strategy=None, jit_compile=True):
    """Returns `step(inputs, labels) -> (loss, grad_norm)`: `train_step` compiled into one graph.

    `counters` are int64 variables incremented in the same graph, so they always agree with the weights. Under a
    `strategy`, each replica runs `train_step` on its share of the batch, and the loss and norm are averaged.
    """

    def replica_step(inputs, labels):
        return train_step(model, optimizer, inputs, labels, clip_norm=clip_norm)

    if strategy is None:

        @tf.function(jit_compile=jit_compile)
        def compiled(inputs, labels):
            loss, grad_norm = replica_step(inputs, labels)
            for counter in counters:
                counter.assign_add(1)
            return loss, grad_norm

        return compiled

    @tf.function
    def distributed(inputs, labels):
        loss, grad_norm = strategy.run(replica_step, args=(inputs, labels))
        for counter in counters:
            counter.assign_add(1)
        mean = tf.distribute.ReduceOp.MEAN
        return strategy.reduce(mean, loss, axis=None), strategy.reduce(mean, grad_norm, axis=None)

    return distributed


class History:
    """`history.jsonl`: one JSON record per evaluation, kept consistent with the checkpoint a run resumes from."""

    def __init__(self, path, writer=True):
        self.path = Path(path)
        self.writer = writer

    def read(self):
        """Returns the records, oldest first."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, step):
        """Drops the records after `step` (written after the checkpoint a resumed run restarts from)."""
        if self.writer and self.path.exists():
            records = [r for r in self.read() if r["step"] <= step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def append(self, record):
        if self.writer:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class _StopRequests:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a request the loop honours between steps, after saving a checkpoint;
    a second Ctrl-C stops at once (the latest checkpoint on disk stays valid)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if _in_main_thread():  # signal handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def _is_chief(strategy):
    """Returns whether this process writes the run directory (always, except on non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _format_time(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def train(
    model_fn,
    train_ids,
    val_ids,
    config,
    run_dir,
    strategy=None,
    setup_fn=None,
    sample_fn=None,
    progress=True,
    log=print,
    stop_at=None,
):
    """Trains the model of `model_fn` up to `config.steps` steps, resuming from `run_dir` when it holds a
    checkpoint, and returns a dict of results (`step`, `val_loss`, `val_perplexity`, `tokens_per_sec`, `model`, ...).

    Args:
        model_fn: called with no arguments (inside the strategy's scope), returns a `keras.Model` mapping int32
            tokens `(B, T)` to logits `(B, T, V)`.
        train_ids, val_ids: int arrays of token ids, the training and validation streams.
        config: a `TrainConfig`.
        run_dir: the run directory; checkpoints go to `ckpt/` and `best/`, logs to `logs/`.
        strategy: a `tf.distribute.Strategy` (e.g. `MirroredStrategy`), or None for one device.
        setup_fn: called with the built model before the optimizer is made: loads weights to fine-tune, freezes.
        sample_fn: called with the model at each evaluation; returns a text sample for TensorBoard.
        progress: show a tqdm progress bar.
        log: where messages go (`print` by default).
        stop_at: stop after this step with a checkpoint, as if interrupted there (the schedule still runs to
            `config.steps`); the result then has `stopped=True`. `config.time_budget_minutes` stops the same way
            (with an evaluation) once the loop has run that long; the result then also has `out_of_time=True`.
    """
    from tqdm.auto import tqdm

    cfg = config
    run_dir = Path(run_dir)
    check_data_size(train_ids, val_ids, cfg.batch_size, cfg.seq_len)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if cfg.batch_size % replicas:
        raise UsageError(f"--batch-size must be a multiple of the {replicas} replicas; got {cfg.batch_size}")
    chief = _is_chief(strategy)
    run_dir.mkdir(parents=True, exist_ok=True)

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = model_fn()
        model(tf.zeros((1, cfg.seq_len), tf.int32))  # create the variables before anything refers to them
        if setup_fn is not None:
            setup_fn(model)
        optimizer = make_optimizer(
            cfg.optimizer,
            cfg.lr,
            cfg.steps,
            cfg.warmup_steps,
            cfg.min_lr_ratio,
            cfg.weight_decay,
            cfg.beta_1,
            cfg.beta_2,
            model=model,
            replicas=replicas,
        )
        optimizer.build(model.trainable_variables)
    ckpts = Checkpoints(
        run_dir, model, optimizer, cfg.keep_last, cfg.save_every_steps, cfg.save_every_minutes, writer=chief
    )
    restored = ckpts.restore()
    log(f"restored from step {restored} ({ckpts.restored_path})" if restored is not None else "starting from scratch")
    history = History(run_dir / "history.jsonl", writer=chief)
    history.truncate(int(ckpts.step))
    result = dict(
        model=model,
        optimizer=optimizer,
        checkpoints=ckpts,
        run_dir=str(run_dir),
        history=history.read(),
        already_done=False,
        tokens_per_sec=None,
    )
    if int(ckpts.step) >= cfg.steps:
        last = result["history"][-1] if result["history"] else {}
        result.update(
            already_done=True,
            stopped=False,
            step=int(ckpts.step),
            val_loss=last.get("val_loss"),
            val_perplexity=last.get("val_perplexity"),
            tokens_per_sec=last.get("tokens_per_sec"),
            train_time=float(ckpts.train_time),
        )
        return result

    stream = random_windows(train_ids, cfg.batch_size, cfg.seq_len, cfg.seed, start=int(ckpts.data_position))
    if strategy is not None:
        stream = strategy.experimental_distribute_dataset(stream)
    val_data = validation_batches(val_ids, cfg.seq_len, cfg.eval_batch_size, cfg.max_eval_batches)
    full_val_data = validation_batches(val_ids, cfg.seq_len, cfg.eval_batch_size)  # for the final evaluation
    step_fn = compile_train_step(
        model,
        optimizer,
        cfg.clip_norm,
        (ckpts.step, ckpts.data_position),
        strategy,
        cfg.jit_compile and strategy is None,
    )
    writer = tf.summary.create_file_writer(str(run_dir / "logs")) if chief else tf.summary.create_noop_writer()
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def run_evaluation(step, train_loss, tokens_per_sec, final=False):
        with evaluation_weights(model, optimizer):
            val_loss, val_perplexity = evaluate(model, full_val_data if final else val_data)
            best = ckpts.save_if_best(val_loss)
            sample = sample_fn(model) if sample_fn is not None and chief else None
        with writer.as_default(step=step):
            tf.summary.scalar("val/loss", val_loss)
            tf.summary.scalar("val/perplexity", min(val_perplexity, 1e30))
            if sample is not None:
                tf.summary.text("sample", sample)
        record = dict(
            step=step,
            train_loss=train_loss,
            val_loss=val_loss,
            val_perplexity=val_perplexity,
            train_time=round(float(ckpts.train_time), 3),
            wall_time=round(float(ckpts.wall_time), 3),
            tokens_per_sec=tokens_per_sec,
            lr=float(optimizer.learning_rate),
        )
        history.append(record)
        return record, best, sample

    wall_start, wall_base = time.perf_counter(), float(ckpts.wall_time)
    bar = tqdm(
        total=cfg.steps,
        initial=int(ckpts.step),
        unit="step",
        dynamic_ncols=True,
        disable=not progress,
        desc=run_dir.name,
        smoothing=0.1,
    )
    window_loss, window_norm, window_steps, window_time = 0.0, 0.0, 0, 0.0
    train_loss = tokens_per_sec = None
    speeds = []  # tokens/s of every logging window of this session (the first includes compiling)
    record = None
    out_of_time = False
    iterator = iter(stream)
    try:
        with _StopRequests() as stop:
            while int(ckpts.step) < cfg.steps:
                if stop.requested:
                    raise KeyboardInterrupt
                if stop_at is not None and int(ckpts.step) >= stop_at:
                    break
                if cfg.time_budget_minutes and time.perf_counter() - wall_start > 60 * cfg.time_budget_minutes:
                    out_of_time = True
                    break
                started = time.perf_counter()
                inputs, labels = next(iterator)
                try:
                    loss, grad_norm = step_fn(inputs, labels)
                except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
                    if not (cfg.jit_compile and strategy is None and "XLA" in str(error)):
                        raise
                    # e.g. a recurrent model's tf.while_loop without maximum_iterations: XLA cannot compile it,
                    # and nothing ran, so the same step runs again without XLA.
                    log(
                        f"XLA cannot compile this model's train step ({str(error).splitlines()[0][:100]}); "
                        f"running it without jit_compile"
                    )
                    step_fn = compile_train_step(
                        model, optimizer, cfg.clip_norm, (ckpts.step, ckpts.data_position), None, jit_compile=False
                    )
                    loss, grad_norm = step_fn(inputs, labels)
                loss, grad_norm = float(loss), float(grad_norm)
                elapsed = time.perf_counter() - started
                ckpts.train_time.assign_add(elapsed)
                ckpts.wall_time.assign(wall_base + time.perf_counter() - wall_start)
                step = int(ckpts.step)
                bar.update(1)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the training loss is {loss} at step {step}: lower --lr, or check the "
                        f"model for an overflow (the last checkpoint is step "
                        f"{ckpts._last_saved_step})"
                    )
                window_loss, window_norm = window_loss + loss, window_norm + grad_norm
                window_steps, window_time = window_steps + 1, window_time + elapsed
                evaluating = step % cfg.eval_every == 0 or step == cfg.steps
                if step % cfg.log_every == 0 or evaluating:
                    train_loss = window_loss / window_steps
                    tokens_per_sec = round(window_steps * tokens_per_step / window_time, 1)
                    speeds.append(tokens_per_sec)
                    bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
                    with writer.as_default(step=step):
                        tf.summary.scalar("train/loss", train_loss)
                        tf.summary.scalar("train/perplexity", math.exp(min(train_loss, 700)))
                        tf.summary.scalar("train/grad_norm", window_norm / window_steps)
                        tf.summary.scalar("train/lr", float(optimizer.learning_rate))
                        tf.summary.scalar("train/tokens_per_sec", tokens_per_sec)
                    window_loss, window_norm, window_steps, window_time = 0.0, 0.0, 0, 0.0
                if evaluating:
                    record, best, _ = run_evaluation(step, train_loss, tokens_per_sec, final=step == cfg.steps)
                    bar.write(
                        f"step {step}: train loss {train_loss:.4f}, val loss {record['val_loss']:.4f}, "
                        f"perplexity {record['val_perplexity']:.2f}" + (" (best)" if best else "")
                    )
                    writer.flush()
                ckpts.maybe_save()
    except KeyboardInterrupt:
        bar.close()
        path = ckpts.save()  # every worker of a multi-worker run takes part in a save
        log(f"interrupted at step {int(ckpts.step)}: saved {path}; run the same command again to resume")
        raise
    finally:
        bar.close()
        writer.flush()
    if out_of_time and (record is None or record["step"] != int(ckpts.step)):
        record, _, _ = run_evaluation(int(ckpts.step), train_loss, tokens_per_sec, final=True)
    ckpts.wall_time.assign(wall_base + time.perf_counter() - wall_start)  # with the last evaluation
    if ckpts._last_saved_step != int(ckpts.step):
        ckpts.save()
    ckpts.close()
    stopped = int(ckpts.step) < cfg.steps
    evaluated = record is not None and record["step"] == int(ckpts.step)
    result.update(
        stopped=stopped,
        out_of_time=out_of_time,
        step=int(ckpts.step),
        val_loss=record["val_loss"] if evaluated else None,
        val_perplexity=record["val_perplexity"] if evaluated else None,
        tokens_per_sec=float(np.median(speeds[1:] or speeds)) if speeds else None,
        train_time=float(ckpts.train_time),
        wall_time=float(ckpts.wall_time),
        history=history.read(),
    )
    return result


# ----------------------------------------------------------------------------------------------------------------
# Run directories and the command line.
# ----------------------------------------------------------------------------------------------------------------

MODELS = ("rnn", "lstm", "transformer")
ARCHITECTURES = ("gpt2", "llama2", "olmo", "openlm", "falcon", "palm")  # TransformerConfig.preset names

# Named configurations (`--config NAME`): sizes per model kind and training settings; any flag overrides them.
CONFIGS = {
    # `make train`: the reference transformer on the offline corpus, about 3-4 minutes on 2 CPU cores. LLaMA-2's
    # architecture (RoPE, RMSNorm, SwiGLU, GQA) and a context of 128 reach a lower validation loss on pyref for the
    # same compute than GPT-2's with a context of 64 (1.19 against 1.23 after 3.4M tokens); dropout only slowed
    # it down at this budget (1.21 with 0.1).
    "main": dict(
        transformer=dict(preset="llama2", d_model=128, num_heads=4, num_layers=4, context_length=128, dropout=0.0),
        rnn=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        lstm=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        train=dict(
            steps=1400,
            batch_size=16,
            lr=2e-3,
            warmup_steps=100,
            eval_every=200,
            save_every_steps=200,
            time_budget_minutes=4.25,
        ),  # a busy machine still ends `make train` within 5 minutes
    ),
    # nanoGPT's CPU run of train_shakespeare_char (README: "I only have a macbook"): 4 layers, 4 heads, width 128,
    # context 64, batch 12, dropout 0, no biases, 2000 iterations, lr 1e-3 -> 1e-4, warmup 100, beta2 0.99.
    "nanogpt-cpu": dict(
        transformer=dict(
            preset="gpt2", d_model=128, num_heads=4, num_layers=4, context_length=64, dropout=0.0, bias="none"
        ),
        rnn=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        lstm=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        train=dict(
            steps=2000,
            batch_size=12,
            lr=1e-3,
            min_lr_ratio=0.1,
            warmup_steps=100,
            weight_decay=0.1,
            beta_1=0.9,
            beta_2=0.99,
            clip_norm=1.0,
            eval_every=250,
            save_every_steps=500,
            max_eval_batches=4,
        ),  # 256 windows of 64 tokens, like nanoGPT's 20 x 12; the last: all
    ),
    # Seconds: for smoke tests and the instructor's end-to-end tests.
    "tiny": dict(
        transformer=dict(preset="gpt2", d_model=32, num_heads=2, num_layers=2, context_length=16, dropout=0.0),
        rnn=dict(embed_dim=16, hidden_dim=32, num_layers=1),
        lstm=dict(embed_dim=16, hidden_dim=32, num_layers=1),
        train=dict(
            steps=20,
            batch_size=4,
            lr=3e-3,
            warmup_steps=2,
            eval_every=10,
            eval_batch_size=256,
            max_eval_batches=4,
            log_every=5,
            save_every_steps=10,
        ),
    ),
}

# What makes a run directory's run: resuming with any of these changed would silently train something else.
# (steps, evaluation, logging and checkpoint frequencies may change between invocations.)
IDENTITY = ("model", "model_config", "tokenizer", "corpus", "corpus_sha256", "val_fraction", "init_from", "freeze")
TRAIN_IDENTITY = (
    "batch_size",
    "seq_len",
    "optimizer",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "beta_1",
    "beta_2",
    "clip_norm",
    "seed",
)


class UsageError(ValueError):
    """A command line, a config or a run directory that cannot work; the CLI prints it without a traceback."""


def build_model(kind, model_config):
    """Returns the language model `kind` ('rnn', 'lstm' or 'transformer') built from its config dict."""
    if kind == "transformer":
        from assignment.transformer import TransformerConfig, TransformerLanguageModel

        return TransformerLanguageModel(TransformerConfig.from_dict(model_config))
    if kind == "rnn":
        from assignment.rnn import RNNLanguageModel

        return RNNLanguageModel(**model_config)
    if kind == "lstm":
        from assignment.lstm import LSTMLanguageModel

        return LSTMLanguageModel(**model_config)
    raise UsageError(f"unknown model {kind!r}; valid models: {', '.join(MODELS)}")


def read_run_config(run_dir):
    """Returns the dict of `run_dir/config.json`, or None when there is none."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_weights(model, run_dir, which="best"):
    """Restores the weights of a built `model` from a run directory's `best` or `latest` checkpoint (or a
    checkpoint path) and returns the path; falls back to the latest when there is no best checkpoint."""
    run_dir = Path(run_dir)
    if which in ("best", "latest"):
        path = tf.train.latest_checkpoint(str(run_dir / "best")) if which == "best" else None
        path = path or tf.train.latest_checkpoint(str(run_dir / "ckpt"))
        if path is None:
            raise UsageError(
                f"{run_dir} holds no checkpoint yet: train it first (python -m assignment.train --run-dir {run_dir})"
            )
    else:
        path = which
    status = tf.train.Checkpoint(model=model_state(model)).restore(path).expect_partial()
    _assert_matched(status, path)
    return path


def _assert_matched(status, path):
    """Raises `UsageError` (short, without the variables' values) when a checkpoint does not fit the objects."""
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        first_line = str(error).split(":")[0]
        raise UsageError(
            f"checkpoint {path} does not fit the model built from its run's config.json ({first_line}); "
            f"was it written by another version of the code?"
        ) from None


def load_run(run_dir, which="best"):
    """Returns `(model, tokenizer, config, checkpoint_path)` of a trained run directory: what `generate` needs."""
    from assignment.preprocess import load_tokenizer

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config is None:
        raise UsageError(
            f"{run_dir} is not a run directory (no config.json); train one with "
            f"python -m assignment.train --run-dir {run_dir}"
        )
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model = build_model(config["model"], config["model_config"])
    model(tf.zeros((1, 1), tf.int32))
    path = load_weights(model, run_dir, which)
    return model, tokenizer, config, path


def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_settings(args):
    """Returns the run's settings from the named config and the flags: model kind and config (without the
    vocabulary size), tokenizer, corpus, validation share and a `TrainConfig` dict."""
    named = CONFIGS[args.config]
    source = read_run_config(args.init_from) if args.init_from else None
    if args.init_from and source is None:
        raise UsageError(f"--init-from {args.init_from}: not a run directory (no config.json)")
    kind = args.model or (source["model"] if source else "transformer")
    shape_flags = {
        name: getattr(args, name)
        for name in ("preset", "d_model", "num_heads", "num_layers", "context_length", "embed_dim", "hidden_dim")
    }
    if source is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in shape_flags.items() if v is not None] + args.set
        if given or kind != source["model"]:
            raise UsageError(
                f"--init-from takes the model from {args.init_from} ({source['model']}); drop "
                f"{', '.join(given) or '--model'}"
            )
        model_config = dict(source["model_config"])
        if args.dropout is not None and kind == "transformer":
            model_config["dropout"] = args.dropout
        seq_len = source["train"]["seq_len"]
    elif kind == "transformer":
        model_config = dict(named["transformer"])
        for name in ("preset", "d_model", "num_heads", "num_layers", "context_length", "dropout"):
            if getattr(args, name) is not None:
                model_config[name] = getattr(args, name)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--set takes KEY=VALUE (a TransformerConfig field); got {item!r}")
            model_config[key.replace("-", "_")] = _parse_value(value)
        seq_len = model_config["context_length"]
    else:
        model_config = dict(named[kind])
        for name in ("embed_dim", "hidden_dim", "num_layers"):
            if getattr(args, name) is not None:
                model_config[name] = getattr(args, name)
        if args.preset is not None or args.set or args.d_model is not None or args.num_heads is not None:
            raise UsageError(f"--preset, --set, --d-model and --num-heads configure the transformer, not the {kind}")
        seq_len = args.context_length or named["transformer"]["context_length"]

    train_cfg = dataclasses.asdict(TrainConfig())
    train_cfg.update(named["train"])
    train_cfg["seq_len"] = seq_len
    flags = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        beta_1=args.beta1,
        beta_2=args.beta2,
        clip_norm=args.clip_norm,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
        max_eval_batches=args.eval_batches,
        log_every=args.log_every,
        save_every_steps=args.save_every_steps,
        save_every_minutes=args.save_every_minutes,
        keep_last=args.keep_last,
        time_budget_minutes=args.time_budget,
    )
    train_cfg.update({k: v for k, v in flags.items() if v is not None})
    if args.lr is None:
        train_cfg["lr"] = train_cfg["lr"] * LR_SCALE[train_cfg["optimizer"]]
    if args.no_jit or kind in ("rnn", "lstm"):  # XLA cannot compile their tf.while_loop over time steps
        train_cfg["jit_compile"] = False
    for name in ("steps", "batch_size", "seq_len", "eval_every", "log_every"):
        if train_cfg[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1; got {train_cfg[name]}")
    embeddings, first_layers = parse_freeze(args.freeze)
    return dict(
        model=kind,
        preset=model_config.get("preset"),
        model_config=model_config,
        tokenizer=source["tokenizer"] if source else args.tokenizer,
        corpus=args.corpus,
        val_fraction=args.val_fraction,
        train=train_cfg,
        init_from=str(args.init_from) if args.init_from else None,
        freeze=dict(embeddings=embeddings, first_layers=first_layers) if args.freeze else None,
    )


def full_model_config(kind, model_config, vocab_size):
    """Returns the complete config dict of the model (what `build_model` takes), checked."""
    model_config = dict(model_config, vocab_size=vocab_size)
    if kind == "transformer":
        from assignment.transformer import TransformerConfig

        preset = model_config.pop("preset", None)
        try:
            config = (
                TransformerConfig.preset(preset, **model_config)
                if preset
                else TransformerConfig.from_dict(model_config)
            )
        except (TypeError, ValueError) as error:
            raise UsageError(f"transformer config: {error}") from None
        return config.to_dict()
    return model_config


def check_same_run(saved, config, run_dir):
    """Raises `UsageError` listing the differences when `run_dir` was written by another model or config."""
    differences = []
    for key in IDENTITY:
        if saved.get(key) != config.get(key):
            if isinstance(saved.get(key), dict) and isinstance(config.get(key), dict):
                for sub in sorted(set(saved[key]) | set(config[key])):
                    if saved[key].get(sub) != config[key].get(sub):
                        differences.append(
                            f"{key}.{sub}: {config[key].get(sub)!r} here, {saved[key].get(sub)!r} in the run"
                        )
            else:
                differences.append(f"{key}: {config.get(key)!r} here, {saved.get(key)!r} in the run")
    for key in TRAIN_IDENTITY:
        if saved["train"].get(key) != config["train"].get(key):
            differences.append(f"{key}: {config['train'].get(key)!r} here, {saved['train'].get(key)!r} in the run")
    if differences:
        raise UsageError(
            f"{run_dir} holds a run of another model or config, so it cannot be resumed with these settings:\n  "
            + "\n  ".join(differences)
            + f"\nUse --run-dir DIR for a new run, or --overwrite to delete {run_dir} and start again."
        )


def make_strategy(name, cpu_replicas=0):
    """Returns the `tf.distribute.Strategy` called `name`, or None for 'default' (one device).

    `cpu_replicas` splits the CPU into that many logical devices first, to try `mirrored` without GPUs; it must
    run before TensorFlow touches a device.
    """
    if cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    if name == "default":
        return None
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads the cluster from the TF_CONFIG variable
    raise UsageError(f"unknown strategy {name!r}; valid: default, mirrored, multiworker")


def make_sample_fn(tokenizer, prompt, max_new_tokens, temperature=0.8, seed=0):
    """Returns `sample_fn(model) -> str`: the prompt and `max_new_tokens` sampled tokens, decoded."""
    from assignment import sampling

    prompt_ids = tokenizer.encode(prompt) if prompt else np.array([tokenizer.unk_id], np.int32)

    def sample_fn(model):
        ids = sampling.generate(model, prompt_ids, max_new_tokens, temperature=temperature, seed=seed)
        return tokenizer.decode(ids)

    return sample_fn


def _remove_run_dir(run_dir):
    if not run_dir.exists():
        return
    if any(run_dir.iterdir()) and not (run_dir / "config.json").exists():
        raise UsageError(f"refusing to delete {run_dir}: it is not a run directory (no config.json)")
    shutil.rmtree(run_dir)


def run(args):
    """Trains as the parsed command line says; returns the result dict of `train`."""
    from assignment import preprocess
    from assignment.corpus import load_corpus

    settings = resolve_settings(args)
    run_dir = Path(args.run_dir)
    strategy = make_strategy(args.strategy, args.cpu_replicas)
    chief = _is_chief(strategy)
    if args.overwrite and chief:
        _remove_run_dir(run_dir)
    saved = read_run_config(run_dir)
    if saved is None and run_dir.exists() and any(p.name != "logs" for p in run_dir.iterdir()):
        raise UsageError(f"{run_dir} exists and is not a run directory (no config.json); choose another --run-dir")
    cfg = TrainConfig.from_dict(settings["train"])
    keras.utils.set_random_seed(cfg.seed)  # the initial weights

    try:
        text = load_corpus(settings["corpus"])
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if saved is not None:
        tokenizer = preprocess.load_tokenizer(run_dir / "tokenizer.json")
    elif settings["init_from"]:
        tokenizer = preprocess.load_tokenizer(Path(settings["init_from"]) / "tokenizer.json")
    else:
        tokenizer = (preprocess.CharTokenizer() if settings["tokenizer"] == "char" else preprocess.WordTokenizer()).fit(
            text
        )
    ids = tokenizer.encode(text)
    train_ids, val_ids = preprocess.train_val_split(ids, settings["val_fraction"])
    config = dict(
        settings,
        model_config=full_model_config(settings["model"], settings["model_config"], tokenizer.vocab_size),
        corpus_sha256=__import__("hashlib").sha256(text.encode("utf-8")).hexdigest(),
        vocab_size=tokenizer.vocab_size,
    )
    if saved is not None:
        check_same_run(saved, config, run_dir)
    check_data_size(train_ids, val_ids, cfg.batch_size, cfg.seq_len)
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        if saved is None:
            tokenizer.save(run_dir / "tokenizer.json")
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, run_dir / "config.json")  # atomic: a killed run never leaves half a config
    print(
        f"{run_dir}: {settings['model']} ({_describe(config)}) on {settings['corpus']} "
        f"({len(train_ids):,} training / {len(val_ids):,} validation tokens, vocabulary {tokenizer.vocab_size}); "
        f"{cfg.steps} steps of {cfg.batch_size} x {cfg.seq_len} tokens, {cfg.optimizer} lr {cfg.lr:g}"
    )

    def setup_fn(model):
        print(f"parameters: {model.count_params():,}")
        if settings["init_from"]:
            path = load_weights(model, settings["init_from"], "best")
            print(f"initialized from {path}")
        if settings["freeze"]:
            frozen = freeze(model, **settings["freeze"])
            print(f"frozen: {len(frozen)} variables, {sum(int(np.prod(v.shape)) for v in frozen):,} parameters")

    sample_fn = make_sample_fn(tokenizer, args.sample_prompt, args.sample_tokens, seed=cfg.seed)
    # The samples logged at each evaluation stay short, and within a transformer's context: there they come from
    # the KV cache (a few ms a token); beyond it every token re-reads the whole context.
    room = config["model_config"].get("context_length", 10**9) - len(tokenizer.encode(args.sample_prompt))
    eval_sample_fn = make_sample_fn(
        tokenizer, args.sample_prompt, max(1, min(args.sample_tokens, 100, room)), seed=cfg.seed
    )
    result = train(
        lambda: build_model(settings["model"], config["model_config"]),
        train_ids,
        val_ids,
        cfg,
        run_dir,
        strategy=strategy,
        setup_fn=setup_fn,
        sample_fn=eval_sample_fn if args.sample_tokens else None,
        progress=not args.no_progress,
    )
    if result["already_done"]:
        figures = (
            f": val loss {result['val_loss']:.4f}, perplexity {result['val_perplexity']:.2f}"
            if result["val_loss"] is not None
            else ""
        )
        print(
            f"{run_dir} is already trained to step {result['step']} of {cfg.steps}{figures}. Nothing to do: "
            f"pass --steps N (more than {result['step']}) to train further, --overwrite to start again, or "
            f"sample with python -m assignment.generate --run-dir {run_dir}"
        )
        return result
    if result["out_of_time"]:
        print(
            f"stopped at the time budget ({cfg.time_budget_minutes:g} minutes, --time-budget) at step "
            f"{result['step']} of {cfg.steps}: this machine is slower than planned (busy?); run the same command "
            f"again to finish the schedule, or pass --time-budget 0"
        )
    print(
        f"{'stopped' if result['stopped'] else 'done'}: step {result['step']} | val loss {result['val_loss']:.4f} | "
        f"val perplexity {result['val_perplexity']:.2f} | {result['tokens_per_sec']:,.0f} tokens/s | training time "
        f"{_format_time(result['train_time'])} (wall {_format_time(result['wall_time'])})"
    )
    print(
        f"best checkpoint: {result['checkpoints'].best.latest_checkpoint} (val loss "
        f"{float(result['checkpoints'].best_val_loss):.4f})"
    )
    if args.sample_tokens and chief:
        with evaluation_weights(result["model"], result["optimizer"]):
            print("sample:\n" + sample_fn(result["model"]))
    return result


def _describe(config):
    mc = config["model_config"]
    if config["model"] == "transformer":
        return (
            f"{config.get('preset') or 'custom'}, {mc['num_layers']} layers, {mc['num_heads']} heads, "
            f"width {mc['d_model']}, context {mc['context_length']}"
        )
    return f"{mc.get('num_layers', 1)} layer(s), embedding {mc['embed_dim']}, hidden {mc['hidden_dim']}"


EXAMPLES = """\
examples:
  python -m assignment.train                                     # `make train`: the main job (--config main)
  python -m assignment.train --config nanogpt-cpu --run-dir runs/nanogpt --corpus shakespeare
  python -m assignment.train --model lstm --run-dir runs/lstm --steps 1000
  python -m assignment.train --preset palm --run-dir runs/palm      # a tiny PaLM (parallel blocks, MQA)
  python -m assignment.train --preset gpt2 --set norm=rmsnorm --run-dir runs/gpt2-rms
  python -m assignment.train --optimizer lion --run-dir runs/lion
  python -m assignment.train --init-from runs/main --corpus my.txt --freeze embeddings 2 --run-dir runs/ft
  python -m assignment.train --strategy mirrored --cpu-replicas 2 --run-dir runs/mirrored

Running the same command again resumes from the latest checkpoint (or says the run is done); Ctrl-C saves a
checkpoint first. A run directory written by another model or config is an error, never a silent fresh start.
"""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m assignment.train",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a character- or word-level language model (RNN, LSTM or transformer), with "
        "checkpoints that resume, TensorBoard logs (--run-dir/logs) and a sample at the end. Flags "
        "left out come from --config.",
    )
    what = parser.add_argument_group("what to train")
    what.add_argument(
        "--model", choices=MODELS, default=None, help="model kind (default: transformer, or the --init-from run's)"
    )
    what.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        default="main",
        help="named configuration giving every default below: 'main' is `make train` (~3-4 min on "
        "2 cores), 'nanogpt-cpu' nanoGPT's CPU run of tiny Shakespeare, 'tiny' a seconds-long "
        "smoke test (default: main)",
    )
    what.add_argument(
        "--preset",
        default=None,
        metavar="ARCH",
        help=f"transformer architecture from the lecture's table: {', '.join(ARCHITECTURES)} "
        f"(default: the config's: llama2 for main, gpt2 for nanogpt-cpu and tiny)",
    )
    what.add_argument("--d-model", type=int, help="transformer width D")
    what.add_argument("--num-heads", type=int, help="transformer attention heads")
    what.add_argument("--num-layers", type=int, help="transformer blocks, or stacked RNN/LSTM layers")
    what.add_argument(
        "--context-length", type=int, help="tokens per training sequence T (the transformer's context length)"
    )
    what.add_argument("--dropout", type=float, help="transformer dropout rate")
    what.add_argument("--embed-dim", type=int, help="RNN/LSTM embedding width")
    what.add_argument("--hidden-dim", type=int, help="RNN/LSTM hidden state width")
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other TransformerConfig field, e.g. --set norm=rmsnorm --set num_kv_heads=1 (repeatable)",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--corpus",
        default="pyref",
        help="'pyref' (the Python Language Reference, offline; default), 'shakespeare' "
        "(downloaded once into data/), or the path of a UTF-8 text file",
    )
    data.add_argument("--tokenizer", choices=("char", "word"), default="char", help="tokenizer (default: char)")
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the corpus (its end) held out for validation (default: 0.1)",
    )

    opt = parser.add_argument_group("optimization")
    opt.add_argument("--steps", type=int, help="total optimizer steps; raise it to train a finished run further")
    opt.add_argument("--batch-size", type=int, help="sequences per step (global batch under a strategy)")
    opt.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="adamw (default), lion, muon, schedulefree (schedule-free AdamW), adam or sgd "
        "(with Nesterov momentum); all but schedulefree follow warmup + cosine decay",
    )
    opt.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (default: the config's, scaled per optimizer: lion x0.3, schedulefree x2, sgd x100)",
    )
    opt.add_argument("--min-lr-ratio", type=float, help="final learning rate as a share of the peak (default 0.1)")
    opt.add_argument("--warmup-steps", type=int, help="steps of linear warmup")
    opt.add_argument("--weight-decay", type=float, help="decoupled weight decay of the matrices")
    opt.add_argument("--beta1", type=float, help="first-moment decay (Adam, AdamW, Lion, Muon's Adam part)")
    opt.add_argument("--beta2", type=float, help="second-moment decay")
    opt.add_argument("--clip-norm", type=float, help="clip the gradients to this global norm (default 1.0)")
    opt.add_argument("--seed", type=int, help="seed of the initial weights and of the batch order (default 0)")
    opt.add_argument("--no-jit", action="store_true", help="do not compile the train step with XLA")

    loop = parser.add_argument_group("evaluation, logging and checkpoints")
    loop.add_argument(
        "--run-dir",
        default="runs/main",
        help="run directory: config, tokenizer, checkpoints, logs (default: runs/main)",
    )
    loop.add_argument("--overwrite", action="store_true", help="delete the run directory first and start again")
    loop.add_argument("--eval-every", type=int, help="evaluate on the validation split every N steps")
    loop.add_argument("--eval-batch-size", type=int, help="validation sequences per forward pass")
    loop.add_argument(
        "--eval-batches",
        type=int,
        help="validation batches of each evaluation but the last, which uses the whole validation "
        "split (0: all, the default; nanogpt-cpu: 4, as many tokens as nanoGPT's estimate)",
    )
    loop.add_argument("--log-every", type=int, help="update the progress bar and TensorBoard every N steps")
    loop.add_argument("--save-every-steps", type=int, help="checkpoint every N steps")
    loop.add_argument("--save-every-minutes", type=float, help="also checkpoint every M minutes")
    loop.add_argument("--keep-last", type=int, help="checkpoints kept in ckpt/ (the best is kept in best/)")
    loop.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="stop after this many minutes of training, with a checkpoint and an evaluation, even "
        "before --steps (rerun to continue); 0: no limit (default: the config's, 4.25 for main)",
    )
    loop.add_argument("--sample-prompt", default="The ", help="prompt of the samples (default: 'The ')")
    loop.add_argument(
        "--sample-tokens",
        type=int,
        default=200,
        help="tokens of the sample printed at the end (default 200); the samples logged to "
        "TensorBoard at each evaluation have at most 100, within the context (0: no samples)",
    )
    loop.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")

    tune = parser.add_argument_group("fine-tuning and scale-out")
    tune.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        help="start from the best weights of another run (same model and tokenizer), e.g. to "
        "continue on another --corpus",
    )
    tune.add_argument(
        "--freeze",
        nargs="+",
        metavar="ITEM",
        help="keep parts fixed: 'embeddings' and/or N (the first N transformer blocks or "
        "RNN/LSTM layers), e.g. --freeze embeddings 2",
    )
    tune.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default="default",
        help="tf.distribute strategy: one device (default), MirroredStrategy over the GPUs of one "
        "machine (or --cpu-replicas CPUs), MultiWorkerMirroredStrategy over machines (TF_CONFIG)",
    )
    tune.add_argument(
        "--cpu-replicas",
        type=int,
        default=0,
        help="split the CPU into N logical devices (to try --strategy mirrored without GPUs)",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (UsageError, CorpusTooSmall) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    code = main()
    if code == 130:  # interrupted: the checkpoint is saved and the logs flushed; do not wait on TensorFlow's
        sys.stdout.flush()  # threads at exit, which can hang after an interrupted input pipeline
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
