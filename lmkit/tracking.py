"""Experiment tracking through one small interface, with two back ends: TensorBoard and Weights & Biases (given).

A tracker gets what the training loop measures, nothing else:
    log(step, scalars, texts=None)   scalars `{tag: float}` and texts `{tag: str}` (the samples) at a step
    close()                          flushes and ends the run; a second call does nothing
`TensorBoardTracker` (always on, into `<run>/logs/`) writes through part 5's `write_summaries`, which calls
`tf.summary`. `WandbTracker` (`python -m lmrun train --wandb`) sends the same scalars to W&B with the run's
configuration, and the text samples as one `wandb.Table` (columns `step`, `tag`, `text`) that grows at each
evaluation. W&B runs offline unless it is set up (`WANDB_MODE`, `WANDB_API_KEY` or `wandb login`): the run is
written under `<run>/wandb/` and `close` says how to upload it (`wandb sync <folder>`). Nothing here reaches the
network unless the user has set W&B up.
"""

import netrc
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import tensorflow as tf


class Tracker(Protocol):
    def log(self, step: int, scalars: Mapping[str, float], texts: Mapping[str, str] | None = None) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Writes event files into `logdir` through `write_summaries(writer, step, scalars, texts)` (part 5's)."""

    def __init__(self, logdir, write_summaries: Callable):
        self.logdir = Path(logdir)
        self.write_summaries = write_summaries
        self.writer = None

    def log(self, step, scalars, texts=None):
        if self.writer is None:  # created at the first record, so a run that fails early leaves no empty file
            self.writer = tf.summary.create_file_writer(str(self.logdir))
        self.write_summaries(self.writer, int(step), {k: float(v) for k, v in scalars.items()}, texts)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def wandb_configured() -> bool:
    """True when the user has set W&B up to upload: `WANDB_API_KEY`, or the credentials `wandb login` writes to
    ~/.netrc (`WANDB_MODE`, when set, is obeyed before this is asked)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """A W&B run of a training run: the scalars, the configuration, and the samples as a `wandb.Table`.

    Args:
        run_dir: the run directory; W&B writes its files under `<run_dir>/wandb/`.
        config: the run's configuration (config.json's content), shown and searchable in W&B.
        project: the W&B project (default: `WANDB_PROJECT`, else "lm-assignment").
        name: the run's name in W&B (default: the run directory's name).
        log: where the closing message goes.
    """

    def __init__(self, run_dir, config: Mapping, project: str | None = None, name: str | None = None, log=print):
        os.environ.setdefault("WANDB_SILENT", "true")  # W&B's own banners would break the progress bar
        import wandb

        self._wandb = wandb
        self.log_line = log
        run_dir = Path(run_dir)
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_configured() else "offline")
        self.run = wandb.init(
            dir=str(run_dir),
            project=project or os.environ.get("WANDB_PROJECT") or "lm-assignment",
            name=name or run_dir.name,
            config=dict(config),
            mode=mode,
            reinit="finish_previous",
        )
        self.offline = mode == "offline"
        self.rows: list[list] = []

    def log(self, step, scalars, texts=None):
        values = {k: float(v) for k, v in scalars.items()}
        if texts:
            self.rows += [[int(step), tag, text] for tag, text in texts.items()]
            values["samples"] = self._wandb.Table(columns=["step", "tag", "text"], data=[list(r) for r in self.rows])
        self.run.log(values, step=int(step))

    def close(self):
        if self.run is None:
            return
        run, self.run = self.run, None
        folder = Path(run.dir).parent  # <run_dir>/wandb/offline-run-<time>-<id>
        run.finish()
        if self.offline:
            self.log_line(f"W&B ran offline into {folder}; to upload it: wandb login, then wandb sync {folder}")
        else:
            self.log_line(f"W&B run: {run.url}")


class Trackers:
    """Several trackers as one: each record goes to all of them; `close` closes each once."""

    def __init__(self, trackers: Sequence[Tracker], log: Callable[[str], None] = print):
        self.trackers = list(trackers)
        self.log_line = log

    def log(self, step, scalars, texts=None):
        for tracker in self.trackers:
            tracker.log(step, scalars, texts)

    def close(self):
        for tracker in self.trackers:
            tracker.close()
