"""Checkpoints that survive kills, damage and full disks; loading weights; freezing (given, not graded).

A checkpoint is a pair of files, `ckpt-N.index` and `ckpt-N.data-00000-of-00001`, written by
`tf.train.CheckpointManager`, plus one small index file (`checkpoint`) naming the latest ones. The files on disk are
the truth: when the index is missing, damaged or behind, it is rebuilt from them; a checkpoint that does not read back
whole is skipped (its files kept aside, renamed `*.unreadable`) and the next older one is used; what an interrupted
save or deletion leaves behind (half-written `_temp` folders, a data file without its index) is removed. A run starts
from scratch only when nothing at all can be restored.
"""

import errno
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from lmkit.errors import CheckpointError

TIMESTAMP_LINE = r"\s*(all_model_checkpoint_timestamps|last_preserved_timestamp):.*"
CHECKPOINT_FILE = re.compile(r"^(?P<name>[a-z]+)-(?P<step>\d+)\.(?P<kind>index|data-\d{5}-of-(?P<shards>\d{5}))$")


def model_state(model: keras.Model) -> tf.Module:
    """Returns a trackable object holding every variable of `model`, in order, for `tf.train.Checkpoint`.

    Keras 3 layers keep lists of sublayers (a transformer's `blocks`, a recurrent model's `cells`) in Keras' own
    tracking, which TensorFlow's checkpoint graph does not follow, and dropout's random-number state outside the
    layers' attributes; `model.variables` lists them all (weights, frozen or not, and RNG states), in an order
    fixed by the model's code. Saving the RNG states makes a resumed run draw the same dropout masks.
    """
    state = tf.Module()
    state.values = [v.value for v in model.variables]
    return state


# ----------------------------------------------------------------------------------------------------------------
# Reading a checkpoint folder from its files
# ----------------------------------------------------------------------------------------------------------------


