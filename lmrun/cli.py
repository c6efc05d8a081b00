"""The command line of training: `python -m lmrun train` (given, not graded).

`build_parser()` turns flags into a `runs.RunRequest`; `main(argv)` runs it and turns every error a user can cause
(a bad flag, a damaged run directory, a full disk, a diverging run, a part not written yet) into one line on stderr
and exit status 2, without a traceback.
"""

import argparse
import sys
from typing import NoReturn

from lmkit.errors import LMError, not_written_yet
from lmkit.optim import OPTIMIZERS
from lmrun.configs import ARCHITECTURES, CONFIGS, MODELS
from lmrun.runs import RunRequest, run


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line: what is wrong, and where the flags are listed."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


EXAMPLES = """\
examples:
  python -m lmrun train                                     # `make train`: the main job (--config main)
  python -m lmrun train --config nanogpt-cpu --run-dir runs/nanogpt --corpus shakespeare
  python -m lmrun train --model lstm --run-dir runs/lstm --steps 1000
  python -m lmrun train --preset palm --run-dir runs/palm      # a tiny PaLM (parallel blocks, MQA)
  python -m lmrun train --preset gpt2 --set norm=rmsnorm --run-dir runs/gpt2-rms
  python -m lmrun train --optimizer lion --run-dir runs/lion
  python -m lmrun train --init-from runs/main --corpus my.txt --freeze embeddings 2 --run-dir runs/ft
  python -m lmrun train --strategy mirrored --cpu-replicas 2 --run-dir runs/mirrored
  python -m lmrun prepare --tokenizer bpe --out data/shards/pyref-bpe && \
    python -m lmrun train --data data/shards/pyref-bpe --run-dir runs/bpe   # BPE token shards, memory-mapped

Running the same command again resumes from the latest checkpoint (or says the run is done); Ctrl-C saves a
checkpoint first. A run directory written by another model or config is an error, never a silent fresh start.
"""


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m lmrun train",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a character- or word-level language model (RNN, LSTM or transformer), with "
        "checkpoints that resume, TensorBoard logs (--run-dir/logs) and a sample at the end. Flags "
        "left out come from --config.",
    )
    what = parser.add_argument_group("what to train")
    what.add_argument(
        "--model", choices=MODELS, default=None, help="model kind (default: transformer, or the --init-from run's)"
    )
    what.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        default="main",
        help="named configuration giving every default below: 'main' is `make train` (~3-4 min on "
        "2 cores), 'nanogpt-cpu' nanoGPT's CPU run of tiny Shakespeare, 'speedrun' nanoGPT's loss in "
        "a fraction of its time, 'tiny' a seconds-long smoke test (default: main)",
    )
    what.add_argument(
        "--preset",
        default=None,
        metavar="ARCH",
        help=f"transformer architecture from the lecture's table: {', '.join(ARCHITECTURES)} "
        f"(default: the config's: llama2 for main, gpt2 for nanogpt-cpu and tiny)",
    )
    what.add_argument("--d-model", type=int, help="transformer width D")
    what.add_argument("--num-heads", type=int, help="transformer attention heads")
    what.add_argument("--num-layers", type=int, help="transformer blocks, or stacked RNN/LSTM layers")
    what.add_argument(
        "--context-length", type=int, help="tokens per training sequence T (the transformer's context length)"
    )
    what.add_argument("--dropout", type=float, help="transformer dropout rate")
    what.add_argument("--embed-dim", type=int, help="RNN/LSTM embedding width")
    what.add_argument("--hidden-dim", type=int, help="RNN/LSTM hidden state width")
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other TransformerConfig field, e.g. --set norm=rmsnorm --set num_kv_heads=1 (repeatable)",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--corpus",
        default="pyref",
        help="'pyref' (the Python Language Reference, offline; default), 'shakespeare' "
        "(downloaded once into data/), or the path of a UTF-8 text file",
    )
    data.add_argument("--tokenizer", choices=("char", "word"), default="char", help="tokenizer (default: char)")
    data.add_argument(
        "--data",
        metavar="DIR",
        help="train on token shards written by `python -m lmrun prepare` (train.bin / val.bin, memory-mapped, "
        "with their tokenizer, e.g. BPE); replaces --corpus, --tokenizer and --val-fraction",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the corpus (its end) held out for validation (default: 0.1)",
    )

    opt = parser.add_argument_group("optimization")
    opt.add_argument("--steps", type=int, help="total optimizer steps; raise it to train a finished run further")
    opt.add_argument("--batch-size", type=int, help="sequences per step (global batch under a strategy)")
    opt.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="adamw (default), lion, muon, schedulefree (schedule-free AdamW), adam or sgd "
        "(with Nesterov momentum); all but schedulefree follow warmup + cosine decay",
    )
    opt.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (default: the config's, scaled per optimizer: lion x0.3, schedulefree x2, sgd x100)",
    )
    opt.add_argument("--min-lr-ratio", type=float, help="final learning rate as a share of the peak (default 0.1)")
    opt.add_argument("--warmup-steps", type=int, help="steps of linear warmup")
    opt.add_argument("--weight-decay", type=float, help="decoupled weight decay of the matrices")
    opt.add_argument("--beta1", type=float, help="first-moment decay (Adam, AdamW, Lion, Muon's Adam part)")
    opt.add_argument("--beta2", type=float, help="second-moment decay")
    opt.add_argument("--clip-norm", type=float, help="clip the gradients to this global norm (default 1.0)")
    opt.add_argument("--seed", type=int, help="seed of the initial weights and of the batch order (default 0)")
    opt.add_argument("--no-jit", action="store_true", help="do not compile the train step with XLA")

    loop = parser.add_argument_group("evaluation, logging and checkpoints")
    loop.add_argument(
        "--run-dir",
        default="runs/main",
        help="run directory: config, tokenizer, checkpoints, logs (default: runs/main)",
    )
    loop.add_argument("--overwrite", action="store_true", help="delete the run directory first and start again")
    loop.add_argument("--eval-every", type=int, help="evaluate on the validation split every N steps")
    loop.add_argument("--eval-batch-size", type=int, help="validation sequences per forward pass")
    loop.add_argument(
        "--eval-batches",
        type=int,
        help="validation batches of each evaluation but the last, which uses the whole validation "
        "split (0: all, the default; nanogpt-cpu: 4, as many tokens as nanoGPT's estimate)",
    )
    loop.add_argument("--log-every", type=int, help="update the progress bar and TensorBoard every N steps")
    loop.add_argument("--save-every-steps", type=int, help="checkpoint every N steps")
    loop.add_argument("--save-every-minutes", type=float, help="also checkpoint every M minutes")
    loop.add_argument("--keep-last", type=int, help="checkpoints kept in ckpt/ (the best is kept in best/)")
    loop.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="stop after this many minutes of training, with a checkpoint and an evaluation, even "
        "before --steps (rerun to continue); 0: no limit (default: the config's, 4.25 for main)",
    )
    loop.add_argument("--sample-prompt", default="The ", help="prompt of the samples (default: 'The ')")
    loop.add_argument(
        "--sample-tokens",
        type=int,
        default=200,
        help="tokens of the sample printed at the end (default 200); the samples logged to "
        "TensorBoard at each evaluation have at most 100, within the context (0: no samples)",
    )
    loop.add_argument(
        "--eval-samples",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log a sample to TensorBoard at each evaluation (default: the config's; nanogpt-cpu and speedrun "
        "do not, as nanoGPT does not: they compete on time)",
    )
    loop.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    loop.add_argument(
        "--wandb",
        action="store_true",
        help="also track the run with Weights & Biases (scalars, config, samples): offline into <run-dir>/wandb/ "
        "unless W&B is set up (WANDB_MODE, wandb login); the run prints how to upload it (wandb sync)",
    )

    tune = parser.add_argument_group("fine-tuning and scale-out")
    tune.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        help="start from the best weights of another run (same model and tokenizer), e.g. to "
        "continue on another --corpus",
    )
    tune.add_argument(
        "--freeze",
        nargs="+",
        metavar="ITEM",
        help="keep parts fixed: 'embeddings' and/or N (the first N transformer blocks or "
        "RNN/LSTM layers), e.g. --freeze embeddings 2",
    )
    tune.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default="default",
        help="tf.distribute strategy: one device (default), MirroredStrategy over the GPUs of one "
        "machine (or --cpu-replicas CPUs), MultiWorkerMirroredStrategy over machines (TF_CONFIG)",
    )
    tune.add_argument(
        "--cpu-replicas",
        type=int,
        default=0,
        help="split the CPU into N logical devices (to try --strategy mirrored without GPUs)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Trains as the command line says; returns the exit status (0 done, 2 error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        run(RunRequest(**vars(args)))
    except LMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NotImplementedError as error:
        print(f"error: {not_written_yet(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
