"""`history.jsonl`, the record of a run's evaluations (given, not graded).

One JSON line per evaluation, appended as the run goes and cut back to the checkpoint a resumed run restarts from,
so the history never runs ahead of the weights.
"""

import json
import os
from pathlib import Path
from typing import TypedDict


class HistoryRecord(TypedDict):
    """One line of `history.jsonl`: an evaluation."""

    step: int
    train_loss: float  # mean over the steps since the last logged one
    val_loss: float
    val_perplexity: float
    val_bits_per_char: float | None  # None when the characters behind the validation tokens are unknown
    train_time: float  # seconds spent in training steps, over every session of the run
    wall_time: float  # seconds since the run started, over every session
    tokens_per_sec: float
    lr: float  # the learning rate at this step


class History:
    """`history.jsonl`: one JSON record per evaluation, kept consistent with the checkpoint a run resumes from."""

    def __init__(self, path: str | os.PathLike, writer: bool = True):
        self.path = Path(path)
        self.writer = writer

    def read(self) -> list[HistoryRecord]:
        """Returns the records, oldest first; a line a kill cut short (the last one) is left out."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "step" in record:
                records.append(record)
        return records

    def truncate(self, step: int) -> None:
        """Drops the records after `step` (written after the checkpoint a resumed run restarts from) and any torn
        line, rewriting the file atomically."""
        if self.writer and self.path.exists():
            records = [r for r in self.read() if r["step"] <= step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(tmp, self.path)

    def append(self, record: HistoryRecord) -> None:
        if self.writer:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
