"""Compare the RNN, the LSTM and the transformer on one token budget, `make compare` (given, not graded).

Every model trains through the same loop (`assignment.train`) on the same corpus, the same batches and the same
number of steps, so all of them see exactly the same tokens. The script prints a table (parameters, tokens/s,
validation loss and perplexity, training time) and saves two PNG plots of the validation loss, against the step
and against the training time, into the comparison directory. `--optimizers` compares optimizers the same way.
Runs resume like any training run, so a second `make compare` only redraws the table and the plots.
"""

import argparse
import json
import sys
from pathlib import Path

from assignment.cli import Parser, not_written_yet


def build_parser():
    parser = Parser(
        prog="python -m assignment.compare",
        description="Train several models (or optimizers) on one token budget and compare them: a table and PNG "
        "plots of validation loss against step and against training time.",
        epilog="examples:\n"
        "  python -m assignment.compare                        # `make compare`: rnn, lstm, transformer\n"
        "  python -m assignment.compare --models transformer --optimizers adamw lion muon schedulefree \\\n"
        "      --runs-dir runs/optimizers --steps 1500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["rnn", "lstm", "transformer"],
        choices=("rnn", "lstm", "transformer"),
        help="models to compare (default: all three)",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=["adamw"],
        help="optimizers to compare, each with every model (default: adamw); any of adamw, lion, "
        "muon, schedulefree, adam, sgd",
    )
    parser.add_argument(
        "--runs-dir",
        default="runs/compare",
        help="where the runs (one subdirectory each), the table and the plots go (default: runs/compare)",
    )
    parser.add_argument(
        "--config",
        default="main",
        help="named training configuration giving the model sizes (default: main, as `make train`)",
    )
    parser.add_argument("--corpus", default="pyref", help="corpus, as for assignment.train (default: pyref)")
    parser.add_argument(
        "--steps",
        type=int,
        default=500,
        help="optimizer steps per model; with the shared batch size and context length this is the "
        "token budget (default: 500)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the config's)")
    parser.add_argument("--context-length", type=int, default=None, help="tokens per sequence (default: the config's)")
    parser.add_argument(
        "--eval-every", type=int, default=100, help="steps between validation points on the curves (default: 100)"
    )
    parser.add_argument("--overwrite", action="store_true", help="delete earlier runs of the comparison first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _median_speed(history):
    speeds = [r["tokens_per_sec"] for r in history if r.get("tokens_per_sec")]
    speeds = speeds[1:] or speeds  # the first window includes compiling the step
    return sorted(speeds)[len(speeds) // 2] if speeds else float("nan")


def plot(rows, out_dir):
    """Saves val_loss_vs_step.png and val_loss_vs_time.png into `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for x_key, x_label, name in (
        ("step", "step", "val_loss_vs_step.png"),
        ("train_time", "training time (s)", "val_loss_vs_time.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for row in rows:
            xs = [r[x_key] for r in row["history"]]
            ys = [r["val_loss"] for r in row["history"]]
            ax.plot(xs, ys, marker="o", markersize=3, label=f"{row['name']} ({row['parameters']:,} params)")
        ax.set_xlabel(x_label)
        ax.set_ylabel("validation loss (nats per token)")
        ax.set_title(f"validation loss against {x_label.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(out_dir) / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def table(rows):
    """Returns the comparison as a Markdown table."""
    lines = [
        "| run | parameters | tokens/s | val loss | val perplexity | training time | tokens seen |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['parameters']:,} | {r['tokens_per_sec']:,.0f} | {r['val_loss']:.4f} | "
            f"{r['val_perplexity']:.2f} | {r['train_time']:.0f} s | {r['tokens']:,} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from assignment import runs
    from assignment.checkpoints import CheckpointError
    from assignment.data import CorpusTooSmall
    from assignment.train import Diverged

    out_dir = Path(args.runs_dir)
    rows = []
    for model in args.models:
        for optimizer in args.optimizers:
            name = model if len(args.optimizers) == 1 else f"{model}-{optimizer}"
            request = runs.RunRequest(
                run_dir=str(out_dir / name),
                model=model,
                config=args.config,
                corpus=args.corpus,
                optimizer=optimizer,
                steps=args.steps,
                eval_every=args.eval_every,
                batch_size=args.batch_size,
                context_length=args.context_length,
                sample_tokens=0,
                overwrite=args.overwrite,
                no_progress=args.no_progress,
            )
            print(f"== {name}")
            try:
                result = runs.run(request)
            except (runs.UsageError, CorpusTooSmall, CheckpointError, Diverged) as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            except NotImplementedError as error:
                print(f"error: {not_written_yet(error)}", file=sys.stderr)
                return 2
            history = result["history"]
            if not history:
                print(f"error: {out_dir / name} has no evaluation yet", file=sys.stderr)
                return 2
            config = runs.read_run_config(out_dir / name)
            last = history[-1]
            rows.append(
                dict(
                    name=name,
                    parameters=int(result["model"].count_params()),
                    tokens_per_sec=_median_speed(history),
                    val_loss=last["val_loss"],
                    val_perplexity=last["val_perplexity"],
                    train_time=last["train_time"],
                    tokens=last["step"] * config["train"]["batch_size"] * config["train"]["seq_len"],
                    history=history,
                )
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    print("\n" + text)
    (out_dir / "summary.md").write_text(text + "\n")
    (out_dir / "summary.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "history"} for r in rows], indent=2) + "\n"
    )
    for path in plot(rows, out_dir):
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
