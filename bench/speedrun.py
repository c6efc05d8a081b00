"""The CPU speedrun: wall time to reach nanoGPT's validation loss, `--config speedrun` against `nanogpt-cpu`.

Prints figures; nothing passes or fails. Each contestant runs as its own command, the way a user runs it, and its
output lines are timestamped from the moment it was launched:

    python bench/shakespeare_standin.py --out data/shakespeare_standin.txt
    python bench/speedrun.py --target 1.86                       # speedrun, 3 runs: its median time to 1.86
    python bench/speedrun.py --configs speedrun nanogpt-cpu --runs 3 \\
        --nanogpt ~/nanoGPT --nanogpt-python ~/torch-venv/bin/python   # and nanoGPT, interleaved A B C A B C ...

- ours (`python -m lmrun train --config NAME --corpus CORPUS`, a fresh run directory each time): steps,
  tokens/s of the training steps, the loop's tokens/s (every token trained over the loop's wall time, evaluations
  and checkpoints included, compilation and start-up excluded), time to target (from launch to the first
  evaluation at or below the target; `speedrun` evaluates the whole validation tail once, at its end) and the final
  validation loss over the whole validation tail.
- nanoGPT (`--nanogpt DIR`: a checkout of karpathy/nanoGPT whose data/shakespeare_char/input.txt is the same text;
  its prepare.py is run first): its README's CPU command. Its own evaluations are estimates over 20 random
  batches, so its final checkpoint is also evaluated here over the whole validation tail in non-overlapping
  windows of its context, as ours is; that loss is the target unless `--target` is given (the median over runs).

The machine is shared: quote medians of several interleaved runs (`--runs`), with the load average printed.
"""

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NANOGPT_COMMAND = (
    "train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 "
    "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 "
    "--dropout=0.0"
).split()
# nanoGPT's final checkpoint over the whole validation tail, in non-overlapping windows (runs in its Python).
NANOGPT_FULL_VAL = """
import sys, numpy as np, torch
from model import GPT, GPTConfig
ckpt = torch.load(sys.argv[1] + "/ckpt.pt", map_location="cpu")
model = GPT(GPTConfig(**ckpt["model_args"]))
model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
model.eval()
val = np.fromfile("data/shakespeare_char/val.bin", dtype=np.uint16).astype(np.int64)
T = ckpt["model_args"]["block_size"]
n = (len(val) - 1) // T
x = torch.from_numpy(val[: n * T].reshape(n, T))
y = torch.from_numpy(val[1 : n * T + 1].reshape(n, T))
total = 0.0
with torch.no_grad():
    for i in range(0, n, 64):
        logits, _ = model(x[i : i + 64], y[i : i + 64])
        total += torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y[i : i + 64].reshape(-1),
                                                   reduction="sum").item()
print(f"full validation loss {total / (n * T):.4f} at iter {ckpt['iter_num']}")
"""


def load():
    return f"load average {os.getloadavg()[0]:.1f}"


def cpu_seconds():
    """User + system CPU seconds of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timestamped(command, cwd=None, env=None, stop=None):
    """Runs `command`; returns `(lines, seconds)`: each output line with the seconds since launch. `stop(line)`
    true ends the command there (SIGTERM: it saves and exits)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines = []
    for line in process.stdout:
        lines.append((time.perf_counter() - start, line.rstrip()))
        if stop is not None and stop(line):
            process.terminate()
            process.wait()
            return lines, time.perf_counter() - start
    if process.wait():
        tail = "\n".join(line for _, line in lines[-15:])
        raise SystemExit(f"speedrun: {' '.join(map(str, command[:6]))} ... failed:\n{tail}")
    return lines, time.perf_counter() - start


