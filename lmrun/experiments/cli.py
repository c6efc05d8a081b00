"""The command line of the experiments: `python -m lmrun experiments {scaling,ablate,quantize,grok}` (given,
not graded)."""

import argparse
import math
import sys
import time
from pathlib import Path

from lmkit.errors import LMError
from lmrun.cli import Parser
from lmrun.experiments.ablate import ABLATIONS, _slug, ablate
from lmrun.experiments.grok import grok
from lmrun.experiments.quantize import quantize_run
from lmrun.experiments.scaling import SCALING_STEPS, scaling


def _positive_int(flag):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number >= 1; got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number >= 1; got {value}")
        return value

    return parse


def _number(flag, low, high, low_in=True):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        ok = math.isfinite(value) and (value >= low if low_in else value > low) and value <= high
        if not ok:
            raise argparse.ArgumentTypeError(
                f"{flag} takes a number {'>=' if low_in else '>'} {low:g} and <= {high:g}; got {text!r}"
            )
        return value

    return parse


def build_parser():
    parser = Parser(
        prog="python -m lmrun experiments",
        description="The lecture's questions, answered by experiment on this machine. Each writes a Markdown and a "
        "CSV table and PNG plots into --out; runs resume, and finished runs are re-used, not trained again.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m lmrun experiments scaling                 # ~20 min: 6 sizes x 4 budgets, L(C) fit\n"
        "  python -m lmrun experiments ablate --seeds 3\n"
        "  python -m lmrun experiments quantize --run-dir runs/main\n"
        "  python -m lmrun experiments grok --p 97 --steps 6000\n"
        "  python -m lmrun experiments scaling --quick --out /tmp/scaling   # seconds: what the tests run",
    )
    sub = parser.add_subparsers(
        dest="experiment", metavar="{scaling,ablate,quantize,grok}", required=True, parser_class=Parser
    )

    def common(p, name):
        p.add_argument(
            "--out",
            default=f"runs/experiments/{name}",
            help=f"directory of the runs, tables and plots (default: runs/experiments/{name})",
        )
        p.add_argument("--quick", action="store_true", help="tiny models and a few steps: seconds (for the tests)")
        p.add_argument("--overwrite", action="store_true", help="delete --out first and start again")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("scaling", help="loss against compute: 6 sizes x 4 token budgets, fits of L(C) and L(N)")
    common(p, "scaling")
    p.add_argument(
        "--steps",
        nargs="+",
        type=_positive_int("--steps"),
        default=None,
        metavar="N",
        help=f"token budgets in steps of 16 x 64 tokens, at least 2 (default: {' '.join(map(str, SCALING_STEPS))})",
    )

    p = sub.add_parser("ablate", help="the llama2 preset with one row of the 7B table changed at a time")
    common(p, "ablate")
    p.add_argument(
        "--seeds", type=_positive_int("--seeds"), default=2, help="seeds per variant, at least 2 (default: 2)"
    )
    p.add_argument(
        "--steps", type=_positive_int("--steps"), default=400, help="steps of 16 x 64 tokens per run (default: 400)"
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        metavar="VARIANT",
        help="only these variants (and the base): " + ", ".join(_slug(n) for n in list(ABLATIONS)[1:]),
    )

    p = sub.add_parser("quantize", help="int8 / int4 weights and KV cache of a trained run")
    common(p, "quantize")
    p.add_argument(
        "--run-dir",
        default=None,
        help="the trained run to quantize (default: runs/main, trained as `make train` if missing)",
    )
    p.add_argument("--prompt", default="The ", help="prompt of the samples (default: 'The ')")
    p.add_argument(
        "--sample-tokens", type=_positive_int("--sample-tokens"), default=120, help="tokens per sample (default: 120)"
    )
    p.add_argument(
        "--kv-windows",
        type=_positive_int("--kv-windows"),
        default=64,
        help="validation windows read token by token through the KV cache (default: 64)",
    )

    p = sub.add_parser("grok", help="a + b mod p: training accuracy long before validation accuracy")
    common(p, "grok")
    p.add_argument("--p", type=_positive_int("--p"), default=97, help="the modulus, a prime >= 5 (default: 97)")
    p.add_argument(
        "--train-fraction",
        type=_number("--train-fraction", 0, 1, low_in=False),
        default=0.2,
        help="share of the p^2 pairs trained on, in (0, 1) (default: 0.2)",
    )
    p.add_argument("--steps", type=_positive_int("--steps"), default=5000, help="optimizer steps (default: 5000)")
    p.add_argument(
        "--batch-size", type=_positive_int("--batch-size"), default=512, help="pairs per step (default: 512)"
    )
    p.add_argument(
        "--d-model", type=_positive_int("--d-model"), default=64, help="width, a multiple of 4 (default: 64)"
    )
    p.add_argument("--num-layers", type=_positive_int("--num-layers"), default=1, help="blocks (default: 1)")
    p.add_argument("--lr", type=_number("--lr", 0, 1, low_in=False), default=3e-3, help="learning rate (default: 3e-3)")
    p.add_argument(
        "--weight-decay",
        type=_number("--weight-decay", 0, 10),
        default=1.0,
        help="AdamW's decoupled weight decay, in [0, 10] (default: 1.0)",
    )
    p.add_argument(
        "--eval-every", type=_positive_int("--eval-every"), default=100, help="steps between evaluations (default: 100)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the initial weights (default: 0)")
    return parser


