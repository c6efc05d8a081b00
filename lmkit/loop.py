"""What part 5's training loop drives: the model, optimizer, batches, trackers and checkpoints of a run (given).

`train` builds a session and hands it, as a `Run`, to part 5's loop, `fit(run, config)`; part 5's functions come in
as a `LoopFunctions` (`assignment.train.train` passes the student's `assignment.train.FUNCTIONS`): `fit`,
`train_step` (compiled by `Run.train_step`) and `evaluate` (which `fit` calls); `make_managers`, `restore_latest`,
`save_due` and `save_if_best` through `lmkit.checkpoints.Checkpoints` and `fit`; `write_summaries` through the
TensorBoard tracker (`lmkit.tracking`). Recovery, Ctrl-C, the progress bar and history stay here.
lmkit never imports `assignment`.
A run directory (`runs/<name>/`) holds everything a run needs to resume or to generate text:
    config.json      the model kind and config, the tokenizer kind, the corpus and the training settings
    tokenizer.json   the fitted tokenizer
    ckpt/            the latest checkpoints (step, model, optimizer, data position), the last `keep_last` kept
    best/            the checkpoint with the lowest validation loss so far
    logs/            TensorBoard event files
    wandb/           the W&B run, with `--wandb` (offline unless W&B is set up; `wandb sync` uploads it)
    wandb-id.txt     the W&B run's id, so every session of the run directory logs to the same W&B run
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

    fit: Callable  # (run, config) -> None: the loop itself, driving a `Run`
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


class Run:
    """One training session, as part 5's `fit` drives it: the given pieces of the loop.

    `fit(run, config)` (the student's loop) calls the public methods and attributes below; what a course does not
    ask students to write stays here: the compiled step and its XLA fallback, divergence checks, the progress bar,
    tokens/s, Ctrl-C and time budgets, history.jsonl, bits per character, and a full disk turned into one clear
    error.

    Attributes:
        config: the run's `TrainConfig`.
        step: the number of optimizer updates done so far (an int; the restored step when the session starts).
        latest, best: the two `tf.train.CheckpointManager`s of `make_managers` (`ckpt/` and `best/`).
        best_val_loss: float64 scalar `tf.Variable`, the lowest validation loss so far (saved in checkpoints).
        forward: the model to evaluate, `forward(inputs, training=False) -> logits (B, T, V)` (compiled).
    """

    def __init__(
        self,
        config: TrainConfig,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        ckpts: Checkpoints,
        *,
        train_step: Callable,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        strategy: tf.distribute.Strategy | None,
        tracker: Trackers,
        history: History,
        bar,
        stop: _StopRequests,
        stop_at: int | None,
        sample_fn: Callable[[keras.Model], str] | None,
        val_chars: Callable[[int], float | None] | None,
        chief: bool,
        log: Callable[[str], None],
    ):
        cfg = self.config = config
        self.latest, self.best, self.best_val_loss = ckpts.latest, ckpts.best, ckpts.best_val_loss
        self.forward = CompiledForward(model) if strategy is None else model
        self._model, self._optimizer, self._ckpts, self._train_step = model, optimizer, ckpts, train_step
        self._strategy, self._tracker, self._history, self._bar = strategy, tracker, history, bar
        self._stop, self._stop_at, self._sample_fn, self._val_chars = stop, stop_at, sample_fn, val_chars
        self._val_ids, self._chief, self._log_line = val_ids, chief, log
        stream = random_windows(train_ids, cfg.batch_size, cfg.seq_len, cfg.seed, start=int(ckpts.data_position))
        if strategy is not None:
            stream = strategy.experimental_distribute_dataset(stream)
        self._iterator = iter(stream)
        self._val_data = validation_batches(val_ids, cfg.seq_len, cfg.eval_batch_size, cfg.max_eval_batches)
        self._full_val_data = validation_batches(val_ids, cfg.seq_len, cfg.eval_batch_size)
        self._step_fn = self._compile(cfg.jit_compile and strategy is None)
        self._window = [0.0, 0.0, 0, 0.0]  # loss, grad norm, steps, seconds since the last train_scalars()
        self._train_loss = self._tokens_per_sec = None
        self._final_step = None
        self.speeds = []  # tokens/s of every logging window of this session (the first includes compiling)
        self.records = []  # this session's evaluations (history.jsonl's lines)
        self.out_of_time = False
        self.wall_start, self.wall_base = time.perf_counter(), float(ckpts.wall_time)

    @property
    def step(self) -> int:
        return int(self._ckpts.step)

    def clock(self) -> float:
        """Seconds on a monotonic clock (for `save_due`)."""
        return time.monotonic()

    def batches(self):
        """Yields `(inputs, labels)`, int32 `(B, T)` each, one batch per step, until `step` reaches
        `config.steps`; it ends earlier after a final step (`is_final`), at `stop_at`, and raises
        `KeyboardInterrupt` on Ctrl-C or SIGTERM (the given code then saves a checkpoint)."""
        while self.step < self.config.steps and self._final_step is None:
            if self._stop.requested:
                raise KeyboardInterrupt
            if self._stop_at is not None and self.step >= self._stop_at:
                return
            yield next(self._iterator)

    def train_step(self, inputs, labels) -> tuple[float, float]:
        """Runs part 5's `train_step` (compiled) on one batch; `step` goes up by one. Returns `(loss, grad_norm)`
        as Python floats; raises `Diverged` when either is NaN or infinite."""
        started = time.perf_counter()
        try:
            loss, grad_norm = self._step_fn(inputs, labels)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            if not (self.config.jit_compile and self._strategy is None and "XLA" in str(error)):
                raise
            # e.g. a recurrent model's tf.while_loop without maximum_iterations: XLA cannot compile it, and
            # nothing ran, so the same step runs again without XLA.
            self._log_line(
                f"XLA cannot compile this model's train step ({str(error).splitlines()[0][:100]}); "
                f"running it without jit_compile"
            )
            self._step_fn = self._compile(jit_compile=False)
            loss, grad_norm = self._step_fn(inputs, labels)
        loss, grad_norm = float(loss), float(grad_norm)
        elapsed = time.perf_counter() - started
        ckpts = self._ckpts
        ckpts.train_time.assign_add(elapsed)
        ckpts.wall_time.assign(self.wall_base + time.perf_counter() - self.wall_start)
        self._bar.update(1)
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            what = "training loss" if not math.isfinite(loss) else "gradient norm"
            value = loss if not math.isfinite(loss) else grad_norm
            raise Diverged(f"the {what} is {value} at step {self.step}", ckpts.last_saved_path())
        w = self._window
        w[0], w[1], w[2], w[3] = w[0] + loss, w[1] + grad_norm, w[2] + 1, w[3] + elapsed
        return loss, grad_norm

    def is_final(self, step: int) -> bool:
        """True when `step` is this session's last: `config.steps`, or the time budget has run out. The last
        step is evaluated on the whole validation split, and `batches` yields nothing after it."""
        cfg = self.config
        if self._final_step is None:
            budget = cfg.time_budget_minutes
            over_budget = bool(budget) and time.perf_counter() - self.wall_start > 60 * budget
            if step >= cfg.steps or over_budget:
                self._final_step = step
                self.out_of_time = over_budget and step < cfg.steps
        return self._final_step == step

    def train_scalars(self) -> dict[str, float]:
        """The training scalars since the previous call, for `log`: `train/loss` and `train/grad_norm` (means
        over those steps), `train/perplexity`, `train/lr`, `train/tokens_per_sec`."""
        loss_sum, norm_sum, steps, seconds = self._window
        if not steps:
            raise ValueError("train_scalars() needs at least one train_step since its previous call")
        self._window = [0.0, 0.0, 0, 0.0]
        self._train_loss = loss_sum / steps
        self._tokens_per_sec = round(steps * self.config.batch_size * self.config.seq_len / seconds, 1)
        self.speeds.append(self._tokens_per_sec)
        self._bar.set_postfix(loss=f"{self._train_loss:.4f}", tok_s=f"{self._tokens_per_sec:,.0f}", refresh=False)
        return {
            "train/loss": self._train_loss,
            "train/perplexity": math.exp(min(self._train_loss, 700)),
            "train/grad_norm": norm_sum / steps,
            "train/lr": float(self._optimizer.learning_rate),
            "train/tokens_per_sec": self._tokens_per_sec,
        }

    def log(self, step: int, scalars: dict[str, float], texts: dict[str, str] | None = None) -> None:
        """Records `scalars` and `texts` at `step` in every tracker: TensorBoard (through part 5's
        `write_summaries`) and, with `--wandb`, Weights & Biases."""
        # TensorBoard's scalars are float32: a larger perplexity cannot be logged
        capped = {k: min(v, MAX_LOGGED_PERPLEXITY) if "perplexity" in k else v for k, v in scalars.items()}
        self._tracker.log(int(step), capped, texts)

    def evaluation_weights(self):
        """A context: inside it the model holds the weights to evaluate and to keep as the best checkpoint (they
        differ from the trained ones only for schedule-free AdamW); the trained weights come back on exit."""
        return evaluation_weights(self._model, self._optimizer)

    def validation_data(self, final: bool = False):
        """The validation batches for `evaluate`: a capped number of them (`config.max_eval_batches`), or all of
        them when `final`."""
        return self._full_val_data if final else self._val_data

    def sample(self) -> str | None:
        """A text sample of the model (None when sampling is off), for the text summary `sample`."""
        if self._sample_fn is None or not self.config.sample_at_eval or not self._chief:
            return None
        return self._sample_fn(self._model)

    def record(self, step: int, val_loss: float, val_perplexity: float, best: bool) -> None:
        """Ends an evaluation: raises `Diverged` on a NaN validation loss, logs `val/bits_per_char` when the
        text's characters are known, appends the line of `history.jsonl` and prints the step's line."""
        step, val_loss, val_perplexity = int(step), float(val_loss), float(val_perplexity)
        if not math.isfinite(val_loss):
            raise Diverged(f"the validation loss is {val_loss} at step {step}", self._ckpts.last_saved_path())
        val_bpc = self._bits_per_character(val_loss, final=self._final_step == step)
        if val_bpc is not None:
            self.log(step, {"val/bits_per_char": val_bpc})
        record = dict(
            step=step,
            train_loss=self._train_loss,
            val_loss=val_loss,
            val_perplexity=val_perplexity,
            val_bits_per_char=val_bpc,
            train_time=round(float(self._ckpts.train_time), 3),
            wall_time=round(float(self._ckpts.wall_time), 3),
            tokens_per_sec=self._tokens_per_sec,
            lr=float(self._optimizer.learning_rate),
        )
        self._history.append(record)
        self.records.append(record)
        train = f"train loss {self._train_loss:.4f}, " if self._train_loss is not None else ""
        self._bar.write(
            f"step {step}: {train}val loss {val_loss:.4f}, perplexity {val_perplexity:.2f}"
            + (f", {val_bpc:.4f} bits/char" if val_bpc else "")
            + (" (best)" if best else "")
        )

    def save(self) -> str:
        """`latest.save(checkpoint_number=step)`, with a full disk turned into one clear error; returns the path."""
        return self._ckpts.save()

    def _compile(self, jit_compile):
        counters = (self._ckpts.step, self._ckpts.data_position)
        return compile_train_step(
            self._train_step,
            self._model,
            self._optimizer,
            self.config.clip_norm,
            counters,
            self._strategy,
            jit_compile,
        )

    def _bits_per_character(self, val_loss, final):
        cfg = self.config
        n = validation_tokens(
            len(self._val_ids), cfg.seq_len, cfg.eval_batch_size, 0 if final else cfg.max_eval_batches
        )
        chars = self._val_chars(n) if self._val_chars is not None else None
        if not chars or not math.isfinite(val_loss):
            return None
        return round(bits_per_char(val_loss, n, chars), 6)


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
    """Trains the model of `model_fn` up to `config.steps` steps with part 5's loop (`functions.fit`), resuming
    from `run_dir` when it holds a checkpoint, and returns a dict of results (`step`, `val_loss`,
    `val_perplexity`, `tokens_per_sec`, `model`, ...).

    Args:
        model_fn: called with no arguments (inside the strategy's scope), returns a `keras.Model` mapping int32
            tokens `(B, T)` to logits `(B, T, V)`.
        train_ids, val_ids: int arrays of token ids, the training and validation streams.
        config: a `TrainConfig`.
        run_dir: the run directory; checkpoints go to `ckpt/` and `best/`, logs to `logs/`.
        functions: part 5's functions (`LoopFunctions`): `fit(run, config)`, the loop itself, driving a `Run`;
            `train_step(model, optimizer, inputs, labels, clip_norm=...) -> (loss, grad_norm)`,
            `evaluate(model, dataset) -> (loss, perplexity)`, the checkpoint functions `Checkpoints` calls, and
            `write_summaries`, which writes TensorBoard's logs.
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

    tracker = Trackers(
        [TensorBoardTracker(run_dir / "logs", functions.write_summaries), *trackers] if chief else [], log=log
    )
    bar = tqdm(
        total=cfg.steps,
        initial=int(ckpts.step),
        unit="step",
        dynamic_ncols=True,
        disable=not progress,
        desc=run_dir.name,
        smoothing=0.1,
    )
    try:
        with _StopRequests() as stop:
            run = Run(
                cfg,
                model,
                optimizer,
                ckpts,
                train_step=functions.train_step,
                train_ids=train_ids,
                val_ids=val_ids,
                strategy=strategy,
                tracker=tracker,
                history=history,
                bar=bar,
                stop=stop,
                stop_at=stop_at,
                sample_fn=sample_fn,
                val_chars=val_chars,
                chief=chief,
                log=log,
            )
            try:
                functions.fit(run, cfg)
            except (tf.errors.OpError, OSError) as error:
                failed = ckpts.failed_save(error)  # a save of part 5's loop that a full disk (or else) broke
                if failed is None:
                    raise
                raise failed from None
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
    ckpts.wall_time.assign(run.wall_base + time.perf_counter() - run.wall_start)
    ckpts.close()
    tracker.close()
    records = run.records
    record = records[-1] if records else None
    stopped = int(ckpts.step) < cfg.steps
    evaluated = record is not None and record["step"] == int(ckpts.step)
    speeds = run.speeds
    result.update(
        stopped=stopped,
        out_of_time=run.out_of_time,
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
