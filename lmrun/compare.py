"""Compare the RNN, the LSTM and the transformer on one token budget, `make compare` (given, not graded).

Every model trains through the same loop (`assignment.train`) on the same corpus, the same batches and the same
number of steps (the config's time budget is lifted), so all of them see exactly the same tokens. The script
prints a table (parameters, tokens/s, validation loss per token and in bits per character, perplexity, training
and wall time) and saves two PNG plots of the validation loss, against the step and against the training time,
into the comparison directory. `--optimizers` compares optimizers the same way.

`--tokenizers char word bpe` compares tokenizers: the corpus is encoded once per tokenizer into token shards
(`lmrun.prepare`, into `RUNS_DIR/shards/<tokenizer>`; each tokenizer fitted on the same training part, so
all validate on the same text), and the same model trains on each for the same steps of the same batch size and
context length, evaluated on the whole validation text each time. Losses per token do not compare across
tokenizers (a BPE token holds about four characters); bits per character do: the total loss over the validation
text divided by its characters. A third plot, bits_per_char.png, shows them against the tokens seen and the wall
time. A word tokenizer cannot spell the words it has not seen: each costs one `<unk>` prediction, not its
letters, so its bits per character are a lower bound.
Runs resume like any training run, so a second `make compare` only redraws the table and the plots.
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

from lmkit.errors import LMError, PrepareError, not_written_yet
from lmrun.cli import Parser


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m lmrun compare",
        description="Train several models (or optimizers) on one token budget and compare them: a table and PNG "
        "plots of validation loss against step and against training time.",
        epilog="examples:\n"
        "  python -m lmrun compare                        # `make compare`: rnn, lstm, transformer\n"
        "  python -m lmrun compare --models transformer --optimizers adamw lion muon schedulefree \\\n"
        "      --runs-dir runs/optimizers --steps 1500\n"
        "  python -m lmrun compare --models transformer --tokenizers char word bpe --runs-dir runs/tokenizers",
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
        "--tokenizers",
        nargs="+",
        default=None,
        choices=("char", "word", "bpe"),
        help="tokenizers to compare, each with every model, on token shards prepared into RUNS_DIR/shards "
        "(default: none, the characters of the corpus as `make train`)",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=None, help="with --tokenizers: the BPE's vocabulary (default: 4096)"
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


def plot(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Saves val_loss_vs_step.png and val_loss_vs_time.png into `out_dir`, and bits_per_char.png when the runs
    report bits per character; returns their paths."""
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
    if any(r.get("val_bits_per_char") for row in rows for r in row["history"]):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100, sharey=True)
        for row in rows:
            records = [r for r in row["history"] if r.get("val_bits_per_char")]
            ys = [r["val_bits_per_char"] for r in records]
            axes[0].plot([r["step"] * row["tokens_per_step"] / 1e6 for r in records], ys, marker="o", markersize=3)
            axes[1].plot([r["wall_time"] for r in records], ys, marker="o", markersize=3, label=row["name"])
        axes[0].set_xlabel("tokens seen (millions)")
        axes[0].set_ylabel("validation bits per character")
        axes[1].set_xlabel("wall time (s)")
        axes[1].legend()
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.suptitle("validation loss per character (lower is better)")
        fig.tight_layout()
        path = Path(out_dir) / "bits_per_char.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def table(rows: list[dict]) -> str:
    """Returns the comparison as a Markdown table."""
    lines = [
        "| run | parameters | tokens/s | val loss per token | val bits per char | val perplexity | training time "
        "| wall time | tokens seen |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        bpc = f"{r['val_bits_per_char']:.4f}" if r.get("val_bits_per_char") else "-"
        lines.append(
            f"| {r['name']} | {r['parameters']:,} | {r['tokens_per_sec']:,.0f} | {r['val_loss']:.4f} | {bpc} | "
            f"{r['val_perplexity']:.2f} | {r['train_time']:.0f} s | {r['wall_time']:.0f} s | {r['tokens']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lmrun import prepare, run_files, runs

    out_dir = Path(args.runs_dir)
    shards = {}
    for tokenizer in args.tokenizers or ():
        shards[tokenizer] = out_dir / "shards" / tokenizer
        try:
            ready = prepare.read_meta(shards[tokenizer]) if (shards[tokenizer] / "meta.json").exists() else None
            if ready is not None and not args.overwrite:
                saved = json.loads((shards[tokenizer] / ready["tokenizer"]).read_text(encoding="utf-8"))["config"]
                wanted = (str(args.corpus), args.vocab_size or 4096 if tokenizer == "bpe" else None)
                found = (ready["corpus"], saved["vocab_size"] if tokenizer == "bpe" else None)
                if found != wanted:
                    print(
                        f"error: {shards[tokenizer]} holds shards of {found[0]}"
                        + (f" (BPE of {found[1]} ids)" if found[1] else "")
                        + f", not of {wanted[0]}"
                        + (f" (BPE of {wanted[1]} ids)" if wanted[1] else "")
                        + ": pass --overwrite to start the comparison again, or another --runs-dir",
                        file=sys.stderr,
                    )
                    return 2
            if ready is None or args.overwrite:
                print(f"== preparing {args.corpus} with the {tokenizer} tokenizer into {shards[tokenizer]}")
                vocab_size = args.vocab_size if tokenizer == "bpe" else None
                prepare.prepare(args.corpus, shards[tokenizer], tokenizer, vocab_size, progress=not args.no_progress)
        except (PrepareError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except NotImplementedError as error:
            print(f"error: {not_written_yet(error)}", file=sys.stderr)
            return 2
    rows = []
    for model, optimizer, tokenizer in itertools.product(args.models, args.optimizers, args.tokenizers or [None]):
        parts = [model] * (len(args.models) > 1 or not args.tokenizers)
        parts += [optimizer] * (len(args.optimizers) > 1) + [tokenizer] * bool(args.tokenizers)
        name = "-".join(parts)
        request = runs.RunRequest(
            data=str(shards[tokenizer]) if tokenizer else None,
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
            time_budget=0,  # every run trains all its steps, however busy the machine
            eval_batches=0 if tokenizer else None,  # every point on the whole validation text, for every tokenizer
            overwrite=args.overwrite,
            no_progress=args.no_progress,
        )
        print(f"== {name}")
        try:
            result = runs.run(request)
        except LMError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except NotImplementedError as error:
            print(f"error: {not_written_yet(error)}", file=sys.stderr)
            return 2
        history = result["history"]
        if not history:
            print(f"error: {out_dir / name} has no evaluation yet", file=sys.stderr)
            return 2
        config = run_files.read_run_config(out_dir / name)
        last = history[-1]
        rows.append(
            dict(
                name=name,
                parameters=int(result["model"].count_params()),
                tokens_per_sec=_median_speed(history),
                val_loss=last["val_loss"],
                val_perplexity=last["val_perplexity"],
                val_bits_per_char=last.get("val_bits_per_char"),
                train_time=last["train_time"],
                wall_time=last.get("wall_time", float("nan")),
                tokens=last["step"] * config["train"]["batch_size"] * config["train"]["seq_len"],
                tokens_per_step=config["train"]["batch_size"] * config["train"]["seq_len"],
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
