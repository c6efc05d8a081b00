"""Part 5: the training loop: one training step, the evaluation, checkpoints, tracking, and the loop itself.

Dimension letters: B batch size, T sequence length, V vocabulary size.

You write `train_step` (one optimizer update with `tf.GradientTape`) and `evaluate` (the loss over a whole
dataset), then the lecture's four uses of `tf.train.CheckpointManager` and the TensorBoard logging:
`make_managers` (keep the newest N checkpoints, and the best one), `restore_latest` (load the newest and resume at
its step), `save_due` (save every N steps or every M minutes, on a clock the caller passes), `save_if_best` (save
when the validation loss improves) and `write_summaries` (`tf.summary` scalars and text at a step, flushed); and
last `fit`, the loop over batches that calls them: train, log, evaluate, keep the best, save.
`train` runs your `fit` through `lmkit.loop` (given: it builds the model, the optimizer and the data, restores,
recovers damaged checkpoints, saves on Ctrl-C, shows a progress bar and, with `--wandb`, tracks the run in Weights
& Biases); `python -m lmrun train --help` is its command line."""

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


# ----------------------------------------------------------------------------------------------------------------
# The loop's checkpoints and tracking: the lecture's four uses of tf.train.CheckpointManager, and tf.summary.
# The given loop (lmkit.loop) and lmkit.checkpoints call these; recovering damaged checkpoints stays given.
# ----------------------------------------------------------------------------------------------------------------


def make_managers(
    directory: str | os.PathLike, objects: dict, best_objects: dict, keep_last: int
) -> tuple[tf.train.CheckpointManager, tf.train.CheckpointManager]:
    """Returns `(latest, best)`: two `tf.train.CheckpointManager`s of a run directory.

    Args:
        directory: the run directory (a str or a path).
        objects: `{name: trackable}`, everything a resumed run needs: `step` (an int64 `tf.Variable`), `model`,
            `optimizer` (its moments and its step count), the position in the data stream, the best validation
            loss so far. Every one of them is saved and restored.
        best_objects: `{name: trackable}`, what the best checkpoint holds (`step`, `val_loss`, `model`).
        keep_last: positive int, how many of the newest checkpoints `latest` keeps.

    Returns:
        latest: saves a `tf.train.Checkpoint` of every entry of `objects` into `<directory>/ckpt/`, its files named
            `ckpt-<number>.*`, and keeps only the newest `keep_last` checkpoints (it deletes the older ones).
        best: saves a `tf.train.Checkpoint` of every entry of `best_objects` into `<directory>/best/`, its files
            named `best-<number>.*`, and keeps only the newest one.
    """
    # TODO: two managers of tf.train.Checkpoint(**...) with max_to_keep and checkpoint_name (~4 lines)
    #   1. latest: tf.train.CheckpointManager(tf.train.Checkpoint(**objects), os.path.join(directory, "ckpt"),
    #      max_to_keep=keep_last, checkpoint_name="ckpt") -> a manager
    #   2. best: the same of best_objects in os.path.join(directory, "best"), keeping 1, named "best" -> a manager
    # BEGIN SOLUTION
    directory = os.fspath(directory)
    latest = tf.train.CheckpointManager(
        tf.train.Checkpoint(**objects), os.path.join(directory, "ckpt"), max_to_keep=keep_last, checkpoint_name="ckpt"
    )
    best = tf.train.CheckpointManager(
        tf.train.Checkpoint(**best_objects), os.path.join(directory, "best"), max_to_keep=1, checkpoint_name="best"
    )
    # END SOLUTION
    return latest, best


def restore_latest(manager: tf.train.CheckpointManager) -> int:
    """Restores the newest checkpoint of `manager` and returns the step to resume at.

    Every object the manager's checkpoint tracks (`manager.checkpoint`: the model's weights, the optimizer's
    moments and step count, `step`, ...) gets the values it had when that checkpoint was saved, and the step
    returned is the restored value of the checkpoint's `step` variable (`manager.checkpoint.step`), as a Python
    int. With no checkpoint yet (a fresh run), nothing changes and the step returned is 0.
    Raises `AssertionError` when the checkpoint does not hold an object the manager's checkpoint tracks (it was
    written by another model); the given loop turns it into a one-line error.
    """
    # TODO: restore manager.latest_checkpoint, when there is one, and return the restored step (~4 lines)
    #   1. path = manager.latest_checkpoint; None means a fresh run: return 0 -> int
    #   2. manager.checkpoint.restore(path), then .assert_existing_objects_matched() on what it returns
    #   3. return int(manager.checkpoint.step) -> int
    # BEGIN SOLUTION
    path = manager.latest_checkpoint
    if path is None:
        return 0
    manager.checkpoint.restore(path).assert_existing_objects_matched()
    return int(manager.checkpoint.step)
    # END SOLUTION