def unreadable(prefix) -> str | None:
    """Returns why the checkpoint at `prefix` (e.g. `runs/main/ckpt/ckpt-200`) does not read back whole, or None
    when every tensor in it reads."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # a truncated file raises IndexError; others OpError or ValueError
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
    return None


def scan(directory, name: str) -> tuple[dict[int, str], list[Path]]:
    """Returns `(complete, debris)` of a checkpoint folder: `{step: prefix}` of the checkpoints whose files are all
    there, and the paths that cannot be part of any checkpoint (unfinished `_temp` writes, a temporary index file,
    a data file without its index, an index without its data)."""
    directory = Path(directory)
    files, debris = {}, []
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        match = CHECKPOINT_FILE.match(path.name)
        if (path.is_dir() and path.name.endswith("_temp")) or path.name.startswith("checkpoint.tmp"):
            debris.append(path)  # an unfinished save, or an index write cut short (TensorFlow's or `write_index`'s)
        elif match and match["name"] == name:
            files.setdefault(int(match["step"]), []).append((match["kind"], match["shards"], path))
    complete = {}
    for step, parts in files.items():
        shards = {int(s) for kind, s, _ in parts if s}
        data = [kind for kind, s, _ in parts if s]
        has_index = any(kind == "index" for kind, _, _ in parts)
        if has_index and len(shards) == 1 and len(data) == shards.pop():
            complete[step] = str(directory / f"{name}-{step}")
        else:
            debris += [path for _, _, path in parts]
    return complete, debris


def read_index(directory) -> list[int] | None:
    """Returns the steps of the checkpoints the index file of `directory` lists, oldest first, or None when the
    index is missing or cannot be parsed."""
    path = Path(directory) / "checkpoint"
    if not path.is_file():
        return None
    listed = []
    for line in path.read_text(errors="replace").splitlines():
        match = re.fullmatch(r'\s*(model_checkpoint_path|all_model_checkpoint_paths): "([^"]+)"\s*', line)
        if match:
            if match[1] == "all_model_checkpoint_paths":
                listed.append(match[2])
        elif line.strip() and not re.fullmatch(TIMESTAMP_LINE, line):
            return None
    steps = [re.search(r"-(\d+)$", p) for p in listed]
    return [int(m[1]) for m in steps] if steps and all(steps) else None


def write_index(directory, prefixes: list[str]) -> None:
    """Rewrites the index file of `directory` to list `prefixes` (oldest first; the last is the latest)."""
    names = [Path(p).name for p in prefixes]  # relative to `directory`, as CheckpointManager writes them
    # CheckpointManager deletes only the checkpoints whose time stamp is after `last_preserved_timestamp`.
    stamps = [Path(str(p) + ".index").stat().st_mtime for p in prefixes]
    text = (
        f'model_checkpoint_path: "{names[-1]}"\n'
        + "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in names)
        + "".join(f"all_model_checkpoint_timestamps: {t!r}\n" for t in stamps)
        + f"last_preserved_timestamp: {min(stamps) - 1.0!r}\n"
    )
    tmp = Path(directory) / "checkpoint.tmp"
    tmp.write_text(text)
    os.replace(tmp, Path(directory) / "checkpoint")  # atomic, as TensorFlow writes it


def tidy(directory, name: str, log: Callable[[str], None] = print) -> dict[int, str]:
    """Removes the debris of interrupted saves and deletions from a checkpoint folder, and rebuilds its index from
    the checkpoint files when it is missing, damaged or does not list them; returns the complete `{step: prefix}`."""
    directory = Path(directory)
    complete, debris = scan(directory, name)
    for path in debris:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if debris:
        names = ", ".join(p.name for p in debris)
        log(f"{directory}: removed {len(debris)} file(s) left by an interrupted save or deletion ({names})")
    listed = read_index(directory)
    if complete and listed != sorted(complete):
        if listed is None:
            why = "missing" if not (directory / "checkpoint").exists() else "damaged"
        else:
            why = f"listed steps {listed}"
        log(
            f"{directory}: the checkpoint index was {why}; rebuilt it from the checkpoints on disk (steps "
            f"{sorted(complete)})"
        )
        write_index(directory, [complete[step] for step in sorted(complete)])
    return complete


def newest_readable(directory, name: str, log: Callable[[str], None] = print, set_aside: bool = False) -> str | None:
    """Returns the prefix of the newest checkpoint of `directory` that reads back whole, or None; says which ones
    it skipped and why. With `set_aside`, the files of a skipped checkpoint are renamed `*.unreadable`."""
    complete, _ = scan(directory, name)
    for step in sorted(complete, reverse=True):
        problem = unreadable(complete[step])
        if problem is None:
            return complete[step]
        files = sorted(Path(directory).glob(f"{name}-{step}.*"))
        log(f"skipping checkpoint {complete[step]}: it does not read back ({problem}); trying the one before")
        if set_aside:
            for path in files:
                path.rename(path.with_name(path.name + ".unreadable"))
    return None


# ----------------------------------------------------------------------------------------------------------------
# The checkpoints of a training run
# ----------------------------------------------------------------------------------------------------------------


class Checkpoints:
    """The checkpoints of one run directory, through the two `tf.train.CheckpointManager`s of part 5.

    Part 5's functions (`functions`: `assignment.train.FUNCTIONS`) make the managers (`make_managers`), restore the
    newest checkpoint (`restore_latest`) and decide when a save is due (`save_due`, for `maybe_save`); part 5's
    `fit` keeps the best model with `save_if_best` on `best`. This class adds what a course does not ask for:
    recovery of damaged and partial checkpoints, one clear error on a full disk (`save`, `failed_save`), and the
    scratch directories of multi-worker runs.

    `ckpt/` holds the latest `keep_last` checkpoints of everything a resumed run needs: the step, the model, the
    optimizer (its moments and its step count), the position in the data stream, the training time so far and
    the best validation loss. `best/` holds one checkpoint: the model with the lowest validation loss so far.
    TensorFlow writes a checkpoint's files first and then replaces the index atomically; whatever a kill, a damaged
    file or a full disk leaves, `restore` finds the newest checkpoint that reads back (see the module docstring).

    Args:
        directory: the run directory.
        model, optimizer: what to save (the optimizer may be None, e.g. for generation).
        keep_last: how many of the latest checkpoints to keep (at least 1).
        save_every_steps: save when the step is a multiple of this (0: never by step count).
        save_every_minutes: also save when this much time has passed since the last save (0: never by time).
        writer: False on the non-chief workers of a multi-worker run, which save to a scratch directory.
        log: where messages go (`print` by default).
        functions: part 5's functions (an `lmkit.loop.LoopFunctions`, or anything with the attributes
            `make_managers`, `restore_latest` and `save_due`).
    """

    def __init__(
        self,
        directory,
        model,
        optimizer=None,
        keep_last=3,
        save_every_steps=500,
        save_every_minutes=10.0,
        writer=True,
        log=print,
        *,
        functions,
    ):
        if keep_last < 1:
            raise CheckpointError(f"keep_last must be at least 1 (the checkpoint a run resumes from); got {keep_last}")
        self.directory = Path(directory)
        self.model = model
        self.keep_last = keep_last
        self.save_every_steps = save_every_steps
        self.save_every_minutes = save_every_minutes
        self.log = log
        self.functions = functions
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.data_position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position")
        self.train_time = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_time")
        self.wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="wall_time")
        self.best_val_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best_val_loss")
        self.objects = dict(
            step=self.step,
            data_position=self.data_position,
            train_time=self.train_time,
            wall_time=self.wall_time,
            best_val_loss=self.best_val_loss,
            model=model_state(model),
        )
        if optimizer is not None:
            self.objects["optimizer"] = optimizer
        self.best_objects = dict(step=self.step, val_loss=self.best_val_loss, model=model_state(model))
        self.writer = writer
        # A multi-worker run saves on every worker (the save is collective), but only the chief writes the run
        # directory; the others write to a scratch directory, deleted by `close`, and restore from the chief's.
        self._root = self.directory if writer else self.directory / f".scratch-{os.getpid()}"
        if writer:
            tidy(self._root / "ckpt", "ckpt", log)
            tidy(self._root / "best", "best", log)
        self._open_managers()
        self.restored_path = None
        self._last_save = time.monotonic()
        self._last_saved_step = None

    def _open_managers(self):
        self.latest, self.best = self.functions.make_managers(
            str(self._root), self.objects, self.best_objects, self.keep_last
        )
        self.checkpoint = self.latest.checkpoint

    def restore(self) -> int | None:
        """Restores the newest checkpoint that reads back whole and returns its step, or returns None when there
        is none at all (a fresh run)."""
        directory = self.directory / "ckpt"
        if not self.writer:  # a non-chief worker restores what the chief wrote
            path = tf.train.latest_checkpoint(str(directory))
        else:
            path = newest_readable(directory, "ckpt", self.log, set_aside=True)
            latest = self.latest.latest_checkpoint
            if path is not None and (latest is None or _step(latest) != _step(path)):
                complete, _ = scan(directory, "ckpt")  # the unreadable ones are set aside: `path` is the newest
                write_index(directory, [complete[step] for step in sorted(complete)])
                self._open_managers()
        if path is None:
            return None
        check_fits(self.model, path)
        if not self.writer:
            _assert_matched(self.checkpoint.restore(path), path)
        else:
            try:
                self.functions.restore_latest(self.latest)  # part 5's function; `path` is the manager's latest
            except AssertionError as error:
                raise _not_matched(error, path) from None
        self.restored_path = path
        self._last_saved_step = int(self.step)
        return int(self.step)

    def save(self) -> str:
        """Saves a checkpoint numbered by the step (dropping the oldest beyond `keep_last`) and returns its path.

        A save that fails (a full disk) removes what it half-wrote and raises `CheckpointError` naming the folder,
        the space it needed and the last good checkpoint, which is kept.
        """
        try:
            path = self.latest.save(checkpoint_number=int(self.step), check_interval=False)
        except (tf.errors.OpError, OSError) as error:
            raise self._save_failed(self._root / "ckpt", "ckpt", error) from None
        self._last_save = time.monotonic()
        self._last_saved_step = int(self.step)
        return path

    def _save_failed(self, directory, name, error):
        """Removes what a failed save half-wrote; returns the `CheckpointError` to raise."""
        step = int(self.step)
        for path in [*directory.glob(f"{name}-{step}.*"), *directory.glob(f"{name}-{step}_temp*")]:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        latest = self._root / "ckpt"
        previous = newest_readable(latest, "ckpt", log=lambda _: None)
        if previous is not None:  # the last good checkpoint's size is what the next one needs
            needed = sum(p.stat().st_size for p in latest.glob(Path(previous).name + ".*"))
        else:
            needed = sum(v.numpy().nbytes for v in self.objects["model"].values) * 3  # weights and Adam's moments
        free = shutil.disk_usage(directory if directory.exists() else self._root).free
        reason = "the disk is full" if free < needed else str(error).strip().splitlines()[-1][:160]
        return CheckpointError(
            f"could not write checkpoint {name}-{step} into {directory}: {reason} ({free / 2**20:.1f} MB free, a "
            f"checkpoint needs about {needed / 2**20:.1f} MB). The last good checkpoint, {previous or 'none yet'}, "
            f"is kept: free some space and run the same command to resume."
        )

    def failed_save(self, error: BaseException) -> CheckpointError | None:
        """Returns the `CheckpointError` for `error` when it broke a save of part 5's loop (`latest.save` or
        `best.save` called directly), after removing what that save half-wrote; None when no save of this step was
        under way and the disk is not full (the error is another one)."""
        step = int(self.step)
        for name in ("best", "ckpt"):
            directory = self._root / name
            if any(directory.glob(f"{name}-{step}_temp*")) or any(
                p.name.startswith(f"{name}-{step}.") for p in scan(directory, name)[1]
            ):
                return self._save_failed(directory, name, error)
        if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left" in str(error):
            return self._save_failed(self._root / "ckpt", "ckpt", error)
        return None

    def maybe_save(self) -> str | None:
        """Saves when part 5's `save_due` says so: the step is a multiple of `save_every_steps`, or
        `save_every_minutes` have passed on the monotonic clock since the last save."""
        step = int(self.step)
        now = time.monotonic()
        if self.functions.save_due(
            step, now, self._last_saved_step, self._last_save, self.save_every_steps, self.save_every_minutes
        ):
            return self.save()
        return None

    def close(self) -> None:
        """Deletes a non-chief worker's scratch directory."""
        if not self.writer:
            shutil.rmtree(self._root, ignore_errors=True)

    def last_saved_path(self) -> str | None:
        """Returns the path of the newest checkpoint in `ckpt/`, or None."""
        return self.latest.latest_checkpoint

    @property
    def saved_steps(self) -> list[int]:
        """Returns the steps of the checkpoints kept in `ckpt/`, oldest first."""
        return [_step(path) for path in self.latest.checkpoints]