def run_ours(config, corpus, target, extra=()):
    """Returns the figures of one `python -m lmrun train --config CONFIG` run."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / config
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        command = [sys.executable, "-m", "lmrun", "train", "--config", config, "--corpus", str(corpus)]
        command += ["--run-dir", str(run_dir), "--no-progress", "--sample-tokens", "0", *extra]
        cpu = cpu_seconds()
        lines, wall = timestamped(command, cwd=ROOT, env=env)
        cpu = cpu_seconds() - cpu
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        train = json.loads((run_dir / "config.json").read_text())["train"]
    evaluations = [(t, float(m[2])) for t, line in lines if (m := re.match(r"step (\d+): .*val loss ([\d.]+)", line))]
    done = next(line for _, line in lines if line.startswith("done:"))
    tokens = history[-1]["step"] * train["batch_size"] * train["seq_len"]
    return dict(
        name=config,
        steps=history[-1]["step"],
        tokens=tokens,
        step_tokens_per_sec=float(re.search(r"\| ([\d,]+) tokens/s", done)[1].replace(",", "")),
        loop_tokens_per_sec=tokens / history[-1]["wall_time"],
        to_target=next((t for t, loss in evaluations if loss <= target), None) if target else None,
        final_loss=history[-1]["val_loss"],
        wall=wall,
        cpu=cpu,
    )


# The ablation: from nanogpt-cpu to speedrun, one change at a time (flags on top of --config nanogpt-cpu).
ABLATION = (
    ("nanogpt-cpu (GPT-2, AdamW 1e-3, 12 x 64, 2,000 steps, XLA)", []),
    ("+ LLaMA-2 architecture (RoPE, RMSNorm, SwiGLU, GQA, untied)", ["--preset", "llama2"]),
    ("+ Muon (AdamW for embeddings and head)", ["--preset", "llama2", "--optimizer", "muon"]),
    ("+ lr 6e-3, warmup 30", ["--preset", "llama2", "--optimizer", "muon", "--lr", "6e-3", "--warmup-steps", "30"]),
    (
        "+ batch 16",
        ["--preset", "llama2", "--optimizer", "muon", "--lr", "6e-3", "--warmup-steps", "30", "--batch-size", "16"],
    ),
    ("+ a schedule of 300 steps (= --config speedrun)", ["--config", "speedrun"]),
    ("  speedrun without XLA (--no-jit)", ["--config", "speedrun", "--no-jit"]),
    ("  speedrun with context 128", ["--config", "speedrun", "--context-length", "128"]),
    ("  speedrun with lr 1e-2", ["--config", "speedrun", "--lr", "1e-2"]),
)


def run_to_target(flags, corpus, target, every):
    """Runs `--config nanogpt-cpu` with `flags`, evaluating the whole validation tail every `every` steps, until
    the loss reaches `target`; returns (steps, training seconds, tokens/s of the steps, validation loss) there."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "lmrun", "train", "--config", "nanogpt-cpu", *flags]
        command += ["--corpus", str(corpus), "--run-dir", str(run_dir), "--no-progress", "--sample-tokens", "0"]
        command += ["--eval-every", str(every), "--eval-batches", "0", "--save-every-steps", "0"]

        def reached(line):
            m = re.match(r"step \d+: .*val loss ([\d.]+)", line)
            return m is not None and float(m[1]) <= target

        timestamped(command, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stop=reached)
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    print("  history: " + json.dumps([(r["step"], r["train_time"], round(r["val_loss"], 4)) for r in history]))
    hit = next((r for r in history if r["val_loss"] <= target), None)
    last = hit or history[-1]
    return dict(
        steps=last["step"] if hit else None,
        train_time=last["train_time"] if hit else None,
        tokens_per_sec=statistics.median(r["tokens_per_sec"] for r in history),
        val_loss=last["val_loss"],
    )


def ablation(corpus, target, every, rows=None):
    print(f"ablation: training time (steps only) to a validation loss of {target:.4f} [{load()}]")
    print("| change | steps to target | training time to target | tokens/s (steps) |")
    print("| --- | ---: | ---: | ---: |")
    for i, (name, flags) in enumerate(ABLATION):
        if rows and i not in rows:
            continue
        r = run_to_target(flags, corpus, target, every)
        reached = (
            f"{r['steps']:,} | {r['train_time']:.1f} s" if r["steps"] else f"not reached ({r['val_loss']:.4f}) | -"
        )
        print(f"| {name} | {reached} | {r['tokens_per_sec']:,.0f} |  [{load()}]", flush=True)


def run_nanogpt(directory, python, threads=None):
    """Returns the figures of one run of nanoGPT's README CPU command (fresh output directory)."""
    with tempfile.TemporaryDirectory() as out:
        cpu = cpu_seconds()
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        lines, wall = timestamped([python, *NANOGPT_COMMAND, f"--out_dir={out}"], cwd=directory, env=env)
        cpu = cpu_seconds() - cpu
        full = subprocess.run(
            [python, "-c", NANOGPT_FULL_VAL, out], cwd=directory, capture_output=True, text=True, check=True
        ).stdout
    evaluations = [(t, float(m[1])) for t, line in lines if (m := re.match(r"step \d+: .*val loss ([\d.]+)", line))]
    loop_start = next(t for t, line in lines if line.startswith("using fused AdamW"))
    tokens = 2000 * 12 * 64
    final = float(re.search(r"loss ([\d.]+)", full)[1])
    return dict(
        name="nanoGPT",
        steps=2000,
        tokens=tokens,
        step_tokens_per_sec=None,
        loop_tokens_per_sec=tokens / (lines[-1][0] - loop_start),
        to_target=evaluations[-1][0],  # its final evaluation defines the target
        final_loss=final,
        estimated_loss=evaluations[-1][1],
        wall=wall,
        cpu=cpu,
    )