def save_due(
    step: int, now: float, last_step: int | None, last_time: float, every_steps: int, every_minutes: float
) -> bool:
    """Returns True when the loop should save a checkpoint after `step`, as a Python bool.

    A save is due when `step` is a multiple of `every_steps` (0: never by step count), or when at least
    `every_minutes` minutes have passed on the clock since the last save: `now - last_time >= 60 * every_minutes`
    (0: never by time). Never twice at one step: False when `step == last_step`.

    Args:
        step: the step just taken (a positive int).
        now: the clock now, in seconds (the caller reads a monotonic clock and passes it; do not read one here).
        last_step: the step of the last save or restore, or None before either.
        last_time: the clock, in seconds, at the last save (or at the start of the run).
        every_steps, every_minutes: the two intervals, 0 to turn one off.
    """
    # TODO: due by step count or by time since the last save, never twice at one step (~4 lines)
    #   1. by_steps: every_steps > 0 and step % every_steps == 0 -> bool
    #   2. by_time: every_minutes > 0 and now - last_time >= 60 * every_minutes (seconds, not steps) -> bool
    #   3. return (by_steps or by_time) and step != last_step -> bool
    # BEGIN SOLUTION
    by_steps = every_steps > 0 and step % every_steps == 0
    by_time = every_minutes > 0 and now - last_time >= 60 * every_minutes
    return bool((by_steps or by_time) and step != last_step)
    # END SOLUTION


def save_if_best(manager: tf.train.CheckpointManager, val_loss: float, best_val_loss: tf.Variable, step: int) -> bool:
    """Saves the best checkpoint when `val_loss` improves on the lowest validation loss so far; returns whether it did.

    Args:
        manager: the `best` manager of `make_managers`.
        val_loss: the validation loss just measured (a Python float).
        best_val_loss: float64 scalar `tf.Variable`, the lowest validation loss so far (inf before the first
            evaluation); it is saved in the checkpoints, so a resumed run remembers it.
        step: the step of this evaluation, the number of the checkpoint saved.

    Returns:
        True (a Python bool) after a save when `val_loss < best_val_loss` (strictly lower: a tie is no improvement);
        `best_val_loss` then holds `val_loss`. False otherwise, with nothing saved and `best_val_loss` unchanged.
    """
    # TODO: compare, remember the new best, save it numbered by the step (~5 lines)
    #   1. if not val_loss < float(best_val_loss): return False (a tie is no improvement) -> bool
    #   2. best_val_loss.assign(val_loss), before saving, so the checkpoint holds the new best
    #   3. manager.save(checkpoint_number=step) and return True -> bool
    # BEGIN SOLUTION
    if not val_loss < float(best_val_loss):
        return False
    best_val_loss.assign(val_loss)
    manager.save(checkpoint_number=step)
    return True
    # END SOLUTION


def write_summaries(
    writer: tf.summary.SummaryWriter, step: int, scalars: dict[str, float], texts: dict[str, str] | None = None
) -> None:
    """Writes `scalars` and `texts` to TensorBoard at `step` through `writer`, then flushes it to disk.

    Each scalar `{tag: value}` is one `tf.summary.scalar(tag, value)` and each text `{tag: text}` one
    `tf.summary.text(tag, text)`, all recorded at `step`. When this returns, the event file holds them (the writer
    is flushed), so TensorBoard shows them while the run goes on and nothing is lost if the run is killed.
    The loop's tags: `train/loss`, `train/perplexity`, `train/grad_norm`, `train/lr`, `train/tokens_per_sec` every
    `log_every` steps; `val/loss`, `val/perplexity`, `val/bits_per_char` and the text `sample` at evaluations.
    """
    # TODO: every scalar and text at `step` inside the writer's context, then flush (~6 lines)
    #   1. with writer.as_default(): every tf.summary.scalar(tag, value, step=step), and every
    #      tf.summary.text(tag, text, step=step) of `texts` when it is not None
    #   2. writer.flush(), or the events wait in memory for minutes
    # BEGIN SOLUTION
    with writer.as_default():
        for tag, value in scalars.items():
            tf.summary.scalar(tag, value, step=step)
        for tag, text in (texts or {}).items():
            tf.summary.text(tag, text, step=step)
    writer.flush()
    # END SOLUTION


# ----------------------------------------------------------------------------------------------------------------
# The loop itself.
# ----------------------------------------------------------------------------------------------------------------