def _step(prefix):
    return int(str(prefix).rsplit("-", 1)[1])


# ----------------------------------------------------------------------------------------------------------------
# Loading weights, and freezing them for fine-tuning
# ----------------------------------------------------------------------------------------------------------------


def load_weights(
    model: keras.Model,
    run_dir,
    which: str = "best",
    log: Callable[[str], None] = print,
    restore_latest: Callable[[tf.train.CheckpointManager], int] | None = None,
) -> str:
    """Restores the weights of a built `model` from a run directory's `best` or `latest` checkpoint (or a
    checkpoint path) and returns the path.

    `best` falls back to the latest when there is no best checkpoint; either falls back to an older checkpoint when
    the newest does not read back (saying so). Raises `CheckpointError` when nothing can be loaded.
    With `restore_latest` (part 5's), the best checkpoint is loaded through it, by a manager of `best/`, whenever
    that checkpoint is the one the folder's index names (the fallbacks above stay given).
    """
    run_dir = Path(run_dir)
    if which in ("best", "latest"):
        path = newest_readable(run_dir / "best", "best", log) if which == "best" else None
        path = path or newest_readable(run_dir / "ckpt", "ckpt", log)
        if path is None:
            raise CheckpointError(
                f"{run_dir} holds no readable checkpoint: train it first (python -m lmrun train --run-dir {run_dir})"
            )
    else:
        path = str(which)
        if not Path(path + ".index").is_file():
            raise CheckpointError(
                f"--checkpoint {which}: no such checkpoint; give 'best', 'latest' or a path such as "
                f"{run_dir / 'ckpt' / 'ckpt-1000'} (the name of its .index file without '.index')"
            )
        problem = unreadable(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} does not read back ({problem}); choose another one")
    check_fits(model, path)
    if restore_latest is not None and Path(path).parent.name == "best":
        # What a best checkpoint holds (Checkpoints.best_objects), so every value in it is restored.
        objects = dict(step=tf.Variable(0, dtype=tf.int64), val_loss=tf.Variable(math.inf, dtype=tf.float64))
        checkpoint = tf.train.Checkpoint(**objects, model=model_state(model))
        manager = tf.train.CheckpointManager(checkpoint, str(Path(path).parent), max_to_keep=None)
        if manager.latest_checkpoint == path:
            try:
                restore_latest(manager)
            except AssertionError as error:
                raise _not_matched(error, path) from None
            return path
    status = tf.train.Checkpoint(model=model_state(model)).restore(path).expect_partial()
    _assert_matched(status, path)
    return path


