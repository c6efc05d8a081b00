"""What the sweeps share: ExperimentError, `Sweep` (run directories trained through `runs.run`), tables, the
`--quick` corpus and plotting helpers (given, not graded)."""

import csv
from pathlib import Path

import numpy as np

from lmkit.errors import ExperimentError


def non_embedding_parameters(model):
    """Returns `(N, total)`: the parameters outside the token and position embeddings and the untied output
    projection (Kaplan et al.'s N), and all of them."""
    total = int(model.count_params())
    embedding = 0
    for name in ("token_embedding", "position_embedding", "lm_head"):
        variable = getattr(model, name, None)
        if variable is not None:
            embedding += int(np.prod(variable.shape))
    return total - embedding, total


def small_llama_request(corpus, d_model, num_layers, num_heads, context, batch, steps, quick, **overrides):
    """Returns the `RunRequest` every sweep trains: a LLaMA-2-style model of the given size on `corpus`, for
    `steps` steps with a 10% warmup, evaluated once at the end, no time budget; `overrides` set any other field."""
    from lmrun import runs

    return runs.RunRequest(
        config="main",
        corpus=corpus,
        preset="llama2",
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        context_length=context,
        batch_size=batch,
        steps=steps,
        warmup_steps=max(1, steps // 10),
        eval_every=steps,
        time_budget=0,
        no_jit=quick,  # compiling with XLA costs more than it saves in a run of seconds
        **overrides,
    )


class Sweep:
    """Trains named `RunRequest`s one after the other under one tqdm bar, each in its own run directory.

    A finished run is not trained again: `runs.run` restores it, says "already trained" and returns its history.
    Everything the runs print goes to `sweep.log` in the output directory; the terminal shows one line per run.
    """

    def __init__(self, out_dir, total, progress=True, desc="sweep"):
        from tqdm.auto import tqdm

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.bar = tqdm(total=total, unit="run", desc=desc, disable=not progress, dynamic_ncols=True)
        self.log_file = open(self.out_dir / "sweep.log", "a")
        self.trained = self.reused = 0

    def log(self, line):
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def say(self, line):
        self.log(line)
        self.bar.write(line)

    def run(self, name, request):
        """Returns a row dict (name, parameters, tokens, val_loss, tokens_per_sec, ...) of the run `request`."""
        import keras

        from lmrun import run_files, runs

        request.run_dir = str(self.out_dir / name)
        request.no_progress = True
        request.sample_tokens = 0
        self.bar.set_postfix_str(name)
        self.log(f"== {name}")
        try:
            result = runs.run(request, log=self.log)
        except runs.UsageError as error:
            lines = str(error).splitlines()
            first_difference = f" ({lines[1].strip()})" if len(lines) > 1 else ""
            raise ExperimentError(
                f"{lines[0].rstrip(':')}{first_difference}; pass --out DIR for a new sweep, or --overwrite to start "
                f"this one again"
            ) from None
        config = run_files.read_run_config(request.run_dir)
        history = result["history"]
        if not history:
            raise ExperimentError(f"{request.run_dir} has no evaluation; delete it and run the experiment again")
        last = history[-1]
        n, total = non_embedding_parameters(result["model"])
        tokens = last["step"] * config["train"]["batch_size"] * config["train"]["seq_len"]
        speeds = [r["tokens_per_sec"] for r in history if r.get("tokens_per_sec")]
        if result["already_done"]:
            self.reused += 1
            self.say(f"{name}: already trained (step {last['step']}), val loss {last['val_loss']:.4f}: history re-used")
        else:
            self.trained += 1
            self.say(
                f"{name}: trained to step {last['step']} in {last['train_time']:.0f} s, val loss {last['val_loss']:.4f}"
            )
        self.bar.update(1)
        keras.backend.clear_session()  # the next run builds its model from a clean slate
        return dict(
            name=name,
            non_embedding_params=n,
            params=total,
            tokens=tokens,
            steps=last["step"],
            val_loss=last["val_loss"],
            val_perplexity=last["val_perplexity"],
            tokens_per_sec=float(np.median(speeds)) if speeds else float("nan"),
            train_time=last["train_time"],
            history=history,
            model_config=config["model_config"],
        )

    def close(self):
        self.bar.close()
        self.log_file.close()


def write_table(out_dir, name, header, rows, notes=""):
    """Writes `<name>.md` (a Markdown table, then `notes`) and `<name>.csv` into `out_dir`; returns the Markdown.

    `header` lists `(title, key)` or `(title, key, format_spec)` per column; the CSV keeps full precision.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [(h[0], h[1], h[2] if len(h) > 2 else None) for h in header]
    with open(out_dir / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([title for title, _, _ in columns])
        for row in rows:
            writer.writerow([row.get(key, "") for _, key, _ in columns])
    lines = ["| " + " | ".join(t for t, _, _ in columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        cells = []
        for _, key, spec in columns:
            value = row.get(key, "")
            if spec is not None and isinstance(value, (int, float)):
                value = format(value, spec)
            elif isinstance(value, float):
                value = f"{value:.3e}" if value and (abs(value) >= 1e5 or abs(value) < 1e-3) else f"{value:.4f}"
            elif isinstance(value, int):
                value = f"{value:,}"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n" + (f"\n{notes.strip()}\n" if notes else "")
    (out_dir / f"{name}.md").write_text(text)
    return text


def quick_corpus(out_dir):
    """Returns the path of a 20,000-character slice of the default corpus in `out_dir`: `--quick` runs read it, so
    their final evaluation over the whole validation split takes milliseconds."""
    from lmrun.corpus import python_reference

    path = Path(out_dir) / "quick_corpus.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(python_reference()[:20000])
    return str(path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_ticks(axis):
    """Labels a logarithmic loss axis 1.4, 1.6, ... rather than 1.4 x 10^0."""
    from matplotlib.ticker import FormatStrFormatter

    axis.set_major_formatter(FormatStrFormatter("%.1f"))
    axis.set_minor_formatter(FormatStrFormatter("%.1f"))