def fit(run: loop.Run, config: TrainConfig) -> None:
    """The training loop: trains from `run.step` (0, or the step `restore_latest` resumed at) until `run.batches()`
    ends, logging, evaluating and saving checkpoints on the way.

    For each batch `(inputs, labels)` of `run.batches()` (int32 `(B, T)` each; it ends at `config.steps`, after a
    final step, or when the run is stopped):
    - one update: `run.train_step(inputs, labels)` (your `train_step`, compiled; `run.step` goes up by one), then
      `step = run.step`;
    - the step *evaluates* when `step` is a multiple of `config.eval_every` or when `run.is_final(step)` (the
      session's last step; call it at every step, as often as you like: `run.batches()` ends after that step);
    - every `config.log_every` steps, and at every evaluation: `run.log(step, run.train_scalars())`, the
      training scalars (`train/loss`, ...) averaged since the previous log;
    - at an evaluation, inside `with run.evaluation_weights():`, `evaluate(run.forward, run.validation_data(final=
      run.is_final(step)))` -> `(val_loss, val_perplexity)`, then `save_if_best(run.best, val_loss,
      run.best_val_loss, step)` -> `best`, and `text = run.sample()` (a str, or None when sampling is off);
      after the block, `run.log(step, {"val/loss": val_loss, "val/perplexity": val_perplexity}, {"sample": text})`
      (without the texts when `text` is None), and `run.record(step, val_loss, val_perplexity, best)`
      (history.jsonl and the printed line);
    - a checkpoint, `run.save()` (the `latest` manager's save, numbered by the step), at every evaluation (so
      history.jsonl never runs ahead of the checkpoints) and whenever `save_due(step, run.clock(), last_step,
      last_time, config.save_every_steps, config.save_every_minutes)` says so, where `last_step` and `last_time`
      are the step and `run.clock()` of the last save (before any: the step the loop started at, and the clock
      when it started).
    After the loop, the last step taken is saved unless it was just saved (a run stopped early resumes there).
    Ctrl-C, divergence and a full disk are the given code's: they end the loop with an exception.
    """
    # TODO: the loop over batches: step, log, evaluate and keep the best, save on time or steps (~20 lines)
    #   1. last_step, last_time = run.step, run.clock(): the resumed step counts as saved
    #   2. for inputs, labels in run.batches(): run.train_step(inputs, labels); step = run.step -> int
    #   3. final = run.is_final(step); evaluating = step % config.eval_every == 0 or final -> two bools
    #   4. if step % config.log_every == 0 or evaluating: run.log(step, run.train_scalars())
    #   5. if evaluating: with run.evaluation_weights(): evaluate(...), save_if_best(...) and run.sample(); then
    #      run.log the two val scalars and the sample (when it is not None), and run.record(...)
    #   6. if evaluating or save_due(...): run.save(); last_step, last_time = step, run.clock()
    #   7. after the loop: run.save() when run.step != last_step
    # BEGIN SOLUTION
    last_step, last_time = run.step, run.clock()
    for inputs, labels in run.batches():
        run.train_step(inputs, labels)
        step = run.step
        final = run.is_final(step)
        evaluating = step % config.eval_every == 0 or final
        if step % config.log_every == 0 or evaluating:
            run.log(step, run.train_scalars())
        if evaluating:
            with run.evaluation_weights():
                val_loss, val_perplexity = evaluate(run.forward, run.validation_data(final=final))
                best = save_if_best(run.best, val_loss, run.best_val_loss, step)
                sample = run.sample()
            texts = {"sample": sample} if sample is not None else None
            run.log(step, {"val/loss": val_loss, "val/perplexity": val_perplexity}, texts)
            run.record(step, val_loss, val_perplexity, best)
        due = save_due(step, run.clock(), last_step, last_time, config.save_every_steps, config.save_every_minutes)
        if evaluating or due:
            run.save()
            last_step, last_time = step, run.clock()
    if run.step != last_step:
        run.save()
    # END SOLUTION


def train(
    model_fn: Callable[[], keras.Model],
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    **options,
) -> dict:
    """Returns the results of `lmkit.loop.train` (given) run with this file's functions (`FUNCTIONS`: your `fit`);
    `options` are that function's (`strategy`, `tracker`, `progress`, `log`, `stop_at`, ...)."""
    return loop.train(model_fn, train_ids, val_ids, config, run_dir, functions=FUNCTIONS, **options)


# What the given loop and lmkit.checkpoints.Checkpoints call: this file's functions.
FUNCTIONS = loop.LoopFunctions(
    fit=fit,
    train_step=train_step,
    evaluate=evaluate,
    make_managers=make_managers,
    restore_latest=restore_latest,
    save_due=save_due,
    save_if_best=save_if_best,
    write_summaries=write_summaries,
)
