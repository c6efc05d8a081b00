"""Experiment tracking through one small interface, with two back ends: TensorBoard and Weights & Biases (given).

A tracker gets what the training loop measures, nothing else:
    log(step, scalars, texts=None)   scalars `{tag: float}` and texts `{tag: str}` (the samples) at a step
    close()                          flushes and ends the run; a second call does nothing
`TensorBoardTracker` (always on, into `<run>/logs/`) writes through part 5's `write_summaries`, which calls
`tf.summary`. `WandbTracker` (`python -m lmrun train --wandb`) sends the same scalars to W&B with the run's
configuration, and the text samples as one `wandb.Table` (columns `step`, `tag`, `text`) that grows at each
evaluation. W&B runs offline unless it is set up (`WANDB_MODE`, `WANDB_API_KEY` or `wandb login`): the run is
written under `<run>/wandb/` and `close` says how to upload it (`wandb sync <folders>`). Nothing here reaches the
network unless the user has set W&B up.

The sessions of one run directory (a run resumed after Ctrl-C, a kill or a time budget) are one W&B run: its id is
kept in `<run>/wandb-id.txt`, written once, and each session calls `wandb.init(id=..., resume="allow")`. Offline,
each session writes its own `<run>/wandb/offline-run-<time>-<id>/`; `wandb sync` given all of them uploads them in
order of start time into that one run. W&B drops a step lower than one it already has ("steps must be
monotonically increasing"), and a resumed run restarts at its checkpoint, which may be earlier than the last step
logged before a kill: so the tracker skips the steps up to the last one W&B has from earlier sessions (the server's
`run.step` online; the highest history step in the earlier sessions' `.wandb` files under `<run>/wandb/`, which is
what `wandb sync` uploads: a session killed with SIGKILL may have logged steps that never reached its file).
"""

import netrc
import os
import secrets
import string
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


ID_FILE = "wandb-id.txt"  # in the run directory: the W&B run id of all its sessions, written once


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a kill leaves the old file or the new one, never half of one


def new_run_id() -> str:
    """A fresh W&B run id: 8 random lowercase letters and digits, as W&B makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_run_id(run_dir, new_id: Callable[[], str] = new_run_id) -> str:
    """The W&B run id of `run_dir`'s sessions: the one in `<run_dir>/wandb-id.txt`, else `new_id()`, written there
    (atomically) for the next session. `--overwrite` deletes the run directory, so a new run gets a new id."""
    path = Path(run_dir) / ID_FILE
    if path.exists():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    run_id = new_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, run_id + "\n")
    return run_id


def wandb_file_records(path) -> list:
    """The records of a W&B run file (`<run>/wandb/*-<id>/run-<id>.wandb`, W&B's `Record` protocol buffers), up to
    the first one that does not read back whole (the file of a killed session may end in the middle of one).

    The layout: a 7-byte header (`:W&B`, a magic number, a version), then LevelDB-log records in blocks of 32 KiB,
    each a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) and its data; a block's tail shorter
    than a header is padding, and zeros end the file."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        return []
    at, records, pending = 7, [], b""
    while at + 7 <= len(data):
        left = 32768 - at % 32768
        if left < 7:
            at += left
            continue
        length, kind = int.from_bytes(data[at + 4 : at + 6], "little"), data[at + 6]
        if kind not in (1, 2, 3, 4) or at + 7 + length > len(data):
            break
        pending += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            try:
                records.append(wandb_internal_pb2.Record.FromString(pending))
            except DecodeError:
                break
            pending = b""
    return records


def last_logged_step(run_dir, run_id: str) -> int:
    """The highest step of the history W&B keeps for run `run_id` in `<run_dir>/wandb/` (the files of its earlier
    sessions, offline or online), or -1."""
    steps = [
        record.history.step.num
        for path in (Path(run_dir) / "wandb").glob(f"*-{run_id}/run-{run_id}.wandb")
        for record in wandb_file_records(path)
        if record.WhichOneof("record_type") == "history"
    ]
    return max(steps, default=-1)


class WandbTracker:
    """A W&B run of a training run: the scalars, the configuration, and the samples as a `wandb.Table`.

    Every session of a run directory logs to the same W&B run (the id in `<run_dir>/wandb-id.txt`, resumed with
    `resume="allow"`), and only at steps after the last one logged by an earlier session: W&B would drop the lower
    ones, and a resumed run repeats the steps between its checkpoint and the point it was stopped.

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
        self.run_id = wandb_run_id(run_dir)
        logged = last_logged_step(run_dir, self.run_id)  # what the files of the earlier sessions hold
        self.run = wandb.init(
            dir=str(run_dir),
            project=project or os.environ.get("WANDB_PROJECT") or "lm-assignment",
            name=name or run_dir.name,
            config=dict(config),
            mode=mode,
            id=self.run_id,
            resume="allow",  # the same run as the earlier sessions of run_dir; a new one at the first
            reinit="finish_previous",
        )
        self.offline = mode == "offline"
        # W&B's next step is the server's, online; offline W&B knows only this session
        self.resume_after = max(logged, self.run.step - 1)
        self.skipped: set[int] = set()
        self.rows: list[list] = []

    def log(self, step, scalars, texts=None):
        step = int(step)
        if step <= self.resume_after:  # logged by an earlier session, before the checkpoint this one resumed from
            self.skipped.add(step)
            return
        values = {k: float(v) for k, v in scalars.items()}
        if texts:
            self.rows += [[step, tag, text] for tag, text in texts.items()]
            values["samples"] = self._wandb.Table(columns=["step", "tag", "text"], data=[list(r) for r in self.rows])
        self.run.log(values, step=step)

    def close(self):
        if self.run is None:
            return
        run, self.run = self.run, None
        folder = Path(run.dir).parent  # <run_dir>/wandb/offline-run-<time>-<id>
        run.finish()
        if self.skipped:
            low, high = min(self.skipped), max(self.skipped)
            steps = f"step {low}" if low == high else f"steps {low}-{high}"
            self.log_line(
                f"W&B: {steps} ran again after the resume but W&B already had them: they keep the values logged "
                f"before it; this session logged from step {self.resume_after + 1} on"
            )
        if self.offline:
            sessions = sorted(folder.parent.glob(f"offline-run-*-{self.run_id}"))
            if len(sessions) > 1:
                paths = str(folder.parent / f"offline-run-*-{self.run_id}")
                what = f"{len(sessions)} sessions of one W&B run (id {self.run_id}) into {folder.parent}"
            else:
                paths, what = str(folder), str(folder)
            self.log_line(f"W&B ran offline: {what}; to upload it: wandb login, then wandb sync {paths}")
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
