"""The training loop every language model shares: checkpoints that resume, tracking, a progress bar (given).

`train` calls part 5's functions, passed in as a `LoopFunctions` (`assignment.train.train` passes the student's
`assignment.train.FUNCTIONS`): `train_step` and `evaluate`; `make_managers`, `restore_latest`, `save_due` and
`save_if_best` through `lmkit.checkpoints.Checkpoints`; `write_summaries` through the TensorBoard tracker
(`lmkit.tracking`). lmkit never imports `assignment`.
A run directory (`runs/<name>/`) holds everything a run needs to resume or to generate text:
    config.json      the model kind and config, the tokenizer kind, the corpus and the training settings
    tokenizer.json   the fitted tokenizer
    ckpt/            the latest checkpoints (step, model, optimizer, data position), the last `keep_last` kept
    best/            the checkpoint with the lowest validation loss so far
    logs/            TensorBoard event files
    wandb/           the W&B run, with `--wandb` (offline unless W&B is set up; `wandb sync` uploads it)
    history.jsonl    one JSON line per evaluation (step, wall time, losses, bits/char, tokens/s), read by `compare`
"""

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from lmkit.checkpoints import Checkpoints
from lmkit.data import bits_per_char, check_data_size, random_windows, validation_batches, validation_tokens
from lmkit.distribute import is_chief
from lmkit.errors import CheckpointError, Diverged
from lmkit.history import History
from lmkit.optim import evaluation_weights, make_optimizer
from lmkit.tracking import TensorBoardTracker, Tracker, Trackers

MAX_LOGGED_PERPLEXITY = (
    1e30  # TensorBoard's scalars are float32: a larger perplexity (a loss above ~69) cannot be logged
)


@dataclasses.dataclass(frozen=True)
class LoopFunctions:
    """Part 5's functions, which the given loop calls (`assignment.train.FUNCTIONS` holds the student's)."""

    train_step: Callable  # (model, optimizer, inputs, labels, clip_norm=...) -> (loss, grad_norm)
    evaluate: Callable  # (model, dataset) -> (loss, perplexity)
    make_managers: Callable  # (directory, objects, best_objects, keep_last) -> (latest, best) managers
    restore_latest: Callable  # (manager) -> the step to resume at
    save_due: Callable  # (step, now, last_step, last_time, every_steps, every_minutes) -> bool
    save_if_best: Callable  # (manager, val_loss, best_val_loss, step) -> bool
    write_summaries: Callable  # (writer, step, scalars, texts=None) -> None


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
    save_every_minutes: float = 5.0  # ... and whenever this much time has passed since the last one (and at every
    # evaluation, so history.jsonl never runs ahead of the checkpoints)
    keep_last: int = 3  # the latest checkpoints kept in ckpt/
    jit_compile: bool = True  # compile the train step with XLA (single device only)
    sample_at_eval: bool = True  # log a text sample to TensorBoard at each evaluation (False: losses only)
    time_budget_minutes: float = 0.0  # stop (checkpointed, evaluated) after this long; rerun to go on (0: none)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in fields})


