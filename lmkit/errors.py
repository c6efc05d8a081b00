"""Every error a user can fix, in one place: the command line prints each as one line, never a traceback (given).

All of them derive from `LMError`, so a program catches user-facing errors with one `except LMError`;
`not_written_yet` turns a stub's `NotImplementedError` into the line that names the TODO.
"""

import traceback
from pathlib import Path


class LMError(Exception):
    """An error the user can fix (a flag, a file, a run directory); its message is one line saying what to do."""


class UsageError(LMError, ValueError):
    """A command line, a config or a run directory that cannot work; the CLI prints it without a traceback."""


class CorpusTooSmall(LMError, ValueError):
    """The corpus has too few tokens for one training batch or one validation window."""


class PrepareError(LMError, ValueError):
    """Bad input to `prepare` or a shard that does not match its header; the message is one line."""


class CheckpointError(LMError, ValueError):
    """A checkpoint that cannot be read, restored or written; the message names the file and what to do."""


class ExperimentError(LMError, ValueError):
    """Something the user can fix in an experiment (a flag, a run directory); printed as one line."""


class Diverged(LMError, FloatingPointError):
    """The loss became NaN or infinite: training cannot go on from these weights."""

    def __init__(self, what: str, last_checkpoint: str | None):
        super().__init__(
            f"training diverged: {what}. The last good checkpoint, {last_checkpoint or 'none (nothing saved yet)'}, "
            f"is kept; run again with a lower --lr (or more --warmup-steps, or a smaller --clip-norm)"
        )


def not_written_yet(error: NotImplementedError) -> str:
    """Returns one line saying which TODO a `NotImplementedError` from a stub comes from, and where it is."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[-1] if lines else type(error).__name__
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "assignment" in Path(f.filename).parts]
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return f"a part you write is not done yet: {message}{where}; `make test PART=<module>` checks it"
