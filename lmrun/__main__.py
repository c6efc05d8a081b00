"""`python -m lmrun COMMAND [ARGS]`: one entry point for every program (given, not graded).

python -m lmrun train ...        train a model into a run directory; --help lists the flags
python -m lmrun generate ...     sample text from a trained run directory
python -m lmrun compare ...      RNN, LSTM and transformer on one token budget
python -m lmrun prepare ...      encode a corpus once into memory-mapped token shards
python -m lmrun data ...         download and verify the named corpora
python -m lmrun experiments ...  the lecture's questions: scaling, ablate, quantize, grok
"""

import os
import sys

from lmrun import cli, compare, corpus, generate, prepare
from lmrun.experiments import cli as experiments

COMMANDS = {
    "train": cli.main,
    "generate": generate.main,
    "compare": compare.main,
    "prepare": prepare.main,
    "data": corpus.main,
    "experiments": experiments.main,
}


def main(argv: list[str] | None = None) -> int:
    """Runs the command `argv[0]` with the rest of `argv`; returns its exit status (2 for an unknown command)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n", 1)[1] if argv else __doc__.strip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"python -m lmrun: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    code = main()
    if code == 130:  # interrupted: the checkpoint is saved and the logs flushed; exit without waiting on TensorFlow's
        sys.stdout.flush()  # threads, which can hang after an interrupted input pipeline
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