def check_fits(model: keras.Model, path) -> None:
    """Raises `CheckpointError` naming the first variable whose shape differs between `model` and the checkpoint
    at `path` (written through `model_state`), before anything is restored."""
    saved = dict(tf.train.list_variables(str(path)))
    variables = model.variables
    count = sum(1 for key in saved if key.startswith("model/values/"))
    if count != len(variables):
        raise CheckpointError(
            f"checkpoint {path} holds {count} model variables, the model built from its run's config.json has "
            f"{len(variables)}: it was written by another model or config"
        )
    for i, v in enumerate(variables):
        shape = tuple(saved.get(f"model/values/{i}/.ATTRIBUTES/VARIABLE_VALUE", ()))
        if shape != tuple(v.shape):
            raise CheckpointError(
                f"checkpoint {path} does not fit the model built from its run's config.json: {v.path} has shape "
                f"{tuple(v.shape)} in the model but {shape} in the checkpoint (was config.json edited?)"
            )


def _assert_matched(status, path):
    """Raises `CheckpointError` (short, without the variables' values) when a checkpoint does not fit the objects."""
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise _not_matched(error, path) from None


def _not_matched(error, path) -> CheckpointError:
    first_line = str(error).split(":")[0]
    return CheckpointError(
        f"checkpoint {path} does not fit the model built from its run's config.json ({first_line}); "
        f"was it written by another model, config or version of the code?"
    )


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


def freeze(model: keras.Model, embeddings: bool = False, first_layers: int = 0) -> list:
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