def show(r):
    speed = f"{r['step_tokens_per_sec']:>8,.0f}" if r["step_tokens_per_sec"] else f"{'-':>8}"
    to_target = f"{r['to_target']:7.1f} s" if r["to_target"] is not None else "    not reached"
    extra = f"  (its own estimate {r['estimated_loss']:.4f})" if "estimated_loss" in r else ""
    print(
        f"  {r['name']:<12} steps {r['steps']:>5}  tokens/s {speed} (steps)  {r['loop_tokens_per_sec']:>8,.0f} "
        f"(loop)  to target {to_target}  final val loss {r['final_loss']:.4f}  wall {r['wall']:6.1f} s  CPU "
        f"{r['cpu']:6.1f} s{extra}  "
        f"[{load()}]",
        flush=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["speedrun"], help="our named configs (default: speedrun)")
    parser.add_argument("--corpus", default="data/shakespeare_standin.txt", help="corpus name or path")
    parser.add_argument("--target", type=float, help="validation loss to reach (default: nanoGPT's, needs --nanogpt)")
    parser.add_argument("--runs", type=int, default=3, help="rounds, interleaved (default 3)")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout to run first in each round")
    parser.add_argument("--nanogpt-python", default="python", help="the Python with PyTorch for nanoGPT")
    parser.add_argument(
        "--nanogpt-threads",
        type=int,
        help="OMP_NUM_THREADS for nanoGPT only (default: PyTorch's, one per core; on a loaded machine 1 is faster)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="FLAG", help="extra flags for our runs")
    parser.add_argument(
        "--ablation",
        type=int,
        metavar="EVERY",
        help="instead: the ablation table, each row evaluated every EVERY steps until it reaches --target",
    )
    parser.add_argument("--rows", type=int, nargs="+", help="with --ablation: only these rows (0 is the first)")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus)
    if args.corpus not in ("pyref", "shakespeare") and not (ROOT / corpus).is_file() and not corpus.is_file():
        parser.error(f"--corpus {args.corpus}: no such file (build it: python bench/shakespeare_standin.py)")
    if args.nanogpt is not None and not (args.nanogpt / "train.py").is_file():
        parser.error(f"--nanogpt {args.nanogpt}: not a nanoGPT checkout (no train.py)")
    if args.target is None and args.nanogpt is None:
        parser.error("give --target LOSS, or --nanogpt DIR to take nanoGPT's loss as the target")
    if args.runs < 1:
        parser.error(f"--runs must be at least 1; got {args.runs}")
    if args.ablation is not None:
        if args.target is None or args.ablation < 1:
            parser.error("--ablation EVERY needs --target LOSS and EVERY >= 1")
        ablation(args.corpus, args.target, args.ablation, args.rows)
        return
    if args.nanogpt is not None:
        prepare = [args.nanogpt_python, "data/shakespeare_char/prepare.py"]
        subprocess.run(prepare, cwd=args.nanogpt, check=True, capture_output=True)
        if shutil.which(args.nanogpt_python) is None and not Path(args.nanogpt_python).is_file():
            parser.error(f"--nanogpt-python {args.nanogpt_python}: not found")
    results = {}
    for round_ in range(args.runs):
        print(f"round {round_ + 1} of {args.runs} [{load()}]", flush=True)
        target = args.target
        if args.nanogpt is not None:
            r = run_nanogpt(args.nanogpt, args.nanogpt_python, args.nanogpt_threads)
            results.setdefault("nanoGPT", []).append(r)
            show(r)
            if args.target is None:
                target = statistics.median(x["final_loss"] for x in results["nanoGPT"])
        for config in args.configs:
            r = run_ours(config, args.corpus, target, args.set)
            results.setdefault(config, []).append(r)
            show(r)
    target = args.target or statistics.median(x["final_loss"] for x in results["nanoGPT"])
    print(f"medians over {args.runs} run(s); target {target:.4f}:")
    for name, rs in results.items():
        times = [r["to_target"] for r in rs if r["to_target"] is not None]
        to_target = statistics.median(times) if len(times) == len(rs) else float("nan")
        loop_speed = statistics.median(r["loop_tokens_per_sec"] for r in rs)
        print(
            f"  {name:<12} time to target {to_target:7.1f} s ({len(times)}/{len(rs)} reached)  loop tokens/s "
            f"{loop_speed:8,.0f}"
            f"  final val loss {statistics.median(r['final_loss'] for r in rs):.4f}  wall "
            f"{statistics.median(r['wall'] for r in rs):6.1f} s  CPU {statistics.median(r['cpu'] for r in rs):6.1f} s"
        )


if __name__ == "__main__":
    main()