def compile_train_step(
    train_step: Callable,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    clip_norm: float,
    counters: Sequence[tf.Variable] = (),
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = True,
) -> Callable:
    """Returns `step(inputs, labels) -> (loss, grad_norm)`: `train_step` compiled into one graph.

    `train_step(model, optimizer, inputs, labels, clip_norm=...) -> (loss, grad_norm)` is part 5's function.

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


class CompiledForward:
    """`model(inputs, training=False)` as one `tf.function`: what the loop hands `evaluate`.

    Called eagerly, a Keras model dispatches every layer and op from Python, which cost the `nanogpt-cpu` run more
    than its forward passes (an evaluation over the whole validation tail took longer than 250 training steps).
    Compiled once with a relaxed batch size, the last, smaller batch reuses the graph. Any other attribute is the
    model's, so `evaluate` sees a model it can call as usual.
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self._forward = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)

    def __call__(self, inputs, training=False):
        """Returns logits `(B, T, V)` of int32 tokens `(B, T)`; `training=True` runs the model as it is."""
        return self.model(inputs, training=True) if training else self._forward(inputs)

    def __getattr__(self, name):
        return getattr(self.model, name)


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
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    model_fn: Callable[[], keras.Model],
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    functions: LoopFunctions,
    strategy: tf.distribute.Strategy | None = None,
    trackers: Sequence[Tracker] = (),
    setup_fn: Callable[[keras.Model], None] | None = None,
    sample_fn: Callable[[keras.Model], str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_at: int | None = None,
    fresh_start: str = "starting from scratch",
    val_chars: Callable[[int], float | None] | None = None,
) -> dict:
    """Trains the model of `model_fn` up to `config.steps` steps, resuming from `run_dir` when it holds a
    checkpoint, and returns a dict of results (`step`, `val_loss`, `val_perplexity`, `tokens_per_sec`, `model`, ...).

    Args:
        model_fn: called with no arguments (inside the strategy's scope), returns a `keras.Model` mapping int32
            tokens `(B, T)` to logits `(B, T, V)`.
        train_ids, val_ids: int arrays of token ids, the training and validation streams.
        config: a `TrainConfig`.
        run_dir: the run directory; checkpoints go to `ckpt/` and `best/`, logs to `logs/`.
        functions: part 5's functions (`LoopFunctions`): `train_step(model, optimizer, inputs, labels,
            clip_norm=...) -> (loss, grad_norm)`, `evaluate(model, dataset) -> (loss, perplexity)`, the checkpoint
            functions `Checkpoints` calls, and `write_summaries`, which writes TensorBoard's logs.
        strategy: a `tf.distribute.Strategy` (e.g. `MirroredStrategy`), or None for one device.
        trackers: more trackers (`lmkit.tracking`, e.g. `WandbTracker`) that get the same scalars and samples as
            TensorBoard (on the chief only); the loop closes them.
        setup_fn: called with the built model before the optimizer is made: loads weights to fine-tune, freezes.
        sample_fn: called with the model at each evaluation (unless `config.sample_at_eval` is False); returns a
            text sample for TensorBoard.
        progress: show a tqdm progress bar.
        log: where messages go (`print` by default).
        stop_at: stop after this step with a checkpoint, as if interrupted there (the schedule still runs to
            `config.steps`); the result then has `stopped=True`. `config.time_budget_minutes` stops the same way
            (with an evaluation) once the loop has run that long; the result then also has `out_of_time=True`.
        fresh_start: the message when `run_dir` has no checkpoint yet.
        val_chars: `val_chars(n)` is the number of characters of the validation text that `val_ids[1 : 1 + n]`
            spell (the labels of the first `n // seq_len` validation windows; `data.ValidationCharacters`), or
            None when unknown. With it every evaluation also reports the validation loss in bits per character:
            its total in nats over the text evaluated, divided by that text's characters and by ln 2, the measure
            that compares tokenizers.

    Raises:
        CheckpointError: `run_dir` shows an earlier run (history or a best checkpoint) but no checkpoint of `ckpt/`
            reads back, or a checkpoint cannot be written (a full disk); nothing is deleted.
        Diverged: the loss became NaN or infinite; the last good checkpoint is kept.
    """
    from tqdm.auto import tqdm

    cfg = config
    train_step, evaluate = functions.train_step, functions.evaluate
    run_dir = Path(run_dir)
    check_data_size(train_ids, val_ids, cfg.batch_size, cfg.seq_len)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if cfg.batch_size % replicas:
        raise ValueError(f"--batch-size must be a multiple of the {replicas} replicas; got {cfg.batch_size}")
    chief = is_chief(strategy)
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
        run_dir,
        model,
        optimizer,
        cfg.keep_last,
        cfg.save_every_steps,
        cfg.save_every_minutes,
        chief,
        log,
        functions=functions,
    )
    restored = ckpts.restore()
    history = History(run_dir / "history.jsonl", writer=chief)
    if restored is None and chief:
        earlier = history.read()
        if earlier or ckpts.best.latest_checkpoint:
            raise CheckpointError(
                f"{run_dir / 'ckpt'} holds no checkpoint that reads back, but {run_dir} shows an earlier run ("
                + (f"evaluations up to step {earlier[-1]['step']} in history.jsonl" if earlier else "a best checkpoint")
                + "); refusing to start from scratch over it: restore ckpt/ from a copy, or pass --overwrite to "
                "delete the run and start again"
            )
    log(f"restored from step {restored} ({ckpts.restored_path})" if restored is not None else fresh_start)
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
            val_bits_per_char=last.get("val_bits_per_char"),
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
        train_step,
        model,
        optimizer,
        cfg.clip_norm,
        (ckpts.step, ckpts.data_position),
        strategy,
        cfg.jit_compile and strategy is None,
    )
    tracker = Trackers(
        [TensorBoardTracker(run_dir / "logs", functions.write_summaries), *trackers] if chief else [], log=log
    )
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def bits_per_character(val_loss, final):
        n = validation_tokens(len(val_ids), cfg.seq_len, cfg.eval_batch_size, 0 if final else cfg.max_eval_batches)
        chars = val_chars(n) if val_chars is not None else None
        if not chars or not math.isfinite(val_loss):
            return None
        return round(bits_per_char(val_loss, n, chars), 6)

    forward = CompiledForward(model) if strategy is None else model

    def run_evaluation(step, train_loss, tokens_per_sec, final=False):
        with evaluation_weights(model, optimizer):
            val_loss, val_perplexity = evaluate(forward, full_val_data if final else val_data)
            val_bpc = bits_per_character(val_loss, final)
            if not math.isfinite(val_loss):
                raise Diverged(f"the validation loss is {val_loss} at step {step}", ckpts.last_saved_path())
            best = ckpts.save_if_best(val_loss)
            sampling = sample_fn is not None and chief and cfg.sample_at_eval
            sample = sample_fn(model) if sampling else None
        scalars = {"val/loss": val_loss, "val/perplexity": min(val_perplexity, MAX_LOGGED_PERPLEXITY)}
        if val_bpc is not None:
            scalars["val/bits_per_char"] = val_bpc
        tracker.log(step, scalars, {"sample": sample} if sample is not None else None)
        record = dict(
            step=step,
            train_loss=train_loss,
            val_loss=val_loss,
            val_perplexity=val_perplexity,
            val_bits_per_char=val_bpc,
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
                        train_step,
                        model,
                        optimizer,
                        cfg.clip_norm,
                        (ckpts.step, ckpts.data_position),
                        None,
                        jit_compile=False,
                    )
                    loss, grad_norm = step_fn(inputs, labels)
                loss, grad_norm = float(loss), float(grad_norm)
                elapsed = time.perf_counter() - started
                ckpts.train_time.assign_add(elapsed)
                ckpts.wall_time.assign(wall_base + time.perf_counter() - wall_start)
                step = int(ckpts.step)
                bar.update(1)
                if not math.isfinite(loss) or not math.isfinite(grad_norm):
                    what = "training loss" if not math.isfinite(loss) else "gradient norm"
                    value = loss if not math.isfinite(loss) else grad_norm
                    raise Diverged(f"the {what} is {value} at step {step}", ckpts.last_saved_path())
                window_loss, window_norm = window_loss + loss, window_norm + grad_norm
                window_steps, window_time = window_steps + 1, window_time + elapsed
                evaluating = step % cfg.eval_every == 0 or step == cfg.steps
                if step % cfg.log_every == 0 or evaluating:
                    train_loss = window_loss / window_steps
                    tokens_per_sec = round(window_steps * tokens_per_step / window_time, 1)
                    speeds.append(tokens_per_sec)
                    bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
                    tracker.log(
                        step,
                        {
                            "train/loss": train_loss,
                            "train/perplexity": min(math.exp(min(train_loss, 700)), MAX_LOGGED_PERPLEXITY),
                            "train/grad_norm": window_norm / window_steps,
                            "train/lr": float(optimizer.learning_rate),
                            "train/tokens_per_sec": tokens_per_sec,
                        },
                    )
                    window_loss, window_norm, window_steps, window_time = 0.0, 0.0, 0, 0.0
                if evaluating:
                    record, best, _ = run_evaluation(step, train_loss, tokens_per_sec, final=step == cfg.steps)
                    bar.write(
                        f"step {step}: train loss {train_loss:.4f}, val loss {record['val_loss']:.4f}, "
                        f"perplexity {record['val_perplexity']:.2f}"
                        + (f", {record['val_bits_per_char']:.4f} bits/char" if record["val_bits_per_char"] else "")
                        + (" (best)" if best else "")
                    )
                if evaluating and ckpts.last_saved_step != step:
                    ckpts.save()  # every evaluation has its checkpoint: history never runs ahead of ckpt/
                else:
                    ckpts.maybe_save()
    except KeyboardInterrupt:
        bar.close()
        path = ckpts.save()  # every worker of a multi-worker run takes part in a save
        log(f"interrupted at step {int(ckpts.step)}: saved {path}; run the same command again to resume")
        tracker.close()
        raise
    except BaseException:
        tracker.close()
        raise
    finally:
        bar.close()
    if out_of_time and (record is None or record["step"] != int(ckpts.step)):
        record, _, _ = run_evaluation(int(ckpts.step), train_loss, tokens_per_sec, final=True)
    ckpts.wall_time.assign(wall_base + time.perf_counter() - wall_start)  # with the last evaluation
    if ckpts.last_saved_step != int(ckpts.step):
        ckpts.save()
    ckpts.close()
    tracker.close()
    stopped = int(ckpts.step) < cfg.steps
    evaluated = record is not None and record["step"] == int(ckpts.step)
    result.update(
        stopped=stopped,
        out_of_time=out_of_time,
        step=int(ckpts.step),
        val_loss=record["val_loss"] if evaluated else None,
        val_perplexity=record["val_perplexity"] if evaluated else None,
        val_bits_per_char=record["val_bits_per_char"] if evaluated else None,
        tokens_per_sec=float(np.median(speeds[1:] or speeds)) if speeds else None,
        train_time=float(ckpts.train_time),
        wall_time=float(ckpts.wall_time),
        history=history.read(),
    )
    return result


#
