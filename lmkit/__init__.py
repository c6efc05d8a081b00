"""Given building blocks of the assignment: what the six graded files of `assignment/` import (never graded).

One module per concept: `errors` (every user-facing error), `tokenizer_base`, `layers`, `kv_cache`,
`transformer_config`, `recurrent` (the RNN/LSTM language-model shell), `generation` (`generate` and its readers),
`optim`, `data`, `history`, `checkpoints`, `distribute`, `loop` (the training loop), `quantization`.
Nothing here imports `assignment` or `lmrun`: imports go one way, lmkit <- assignment <- lmrun.

Importing the package imports TensorFlow quietly: its C++ libraries print start-up lines (oneDNN, CUDA drivers, CPU
instructions, and a `failed call to cuInit` error on a machine without a GPU) straight to the process's stderr,
before TensorFlow's own log level applies. Those lines are dropped; anything else TensorFlow prints while loading
is shown as usual.
"""

import os
import re
import sys
import tempfile

# Start-up lines of TensorFlow's C++ libraries that say nothing about the user's work.
_CHATTER = re.compile(
    r"WARNING: All log messages before absl::InitializeLog"
    r"|^[IW]\d{4} "  # absl INFO and WARNING lines: oneDNN, cudart_stub, cpu_feature_guard
    r"|^E\d{4} .*(cuInit|cuda_platform|cuda_executor|Unable to register cu)"  # no GPU here: expected
    r"|^To enable the following instructions:|rebuild TensorFlow with the appropriate compiler flags"
)


def _import_tensorflow_quietly():
    """Imports TensorFlow with its start-up chatter on file descriptor 2 filtered out (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # after start-up: C++ errors only, Python warnings as usual
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to redirect
        import tensorflow  # noqa: F401

        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe prints its error now, inside the capture
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines()
            kept = [line for line in lines if line.strip() and not _CHATTER.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


_import_tensorflow_quietly()