def check_args(parser, args):
    """Calls `parser.error` (one line, exit 2) for flag values that parse but cannot work."""
    if args.experiment == "scaling" and args.steps is not None and len(set(args.steps)) < 2:
        parser.error(
            f"--steps needs at least 2 different budgets to find a frontier; got {' '.join(map(str, args.steps))}"
        )
    if args.experiment == "ablate":
        if args.seeds < 2:
            parser.error(f"--seeds must be at least 2 (a spread needs two seeds); got {args.seeds}")
        valid = [_slug(n) for n in list(ABLATIONS)[1:]]
        unknown = [r for r in args.rows or () if r not in valid]
        if unknown:
            parser.error(f"--rows {' '.join(unknown)}: not a variant; valid: {', '.join(valid)}")
    if args.experiment == "grok":
        p = args.p
        if p < 5 or any(p % d == 0 for d in range(2, int(p**0.5) + 1)):
            parser.error(f"--p must be a prime >= 5; got {p}")
        if args.d_model % 4:
            parser.error(f"--d-model must be a multiple of 4 (the model has 4 heads); got {args.d_model}")
        if not args.quick and round(args.train_fraction * p * p) >= p * p:
            parser.error(f"--train-fraction leaves no validation pair for p={p}; got {args.train_fraction}")
    if args.experiment == "quantize" and args.run_dir is not None:
        from lmrun.run_files import read_run_config

        try:
            if read_run_config(args.run_dir) is None:
                parser.error(f"--run-dir {args.run_dir} is not a run directory (no config.json); train one first")
        except ValueError as error:
            parser.error(f"--run-dir: {str(error).splitlines()[0]}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; pass a directory")


EXPERIMENTS = dict(scaling=scaling, ablate=ablate, quantize=quantize_run, grok=grok)


def main(argv=None):
    """Runs one experiment from the command line; returns the exit status (2 with one line for a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)

    out = Path(args.out)
    if args.overwrite and out.exists():
        import shutil

        ours = {"sweep.log", "run", "model", f"{args.experiment}.md", f"{args.experiment}.csv"}
        if any(out.iterdir()) and not ours & {p.name for p in out.iterdir()}:
            print(
                f"error: --overwrite: {out} does not look like an experiment's output; delete it yourself",
                file=sys.stderr,
            )
            return 2
        shutil.rmtree(out)
    started = time.perf_counter()
    try:
        EXPERIMENTS[args.experiment](args)
    except LMError as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted: run the same command again to resume (finished runs are re-used; {args.out}/sweep.log "
            f"has every run's messages)",
            file=sys.stderr,
        )
        return 130
    print(f"{args.experiment}: {time.perf_counter() - started:.0f} s")
    return 0
