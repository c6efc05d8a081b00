"""The lecture's questions, by experiment: scaling laws, 7B-table ablation, quantization, grokking (given, not graded).

    python -m assignment.experiments scaling    # loss against compute for 6 sizes x 4 token budgets; L(C) and L(N) fits
    python -m assignment.experiments ablate     # the llama2 preset with one row of the 7B table changed at a time
    python -m assignment.experiments quantize   # int8 / int4 weights and KV cache of a trained run (runs/main)
    python -m assignment.experiments grok       # a + b mod p: training accuracy long before validation accuracy

Every training run is an ordinary run directory trained by `runs.run`, so an interrupted sweep resumes where it
stopped (the run it was in resumes from its checkpoint) and a finished run is never trained twice: it says
"already trained" and its history is re-used. Each experiment writes a table (`<name>.md`, `<name>.csv`) and PNG
plots into its output directory (`runs/experiments/<name>` unless `--out`), and `--quick` shrinks everything to
seconds (what the tests run). Dimension letters: N non-embedding parameters, D training tokens, C = 6 N D FLOPs.
"""

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

from assignment.cli import Parser

# ----------------------------------------------------------------------------------------------------------------
# Fits: L(x) = a x^-alpha + L_inf by least squares, and its bootstrap
# ----------------------------------------------------------------------------------------------------------------


def fit_power_law(x, y, grid=400):
    """Returns `dict(a, alpha, l_inf, sse)`: the least-squares fit of `y = a * x**-alpha + l_inf`.

    For a fixed `l_inf` the model is a straight line in log space, `log(y - l_inf) = log(a) - alpha log(x)`, so
    we scan `l_inf` over `[0, min(y))` (a coarse grid, then a fine one around the best), fit each line by linear
    least squares, and keep the `l_inf` whose curve has the smallest squared error in `y` itself.

    Args:
        x: positive floats `(n,)`, n >= 3 (compute, or parameters).
        y: positive floats `(n,)` (losses).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"fit_power_law needs x and y of the same shape (n,), n >= 3; got {x.shape} and {y.shape}")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("fit_power_law needs positive x and y")
    log_x = np.log(x)
    top = float(y.min())

    def scan(l_infs):  # (G,) candidate floors -> the best (sse, a, alpha, l_inf)
        gaps = np.log(np.maximum(y[None, :] - l_infs[:, None], 1e-300))  # (G, n)
        x_mean = log_x.mean()
        slope = ((log_x - x_mean)[None, :] * (gaps - gaps.mean(1, keepdims=True))).sum(1) / (
            (log_x - x_mean) ** 2
        ).sum()  # (G,)
        intercept = gaps.mean(1) - slope * x_mean  # (G,)
        curves = np.exp(intercept[:, None] + slope[:, None] * log_x[None, :]) + l_infs[:, None]  # (G, n)
        sse = ((curves - y[None, :]) ** 2).sum(1)  # (G,)
        best = int(np.argmin(sse))
        return float(sse[best]), float(np.exp(intercept[best])), float(-slope[best]), float(l_infs[best])

    coarse = np.linspace(0.0, top, grid, endpoint=False)
    sse, a, alpha, l_inf = scan(coarse)
    step = top / grid
    fine = np.clip(np.linspace(l_inf - step, l_inf + step, grid), 0.0, top * (1 - 1e-9))
    sse2, a2, alpha2, l_inf2 = scan(fine)
    if sse2 < sse:
        sse, a, alpha, l_inf = sse2, a2, alpha2, l_inf2
    return dict(a=a, alpha=alpha, l_inf=l_inf, sse=sse)


def power_law(x, fit):
    """Returns `fit["a"] * x**-fit["alpha"] + fit["l_inf"]`."""
    return fit["a"] * np.asarray(x, np.float64) ** -fit["alpha"] + fit["l_inf"]


def fit_loss_surface(n, d, loss, grid=60):
    """Returns `dict(e, a, b, alpha, beta, sse)`: the least-squares fit of `loss = e + a / n**alpha + b / d**beta`
    (Chinchilla's approach 3). For fixed exponents the model is linear in `(e, a, b)`, so we scan a grid of
    `(alpha, beta)` in [0.05, 1.5]^2, solve each by linear least squares and keep the best with `a, b >= 0`."""
    n, d, loss = (np.asarray(v, np.float64) for v in (n, d, loss))
    if not n.shape == d.shape == loss.shape or len(n) < 5:
        raise ValueError("fit_loss_surface needs n, d and loss of the same shape (m,), m >= 5")
    best = None
    for alpha in np.linspace(0.05, 1.5, grid):
        for beta in np.linspace(0.05, 1.5, grid):
            design = np.stack([np.ones_like(n), n**-alpha, d**-beta], axis=1)  # (m, 3)
            (e, a, b), *_ = np.linalg.lstsq(design, loss, rcond=None)
            if a < 0 or b < 0:
                continue
            sse = float(((design @ np.array([e, a, b]) - loss) ** 2).sum())
            if best is None or sse < best["sse"]:
                best = dict(e=float(e), a=float(a), b=float(b), alpha=float(alpha), beta=float(beta), sse=sse)
    if best is None:
        raise ValueError("no fit with non-negative a and b")
    return best


def optimal_allocation(fit, compute):
    """Returns `(n_opt, d_opt)`: the split of `compute = 6 n d` FLOPs that minimises the fitted loss surface."""
    g = (fit["alpha"] * fit["a"] / (fit["beta"] * fit["b"])) ** (1 / (fit["alpha"] + fit["beta"]))
    n_opt = g * (np.asarray(compute, np.float64) / 6) ** (fit["beta"] / (fit["alpha"] + fit["beta"]))
    return n_opt, np.asarray(compute, np.float64) / (6 * n_opt)


def pareto_frontier(compute, loss):
    """Returns the indices, by increasing compute, of the runs no cheaper-or-equal run beats: the compute-optimal
    frontier."""
    order = sorted(range(len(compute)), key=lambda i: (compute[i], loss[i]))
    frontier, best = [], math.inf
    for i in order:
        if loss[i] < best:
            frontier.append(i)
            best = loss[i]
    return frontier


def bootstrap_exponent(rows, x_key, fit_rows, samples=500, seed=0):
    """Returns the exponents alpha of `samples` bootstrap fits: runs drawn with replacement from `rows`, the fit
    taken over `fit_rows(resampled)` (e.g. its frontier); resamples with fewer than 3 distinct x are skipped."""
    rng = np.random.default_rng(seed)
    alphas = []
    for _ in range(samples):
        picked = [rows[i] for i in rng.integers(0, len(rows), len(rows))]
        chosen = fit_rows(picked)
        xs = sorted({r[x_key] for r in chosen})
        if len(xs) < 3:
            continue
        alphas.append(fit_power_law([r[x_key] for r in chosen], [r["val_loss"] for r in chosen])["alpha"])
    return np.array(alphas)


# ----------------------------------------------------------------------------------------------------------------
# Quantization: group-wise symmetric round-to-nearest, int4 packed two per byte
# ----------------------------------------------------------------------------------------------------------------


def quantize(w, bits, group_size=None):
    """Returns `(q, scales)`: `w` quantized to signed `bits`-bit integers, one scale per group.

    Groups are runs of `group_size` consecutive elements along the last axis (the whole last axis when None); a
    last axis that `group_size` does not divide ends with a shorter group. Each group's scale is its largest
    magnitude divided by `qmax = 2**(bits - 1) - 1`, stored as float16 (rounded up, so nothing clips), and
    `q = round(w / scale)` lies in `[-qmax, qmax]`: every element is off by at most half its group's scale.

    Args:
        w: float array `(..., K)`.
        bits: 2 to 8.
        group_size: elements per group (>= 1), or None for one group per row.

    Returns:
        q: int8 array of `w`'s shape.
        scales: float16 array `(..., G)` with `G = ceil(K / group_size)`.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8; got {bits}")
    w = np.asarray(w, np.float32)
    k = w.shape[-1]
    g = k if group_size is None else int(group_size)
    if g < 1:
        raise ValueError(f"group_size must be >= 1 or None; got {group_size}")
    qmax = 2 ** (bits - 1) - 1
    groups = -(-k // g)
    padded = np.zeros(w.shape[:-1] + (groups * g,), np.float32)
    padded[..., :k] = w
    blocks = padded.reshape(w.shape[:-1] + (groups, g))  # (..., G, g)
    scales = (np.abs(blocks).max(-1) / qmax).astype(np.float32)  # (..., G)
    stored = scales.astype(np.float16)
    low = stored.astype(np.float32) < scales  # rounded down: one float16 step up, so |w| / scale <= qmax
    stored[low] = np.nextafter(stored[low], np.float16(np.inf))
    safe = np.where(stored > 0, stored.astype(np.float32), 1.0)  # an all-zero group quantizes to zeros
    q = np.clip(np.rint(blocks / safe[..., None]), -qmax, qmax).astype(np.int8)  # (..., G, g)
    return q.reshape(w.shape[:-1] + (groups * g,))[..., :k], stored


def dequantize(q, scales, group_size=None):
    """Returns the float32 array `q * scale` that `quantize` encoded (same shape as `q`)."""
    q = np.asarray(q)
    k = q.shape[-1]
    g = k if group_size is None else int(group_size)
    per_element = np.repeat(np.asarray(scales, np.float32), g, axis=-1)[..., :k]  # (..., K)
    return q.astype(np.float32) * per_element


def pack_int4(q):
    """Returns uint8 `(ceil(n / 2),)`: the n int4 values of `q` (each in [-8, 7]) two per byte, the even-indexed
    one in the low nibble (a trailing zero nibble pads an odd n)."""
    flat = np.asarray(q, np.int8).reshape(-1)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7]; got [{flat.min()}, {flat.max()}]")
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nibbles = flat.astype(np.uint8) & 0x0F  # two's complement in 4 bits
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, n):
    """Returns int8 `(n,)`: the first n values that `pack_int4` packed into `packed`."""
    packed = np.asarray(packed, np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:n].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def stored_bytes(num_values, bits, num_scales):
    """Returns the bytes of `num_values` codes of `bits` bits (int4: two per byte) and their float16 scales."""
    code_bytes = num_values if bits == 8 else math.ceil(num_values * bits / 8)
    return code_bytes + 2 * num_scales


def fake_quantize(w, bits, group_size=None):
    """Returns `dequantize(*quantize(w, bits, group_size))`: what the model computes with after quantizing."""
    q, scales = quantize(w, bits, group_size)
    if bits == 4:  # through the packed form, as it would be stored
        q = unpack_int4(pack_int4(q), q.size).reshape(q.shape)
    return dequantize(q, scales, group_size)


# ----------------------------------------------------------------------------------------------------------------
# Shared by the sweeps: run directories through runs.run, tables, the command line
# ----------------------------------------------------------------------------------------------------------------


class ExperimentError(ValueError):
    """Something the user can fix (a flag, a run directory); printed as one line."""


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

        from assignment import runs

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
        config = runs.read_run_config(request.run_dir)
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
    from assignment.corpus import python_reference

    path = Path(out_dir) / "quick_corpus.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(python_reference()[:20000])
    return str(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(axis):
    """Labels a logarithmic loss axis 1.4, 1.6, ... rather than 1.4 x 10^0."""
    from matplotlib.ticker import FormatStrFormatter

    axis.set_major_formatter(FormatStrFormatter("%.1f"))
    axis.set_minor_formatter(FormatStrFormatter("%.1f"))


# ----------------------------------------------------------------------------------------------------------------
# 1. Scaling laws
# ----------------------------------------------------------------------------------------------------------------

# (d_model, num_layers, num_heads): LLaMA-2-style models whose non-embedding parameters span ~140x. Each trains at
# every token budget with its own cosine schedule (Chinchilla's approach 1 with one run per budget).
SCALING_SIZES = ((16, 1, 2), (24, 2, 2), (32, 2, 2), (48, 3, 4), (64, 4, 4), (96, 4, 4))
SCALING_STEPS = (125, 250, 500, 1000)  # x 16 sequences x 64 tokens: 128K to 1M tokens per run
QUICK_SIZES = ((8, 1, 2), (16, 1, 2), (24, 1, 2), (32, 2, 2))
QUICK_STEPS = (4, 8)


def scaling_lr(d_model):
    """Returns the peak learning rate of a width: narrower models take larger steps (~1/width, capped)."""
    return min(8e-3, 2e-3 * 128 / d_model)


def scaling(args):
    """Trains every size at every budget, fits L(C) on the compute-optimal frontier and L(N) at the largest
    budget, and writes scaling.md/.csv and two log-log plots. Returns the summary dict."""
    from assignment import runs

    sizes = QUICK_SIZES if args.quick else SCALING_SIZES
    budgets = QUICK_STEPS if args.quick else tuple(args.steps or SCALING_STEPS)
    batch, context = (4, 16) if args.quick else (16, 64)
    out = Path(args.out)
    corpus = quick_corpus(out) if args.quick else "pyref"
    sweep = Sweep(out, len(sizes) * len(budgets), progress=not args.no_progress, desc="scaling")
    rows = []
    try:
        for d_model, layers, heads in sizes:
            for steps in budgets:
                request = runs.RunRequest(
                    config="main",
                    corpus=corpus,
                    preset="llama2",
                    d_model=d_model,
                    num_layers=layers,
                    num_heads=heads,
                    context_length=context,
                    batch_size=batch,
                    steps=steps,
                    lr=scaling_lr(d_model),
                    warmup_steps=max(1, steps // 10),
                    eval_every=steps,
                    time_budget=0,
                    no_jit=args.quick,  # compiling with XLA costs more than it saves in a run of seconds
                )
                row = sweep.run(f"d{d_model}-l{layers}-s{steps}", request)
                row["compute"] = 6.0 * row["non_embedding_params"] * row["tokens"]
                row["tokens_per_param"] = row["tokens"] / row["non_embedding_params"]
                rows.append(row)
    finally:
        sweep.close()
    summary = analyse_scaling(rows, samples=100 if args.quick else 1000)
    header = [
        ("run", "name"),
        ("non-embedding params N", "non_embedding_params"),
        ("params", "params"),
        ("tokens D", "tokens"),
        ("compute C = 6ND", "compute", ".2e"),
        ("D/N", "tokens_per_param", ".1f"),
        ("val loss", "val_loss"),
        ("frontier", "frontier"),
        ("tokens/s", "tokens_per_sec", ",.0f"),
    ]
    text = write_table(out, "scaling", header, rows, notes=summary["text"])
    plot_scaling(rows, summary, out)
    print(text)
    print(f"trained {sweep.trained} runs, re-used {sweep.reused}; wrote {out / 'scaling.md'}, {out / 'scaling.csv'}")
    return dict(summary, rows=rows, trained=sweep.trained, reused=sweep.reused)


def _frontier_rows(rows):
    return [rows[i] for i in pareto_frontier([r["compute"] for r in rows], [r["val_loss"] for r in rows])]


def _largest_budget_rows(rows):
    top = max(r["tokens"] for r in rows)
    return [r for r in rows if r["tokens"] == top]


def analyse_scaling(rows, samples=1000):
    """Returns the fits of L(C) on the frontier and L(N) at the largest budget, their bootstrap spreads, the
    compute-optimal tokens per parameter and a text saying all of it."""
    frontier = _frontier_rows(rows)
    for r in rows:
        r["frontier"] = "yes" if r in frontier else ""
    lines = []
    summary = dict(frontier=[r["name"] for r in frontier])
    for key, x_key, chosen, pick, what in (
        ("fit_c", "compute", frontier, _frontier_rows, "L(C) on the compute-optimal frontier"),
        (
            "fit_n",
            "non_embedding_params",
            _largest_budget_rows(rows),
            _largest_budget_rows,
            "L(N) at the largest budget",
        ),
    ):
        if len({r[x_key] for r in chosen}) < 3:
            lines.append(f"{what}: fewer than 3 distinct points ({len(chosen)}), no fit.")
            summary[key] = None
            continue
        fit = fit_power_law([r[x_key] for r in chosen], [r["val_loss"] for r in chosen])
        alphas = bootstrap_exponent(rows, x_key, pick, samples=samples)
        if len(alphas):
            low, mid, high = np.percentile(alphas, [16, 50, 84])
            fit.update(alpha_low=float(low), alpha_median=float(mid), alpha_high=float(high), bootstrap=len(alphas))
            spread = (
                f"bootstrap over runs ({len(alphas)} resamples): median {mid:.3f}, 68% interval [{low:.3f}, {high:.3f}]"
            )
        else:
            spread = "no bootstrap resample had 3 distinct points"
        summary[key] = fit
        symbol = "C" if x_key == "compute" else "N"
        lines.append(
            f"{what} ({len(chosen)} points): L = {fit['a']:.4g} {symbol}^-{fit['alpha']:.3f} + {fit['l_inf']:.3f}; "
            f"exponent {spread}."
        )
    ratios = [r["tokens_per_param"] for r in frontier]
    summary["tokens_per_param"] = ratios
    if ratios:
        lines.append(
            f"Compute-optimal tokens per non-embedding parameter on the frontier: median {np.median(ratios):.1f} "
            f"(from {min(ratios):.1f} to {max(ratios):.1f} over {len(ratios)} frontier runs) against Chinchilla's ~20 "
            f"(Chinchilla counts all parameters; with them the median is "
            f"{np.median([r['tokens'] / r['params'] for r in frontier]):.1f}). With budgets a factor 2 apart, "
            f"the frontier is coarse: each of its points is only the best run at or below its compute."
        )
    if len(rows) >= 5:
        surface = fit_loss_surface(
            [r["non_embedding_params"] for r in rows], [r["tokens"] for r in rows], [r["val_loss"] for r in rows]
        )
        compute = np.array([min(r["compute"] for r in rows), max(r["compute"] for r in rows)])
        n_opt, d_opt = optimal_allocation(surface, compute)
        summary.update(surface=surface, optimal_tokens_per_param=(d_opt / n_opt).tolist())
        lines.append(
            f"Fitted over all {len(rows)} runs (Chinchilla's approach 3): L(N, D) = {surface['e']:.3f} + "
            f"{surface['a']:.3g} / N^{surface['alpha']:.2f} + {surface['b']:.3g} / D^{surface['beta']:.2f}. Its "
            f"compute-optimal split gives N_opt ~ C^{surface['beta'] / (surface['alpha'] + surface['beta']):.2f} and "
            f"D/N = {d_opt[0] / n_opt[0]:.1f} tokens per non-embedding parameter at C = {compute[0]:.2g}, "
            f"{d_opt[1] / n_opt[1]:.1f} at C = {compute[1]:.2g} (Chinchilla: ~20, N_opt ~ C^0.5)."
        )
    summary["text"] = "\n\n".join(lines)
    return summary


def plot_scaling(rows, summary, out):
    """Saves scaling_loss_vs_compute.png and scaling_loss_vs_params.png (log-log) into `out`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    sizes = sorted({r["non_embedding_params"] for r in rows})
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    for n, color in zip(sizes, colors):
        mine = sorted((r for r in rows if r["non_embedding_params"] == n), key=lambda r: r["compute"])
        ax.plot(
            [r["compute"] for r in mine],
            [r["val_loss"] for r in mine],
            "o-",
            color=color,
            ms=4,
            lw=1,
            label=f"N = {n:,}",
        )
    frontier = [r for r in rows if r.get("frontier")]
    ax.plot(
        [r["compute"] for r in frontier],
        [r["val_loss"] for r in frontier],
        "s",
        mfc="none",
        mec="red",
        ms=9,
        label="compute-optimal frontier",
    )
    fit = summary.get("fit_c")
    if fit:
        cs = np.geomspace(min(r["compute"] for r in rows), max(r["compute"] for r in rows), 100)
        ax.plot(
            cs,
            power_law(cs, fit),
            "r--",
            lw=1.5,
            label=f"fit: {fit['a']:.3g} C^-{fit['alpha']:.3f} + {fit['l_inf']:.2f}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C = 6 N D (FLOPs)")
    ax.set_ylabel("validation loss (nats per character)")
    _plain_log_ticks(ax.yaxis)
    ax.set_title("loss against compute, one curve per model size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling_loss_vs_compute.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    top = _largest_budget_rows(rows)
    ax.plot([r["non_embedding_params"] for r in top], [r["val_loss"] for r in top], "o", label="runs")
    fit = summary.get("fit_n")
    if fit:
        ns = np.geomspace(min(sizes), max(sizes), 100)
        ax.plot(ns, power_law(ns, fit), "r--", label=f"fit: {fit['a']:.3g} N^-{fit['alpha']:.3f} + {fit['l_inf']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats per character)")
    _plain_log_ticks(ax.yaxis)
    ax.set_title(f"loss against size at the largest budget ({top[0]['tokens']:,} tokens)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling_loss_vs_params.png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# 2. The 7B table, one row at a time
# ----------------------------------------------------------------------------------------------------------------

# Each variant changes one row of the lecture's table from the llama2 preset (RMSNorm, RoPE, GQA, no biases,
# sequential block, SwiGLU at 8/3, untied embeddings). `--set` values, as `python -m assignment.train --set`.
ABLATIONS = {
    "llama2 (base)": [],
    "norm: LayerNorm": ["norm=layernorm"],
    "norm: non-parametric": ["norm=nonparametric"],
    "positions: learned": ["positions=learned"],
    "positions: sinusoidal": ["positions=sinusoidal"],
    "MLP: GELU at 4": ["activation=gelu", "mlp_ratio=4.0"],
    "attention: MHA": ["num_kv_heads={heads}"],
    "attention: MQA": ["num_kv_heads=1"],
    "block: parallel": ["block=parallel"],
    "biases: all": ["bias=all"],
    "embeddings: tied": ["tie_embeddings=true"],
}
# Rows of the table this TransformerConfig cannot express, and why (printed under the table).
NOT_EXPRESSIBLE = (
    "Not ablated: the table's sizes (width 4096, 32 layers, 32 heads, context 2048-4096, batches of ~4M tokens) do "
    "not fit this machine, so every variant shares one small size; its vocabulary row (32K-65K BPE tokens) cannot "
    "be expressed through `runs.run`, which offers character and word tokenizers only (all runs here are "
    "character-level). Every architectural row (norm, positions, attention variant, biases, block type, "
    "activation with its MLP ratio, weight tying) is expressible and ablated; LLaMA-2-7B itself uses full "
    "attention (GQA is its 34B/70B choice), which the MHA row covers."
)


def _slug(name):
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def ablate(args):
    """Trains the base and every variant with each seed on the same tokens; writes ablate.md/.csv and a plot."""
    from assignment import runs

    d_model, layers, heads, context, batch = (16, 1, 2, 16, 4) if args.quick else (64, 2, 4, 64, 16)
    steps = 6 if args.quick else args.steps
    rows = args.rows or (["norm-layernorm", "embeddings-tied"] if args.quick else [_slug(n) for n in ABLATIONS])
    names = ["llama2 (base)"] + [n for n in list(ABLATIONS)[1:] if _slug(n) in rows]
    seeds = list(range(args.seeds))
    out = Path(args.out)
    corpus = quick_corpus(out) if args.quick else "pyref"
    sweep = Sweep(out, len(names) * len(seeds), progress=not args.no_progress, desc="ablate")
    runs_by_name = {}
    try:
        for seed in seeds:  # every variant of a seed first: an interrupted sweep already has comparable pairs
            for name in names:
                request = runs.RunRequest(
                    config="main",
                    corpus=corpus,
                    preset="llama2",
                    d_model=d_model,
                    num_layers=layers,
                    num_heads=heads,
                    context_length=context,
                    batch_size=batch,
                    steps=steps,
                    warmup_steps=max(1, steps // 10),
                    eval_every=steps,
                    seed=seed,
                    time_budget=0,
                    set=[s.format(heads=heads) for s in ABLATIONS[name]],
                    no_jit=args.quick,
                )
                runs_by_name.setdefault(name, []).append(sweep.run(f"{_slug(name)}-seed{seed}", request))
    finally:
        sweep.close()
    rows = summarize_ablation(runs_by_name)
    header = [
        ("variant", "name"),
        ("changed", "changed"),
        ("params", "params"),
        ("val loss mean", "mean"),
        ("seed spread (max - min)", "spread"),
        ("vs base", "delta"),
        ("vs base, seed by seed", "per_seed"),
        ("beyond seed spread?", "verdict"),
        ("tokens/s", "tokens_per_sec", ",.0f"),
    ]
    base = rows[0]
    notes = (
        f"{len(seeds)} seeds per variant (the seed sets the initial weights and the batches; seed s gives every "
        f"variant the same batches), {steps} steps of {batch} x {context} characters = {steps * batch * context:,} "
        f"tokens each; width {d_model}, {layers} layers, {heads} heads. 'Beyond seed spread' means the variant's "
        f"range of losses over seeds does not overlap the base's ({base['low']:.4f} to {base['high']:.4f}); "
        f"'seed by seed' subtracts the base's loss with the same seed (the same batches).\n\n" + NOT_EXPRESSIBLE
    )
    text = write_table(out, "ablate", header, rows, notes=notes)
    plot_ablation(rows, runs_by_name, out)
    print(text)
    print(f"trained {sweep.trained} runs, re-used {sweep.reused}; wrote {out / 'ablate.md'}, {out / 'ablate.csv'}")
    return dict(rows=rows, trained=sweep.trained, reused=sweep.reused)


def summarize_ablation(runs_by_name):
    """Returns one row per variant: mean, spread and range of the final validation loss over seeds, its
    difference from the base and whether the ranges overlap."""
    rows = []
    for name, results in runs_by_name.items():
        losses = [r["val_loss"] for r in results]
        rows.append(
            dict(
                name=name,
                changed=", ".join(ABLATIONS.get(name, [])).replace("{heads}", "num_heads") or "-",
                params=results[0]["params"],
                mean=float(np.mean(losses)),
                spread=float(max(losses) - min(losses)),
                low=min(losses),
                high=max(losses),
                losses=losses,
                tokens_per_sec=float(np.median([r["tokens_per_sec"] for r in results])),
            )
        )
    base = rows[0]
    for row in rows:
        row["delta"] = "-" if row is base else f"{row['mean'] - base['mean']:+.4f}"
        pairs = zip(row["losses"], base["losses"])  # seed by seed: the same batches
        row["per_seed"] = "-" if row is base else " / ".join(f"{mine - theirs:+.3f}" for mine, theirs in pairs)
        if row is base:
            row["verdict"] = "-"
        elif row["low"] > base["high"]:
            row["verdict"] = "yes: worse"
        elif row["high"] < base["low"]:
            row["verdict"] = "yes: better"
        else:
            row["verdict"] = "no"
    return rows


def plot_ablation(rows, runs_by_name, out):
    """Saves ablate_val_loss.png: every seed's loss per variant, the base's range shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    ys = np.arange(len(rows))[::-1]
    base = rows[0]
    ax.axvspan(base["low"], base["high"], color="gray", alpha=0.25, label="base's range over seeds")
    for y, row in zip(ys, rows):
        ax.plot(row["losses"], [y] * len(row["losses"]), "o", color="C0", ms=5)
        ax.plot([row["mean"]], [y], "|", color="C3", ms=14, mew=2)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["name"] for r in rows], fontsize=8)
    ax.set_xlabel("validation loss after the same tokens (dots: seeds, bar: mean)")
    ax.set_title("one row of the 7B table changed at a time (from llama2)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "ablate_val_loss.png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# 3. Quantization of a trained run: weights, then the KV cache
# ----------------------------------------------------------------------------------------------------------------

WEIGHT_SCHEMES = (  # (label, bits, group size); None: one scale per output channel (the whole input axis)
    ("float32", 32, None),
    ("int8, per channel", 8, None),
    ("int8, groups of 32", 8, 32),
    ("int4, per channel", 4, None),
    ("int4, groups of 32", 4, 32),
    ("int4, groups of 16", 4, 16),
)
KV_SCHEMES = (("float32", 32), ("float16", 16), ("int8", 8), ("int4", 4))  # one scale per head and position


def quantizable(model):
    """Returns `[(variable, transpose)]`: every weight matrix of `model`, and whether its input axis is the first
    (a linear layer's `(D_in, D_out)`, quantized per output channel along D_in) rather than the last (the token
    embedding `(V, D)`, read along D both by the lookup and by the tied output projection)."""
    pairs = []
    for v in model.trainable_variables:
        if len(v.shape) != 2:
            continue  # norm gains and biases stay float32
        is_embedding = v is getattr(model, "token_embedding", None) or v is getattr(model, "position_embedding", None)
        pairs.append((v, not is_embedding))
    return pairs


def quantize_model_weights(model, bits, group_size):
    """Replaces every weight matrix of `model` by its round trip through `bits`-bit codes; returns
    `(stored_bytes, quantized_values, float_values)` of the whole model as it would be stored."""
    quantized = {id(v) for v, _ in quantizable(model)}
    total_bytes, q_values, f_values = 0, 0, 0
    for v, transpose in quantizable(model):
        w = v.numpy().T if transpose else v.numpy()  # (rows, K): groups along K, the axis the matmul sums over
        if bits >= 32:
            total_bytes += 4 * w.size
            f_values += w.size
            continue
        q, scales = quantize(w, bits, group_size)
        restored = dequantize(
            unpack_int4(pack_int4(q), q.size).reshape(q.shape) if bits == 4 else q, scales, group_size
        )
        v.assign(restored.T if transpose else restored)
        total_bytes += stored_bytes(q.size, bits, scales.size)
        q_values += q.size
    for v in model.trainable_variables:
        if id(v) not in quantized:
            total_bytes += 4 * int(np.prod(v.shape))
            f_values += int(np.prod(v.shape))
    return total_bytes, q_values, f_values


class QuantizedKVCache:
    """A transformer whose KV cache stores every key and value at `bits` bits (one float16 scale per head and
    position): each new position is rounded when it is written, after the step that wrote it has attended to it.

    It follows the generation protocol (`prefill`, `decode_step`, `config`), so `sampling.generate` uses it.
    """

    def __init__(self, model, bits):
        self.model = model
        self.config = model.config
        self.bits = bits

    def __call__(self, tokens, **kwargs):
        return self.model(tokens, **kwargs)

    def _round(self, cache, start, end):
        import tensorflow as tf

        if self.bits >= 32:
            return cache
        rounded = {}
        for part in ("keys", "values"):
            layers = []
            for tensor in cache[part]:
                array = tensor.numpy()  # (B, nkv, C, hs)
                if self.bits == 16:
                    array[:, :, start:end] = array[:, :, start:end].astype(np.float16).astype(np.float32)
                else:
                    array[:, :, start:end] = fake_quantize(array[:, :, start:end], self.bits)
                layers.append(tf.constant(array))
            rounded[part] = tuple(layers)
        rounded["index"] = cache["index"]
        return rounded

    def prefill(self, tokens):
        logits, cache = self.model.prefill(tokens)
        return logits, self._round(cache, 0, int(cache["index"]))

    def decode_step(self, next_ids, cache):
        start = int(cache["index"])
        logits, cache = self.model.decode_step(next_ids, cache)
        return logits, self._round(cache, start, start + 1)


def cached_loss(model, windows):
    """Returns the mean cross-entropy of predicting `windows[:, 1:]` `(B, T)` token by token through the model's
    KV cache (prefill the first token, then one decode step per position)."""
    import tensorflow as tf

    windows = np.asarray(windows, np.int32)
    logits, cache = model.prefill(tf.constant(windows[:, :1]))
    steps = [logits[:, -1]]
    for t in range(1, windows.shape[1] - 1):
        logits, cache = model.decode_step(tf.constant(windows[:, t : t + 1]), cache)
        steps.append(logits[:, -1])
    logits = tf.stack(steps, axis=1)  # (B, T, V)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=windows[:, 1:], logits=logits)
    return float(tf.reduce_mean(ce))


def kv_cache_bytes(config, bits, batch_size=1):
    """Returns the bytes of a full KV cache (L layers x keys and values x B x nkv x C x hs), with one float16 scale
    per head and position below 16 bits."""
    values = 2 * config.num_layers * batch_size * config.kv_heads * config.context_length * config.head_size
    if bits >= 16:
        return values * bits // 8
    return stored_bytes(values, bits, values // config.head_size)


def quantize_run(args):
    """Quantizes a trained run's weights and KV cache; writes quantize.md/.csv and a plot. Returns the rows."""
    from tqdm.auto import tqdm

    from assignment import preprocess, runs, sampling
    from assignment.corpus import load_corpus
    from assignment.data import validation_batches
    from assignment.train import evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.run_dir or (out / "model" if args.quick else "runs/main"))
    if runs.read_run_config(run_dir) is None or not (run_dir / "best").is_dir():
        print(
            f"{run_dir} holds no trained run: training it ({'tiny config' if args.quick else 'make train'}'s settings)"
        )
        request = runs.RunRequest(
            run_dir=str(run_dir),
            config="tiny" if args.quick else "main",
            corpus=quick_corpus(out) if args.quick else "pyref",
            time_budget=0,  # the whole schedule, however busy the machine
            sample_tokens=0,
            no_progress=args.no_progress,
            no_jit=args.quick,
        )
        try:
            runs.run(request)
        except runs.UsageError as error:
            raise ExperimentError(f"--run-dir {run_dir}: {str(error).splitlines()[0]}") from None
    model, tokenizer, config, path = runs.load_run(run_dir)
    text = load_corpus(config["corpus"])
    _, val_ids = preprocess.train_val_split(tokenizer.encode(text), config["val_fraction"])
    seq_len = config["train"]["seq_len"]
    val_batches = validation_batches(val_ids, seq_len, 64, max_batches=2 if args.quick else 0)
    prompt = tokenizer.encode(args.prompt)
    sample_tokens = 40 if args.quick else args.sample_tokens

    def sample(m):
        ids = sampling.generate(m, prompt, sample_tokens, temperature=0.8, seed=0)
        return tokenizer.decode(ids).replace("\n", " ")

    original = [v.numpy() for v in model.trainable_variables]
    weight_rows = []
    bar = tqdm(total=len(WEIGHT_SCHEMES) + len(KV_SCHEMES), unit="variant", desc="quantize", disable=args.no_progress)
    for label, bits, group in WEIGHT_SCHEMES:
        bar.set_postfix_str(label)
        for v, value in zip(model.trainable_variables, original):
            v.assign(value)
        size, q_values, f_values = quantize_model_weights(model, bits, group)
        loss, perplexity = evaluate(model, val_batches)
        matrix_bits = 32.0 if bits >= 32 else 8 * (size - 4 * f_values) / q_values
        weight_rows.append(
            dict(
                name=label,
                bits=bits,
                group=group or "channel",
                bits_per_weight=matrix_bits,
                bytes=size,
                val_loss=loss,
                val_perplexity=perplexity,
                sample=sample(model),
            )
        )
        bar.update(1)
    for v, value in zip(model.trainable_variables, original):
        v.assign(value)
    base = weight_rows[0]
    for row in weight_rows:
        row["change"] = f"{100 * (row['val_perplexity'] / base['val_perplexity'] - 1):+.2f}%"
        row["size"] = f"{row['bytes'] / 1024:,.1f} KiB"

    # The KV cache: token by token on the first validation windows (the full context), each scheme on the same ones.
    count = 4 if args.quick else args.kv_windows
    inputs, labels = preprocess.make_sequences(val_ids, seq_len)
    windows = np.concatenate([inputs[:count], labels[:count, -1:]], axis=1)  # (B, T + 1)
    mc = model.config
    kv_rows = []
    for label, bits in KV_SCHEMES:
        bar.set_postfix_str(f"KV {label}")
        wrapped = QuantizedKVCache(model, bits)
        loss = cached_loss(wrapped, windows)
        kv_rows.append(
            dict(
                name=label,
                bits=bits,
                bits_per_value=bits if bits >= 16 else bits + 16 / mc.head_size,
                bytes=kv_cache_bytes(mc, bits),
                val_loss=loss,
                val_perplexity=math.exp(loss),
                sample=sample(wrapped),
            )
        )
        bar.update(1)
    bar.close()
    for row in kv_rows:
        row["change"] = f"{100 * (row['val_perplexity'] / kv_rows[0]['val_perplexity'] - 1):+.2f}%"
        row["size"] = f"{row['bytes'] / 1024:,.1f} KiB"

    weights_header = [
        ("weights", "name"),
        ("bits per weight (matrices, with scales)", "bits_per_weight", ".2f"),
        ("stored size (whole model)", "size"),
        ("val loss", "val_loss"),
        ("val perplexity", "val_perplexity", ".3f"),
        ("change", "change"),
    ]
    kv_header = [
        ("KV cache", "name"),
        ("bits per value (with scales)", "bits_per_value", ".2f"),
        (f"size at context {mc.context_length} (batch 1)", "size"),
        ("val loss (token by token)", "val_loss"),
        ("val perplexity", "val_perplexity", ".3f"),
        ("change", "change"),
    ]
    samples = "\n".join(f"- {r['name']}: `{r['sample']}`" for r in weight_rows)
    kv_samples = "\n".join(f"- KV {r['name']}: `{r['sample']}`" for r in kv_rows)
    notes = (
        f"Run {run_dir} ({path}): {model.count_params():,} parameters, "
        f"{sum(v.numpy().size for v, _ in quantizable(model)):,} of them in weight matrices (quantized; norm gains "
        f"stay float32). Symmetric round-to-nearest, one float16 scale per group along each matrix's input axis; "
        f"int4 codes packed two per byte. Perplexity over the whole validation split "
        f"({len(val_ids):,} tokens{', 2 batches in --quick' if args.quick else ''}). Samples: prompt "
        f"{args.prompt!r}, {sample_tokens} tokens, temperature 0.8, seed 0 for all.\n\n{samples}\n"
    )
    kv_notes = (
        f"Keys and values: {mc.num_layers} layers x {mc.kv_heads} key/value heads x {mc.context_length} positions x "
        f"head size {mc.head_size}. Perplexity predicted token by token through the cache over the first {count} "
        f"validation windows of {seq_len} tokens (the same windows for every row; each new key and value is rounded "
        f"after the step that wrote it). Samples as above.\n\n{kv_samples}\n"
    )
    text = write_table(out, "quantize", weights_header, weight_rows, notes=notes)
    text += "\n" + write_table(out, "quantize_kv", kv_header, kv_rows, notes=kv_notes)
    (out / "quantize.md").write_text(text)
    plot_quantization(weight_rows, kv_rows, out)
    print(text)
    print(f"wrote {out / 'quantize.md'}, {out / 'quantize.csv'}, {out / 'quantize_kv.csv'}")
    return dict(weights=weight_rows, kv=kv_rows)


def plot_quantization(weight_rows, kv_rows, out):
    """Saves quantize.png: perplexity against stored size, for the weights and for the KV cache."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    for ax, rows, what in ((axes[0], weight_rows, "weights"), (axes[1], kv_rows, "KV cache")):
        ax.plot([r["bytes"] / 1024 for r in rows], [r["val_perplexity"] for r in rows], "o")
        for i, r in enumerate(rows):  # labels alternate above and below: neighbours of equal size do not overlap
            ax.annotate(
                r["name"],
                (r["bytes"] / 1024, r["val_perplexity"]),
                fontsize=7,
                xytext=(3, 3 if i % 2 == 0 else -10),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"stored size of the {what} (KiB)")
        ax.set_ylabel("validation perplexity")
        ax.set_title(f"{what}: perplexity against size")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "quantize.png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# 4. Grokking: a + b mod p
# ----------------------------------------------------------------------------------------------------------------


def modular_addition(p, train_fraction, seed=0):
    """Returns `(train, val)`, each `(inputs, labels, weights)` int32/float32 `(N, 3)`: the sequences `a b =`
    with every label 0 but the last, `(a + b) mod p`, the only one weighted. All p^2 pairs, shuffled, split."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    order = np.random.default_rng(seed).permutation(p * p)
    inputs = np.stack([a, b, np.full_like(a, p)], axis=1).astype(np.int32)[order]  # (p^2, 3): token p is "="
    labels = np.zeros_like(inputs)
    labels[:, -1] = ((a + b) % p)[order]
    weights = np.zeros(inputs.shape, np.float32)
    weights[:, -1] = 1.0
    cut = int(round(train_fraction * p * p))
    return (inputs[:cut], labels[:cut], weights[:cut]), (inputs[cut:], labels[cut:], weights[cut:])


def _grok_settings(args):
    if args.quick:
        return dict(
            p=11,
            train_fraction=0.5,
            steps=30,
            batch_size=32,
            d_model=32,
            num_heads=2,
            num_layers=1,
            lr=1e-2,
            weight_decay=1.0,
            seed=0,
            eval_every=10,
        )
    return dict(
        p=args.p,
        train_fraction=args.train_fraction,
        steps=args.steps,
        batch_size=args.batch_size,
        d_model=args.d_model,
        num_heads=4,
        num_layers=args.num_layers,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        eval_every=args.eval_every,
    )


def grok(args):
    """Trains a small transformer on a + b mod p with mini-batches and strong weight decay, evaluating
    accuracy on both splits; writes grok.md/.csv and grok.png. A finished run re-uses its history."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    from assignment import runs
    from assignment.checkpoints import Checkpoints
    from assignment.optim import make_optimizer
    from assignment.train import History, train_step
    from assignment.transformer import TransformerConfig, TransformerLanguageModel

    settings = _grok_settings(args)
    out = Path(args.out)
    run_dir = out / "run"
    saved = runs.read_run_config(run_dir) if (run_dir / "config.json").exists() else None
    if saved is not None and saved.get("grok") != settings:
        differences = [
            f"{k}: {settings[k]!r} here, {saved['grok'].get(k)!r} in the run"
            for k in settings
            if saved.get("grok", {}).get(k) != settings[k]
        ]
        raise ExperimentError(
            f"{run_dir} holds a grokking run with other settings ({'; '.join(differences)}); pass --out DIR for a "
            f"new one or --overwrite to start again"
        )
    (train_x, train_y, train_w), (val_x, val_y, val_w) = modular_addition(
        settings["p"], settings["train_fraction"], settings["seed"]
    )
    import keras

    keras.utils.set_random_seed(settings["seed"])
    config = TransformerConfig.preset(
        "gpt2",
        vocab_size=settings["p"] + 1,
        context_length=3,
        dropout=0.0,
        d_model=settings["d_model"],
        num_heads=settings["num_heads"],
        num_layers=settings["num_layers"],
    )
    model = TransformerLanguageModel(config)
    # Constant learning rate after a short warmup (min_lr_ratio 1), AdamW's decoupled weight decay, beta_2 0.98.
    optimizer = make_optimizer(
        "adamw",
        settings["lr"],
        settings["steps"],
        warmup_steps=10,
        min_lr_ratio=1.0,
        weight_decay=settings["weight_decay"],
        beta_1=0.9,
        beta_2=0.98,
        model=model,
    )
    optimizer.build(model.trainable_variables)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpts = Checkpoints(
        run_dir, model, optimizer, keep_last=1, save_every_steps=0, save_every_minutes=0.5, log=lambda line: None
    )
    restored = ckpts.restore()
    history = History(run_dir / "history.jsonl")
    if restored is None and history.read():
        raise ExperimentError(f"{run_dir} has a history but no checkpoint; pass --overwrite to start again")
    history.truncate(int(ckpts.step))
    runs.write_json(
        run_dir / "config.json", dict(model="transformer", model_config=config.to_dict(), train={}, grok=settings)
    )
    inputs, labels, weights = (tf.constant(a) for a in (train_x, train_y, train_w))

    @tf.function(jit_compile=True)
    def step_fn(picked):  # picked: int32 (B,), the training pairs of this step
        x, y, w = tf.gather(inputs, picked), tf.gather(labels, picked), tf.gather(weights, picked)
        loss, _ = train_step(model, optimizer, x, y, clip_norm=1.0, sample_weight=w)
        ckpts.step.assign_add(1)
        return loss

    def batch_at(step):  # depends only on (seed, step), so a resumed run draws the same batches
        n = len(train_x)
        if settings["batch_size"] >= n:
            return tf.range(n, dtype=tf.int32)
        rng = np.random.default_rng([settings["seed"], step])
        return tf.constant(rng.choice(n, settings["batch_size"], replace=False).astype(np.int32))

    @tf.function(jit_compile=True)
    def measure(x, y):  # accuracy and loss of the answer token
        logits = model(x, training=False)[:, -1]  # (N, V)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y[:, -1]), tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[:, -1], logits=logits)
        return tf.reduce_mean(correct), tf.reduce_mean(ce)

    def evaluate_both(step):
        train_acc, train_loss = measure(inputs, labels)
        val_acc, val_loss = measure(tf.constant(val_x), tf.constant(val_y))
        weight_norm = math.sqrt(sum(float(tf.reduce_sum(tf.square(v))) for v in model.trainable_variables))
        record = dict(
            step=step,
            train_acc=float(train_acc),
            val_acc=float(val_acc),
            train_loss=float(train_loss),
            val_loss=float(val_loss),
            weight_norm=weight_norm,
            train_time=round(float(ckpts.train_time), 3),
        )
        history.append(record)
        return record

    def due(step):  # evaluate at log-spaced steps early on and then every eval_every: the plot's x axis is log
        return step == settings["steps"] or step % settings["eval_every"] == 0 or step in _log_steps(settings["steps"])

    step = int(ckpts.step)
    if step >= settings["steps"]:
        print(f"{run_dir}: already trained (step {step}): history re-used")
    else:
        print(
            f"{run_dir}: a + b mod {settings['p']}, {len(train_x):,} training / {len(val_x):,} validation pairs, "
            f"{model.count_params():,} parameters, weight decay {settings['weight_decay']}, lr {settings['lr']}; "
            + (f"restored from step {step}" if restored is not None else "starting from scratch")
        )
        if step == 0 and not history.read():
            evaluate_both(0)
        bar = tqdm(
            total=settings["steps"],
            initial=step,
            unit="step",
            desc="grok",
            disable=args.no_progress,
            dynamic_ncols=True,
        )
        try:
            while step < settings["steps"]:
                started = time.perf_counter()
                loss = float(step_fn(batch_at(step)))
                ckpts.train_time.assign_add(time.perf_counter() - started)
                step = int(ckpts.step)
                bar.update(1)
                if due(step):
                    record = evaluate_both(step)
                    bar.set_postfix(
                        loss=f"{loss:.3f}", train=f"{record['train_acc']:.3f}", val=f"{record['val_acc']:.3f}"
                    )
                ckpts.maybe_save()
        except KeyboardInterrupt:
            ckpts.save()
            bar.close()
            print(f"interrupted at step {int(ckpts.step)}: saved; run the same command to resume")
            raise
        bar.close()
        ckpts.save()
    records = history.read()
    summary = summarize_grok(records, settings)
    header = [
        ("step", "step"),
        ("train accuracy", "train_acc", ".3f"),
        ("val accuracy", "val_acc", ".3f"),
        ("train loss", "train_loss", ".4f"),
        ("val loss", "val_loss", ".4f"),
        ("weight norm", "weight_norm", ".1f"),
    ]
    shown = [r for r in records if r["step"] in _table_steps(records)]
    text = write_table(out, "grok", header, shown, notes=summary["text"])
    with open(out / "grok_history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([h[1] for h in header])
        writer.writerows([[r[h[1]] for h in header] for r in records])
    plot_grok(records, summary, settings, out)
    print(text)
    print(f"wrote {out / 'grok.md'}, {out / 'grok.csv'}, {out / 'grok.png'}")
    return dict(summary, records=records)


def _log_steps(steps):
    return {int(round(s)) for s in np.geomspace(1, max(steps, 1), 60)}


def _table_steps(records):
    steps = [r["step"] for r in records]
    wanted = {steps[0], steps[-1]} | {int(10**e) for e in np.arange(0, 7, 0.5)}
    return {min(steps, key=lambda s: abs(math.log(s + 1) - math.log(w + 1))) for w in wanted}


def first_step(records, key, threshold):
    """Returns the first step whose `key` is at least `threshold`, or None."""
    return next((r["step"] for r in records if r[key] >= threshold), None)


def summarize_grok(records, settings):
    """Returns when each split first reached 99% accuracy and a text saying what that shows."""
    train_at = first_step(records, "train_acc", 0.99)
    val_at = first_step(records, "val_acc", 0.99)
    last = records[-1]
    if train_at is not None and val_at is not None:
        after = min(r["val_acc"] for r in records if r["step"] >= val_at)
        verdict = (
            f"Training accuracy first reached 99% at step {train_at:,} and validation accuracy at step {val_at:,}, "
            f"{val_at / max(train_at, 1):.1f}x later: "
            + ("grokking" if val_at >= 3 * max(train_at, 1) else "too close together to call it grokking")
            + f" (after that, validation accuracy stays at or above {after:.1%})."
        )
    elif train_at is not None:
        verdict = (
            f"Training accuracy first reached 99% at step {train_at:,}; validation accuracy did not (it ends at "
            f"{last['val_acc']:.1%} after {last['step']:,} steps): memorised, not (yet) generalised in this budget."
        )
    else:
        verdict = f"Training accuracy did not reach 99% in {last['step']:,} steps (it ends at {last['train_acc']:.1%})."
    text = (
        f"a + b mod {settings['p']}, {settings['train_fraction']:.0%} of the {settings['p'] ** 2:,} pairs for "
        f"training, AdamW on batches of {settings['batch_size']} (lr {settings['lr']}, weight decay "
        f"{settings['weight_decay']}), a "
        f"{settings['num_layers']}-block "
        f"GPT-2-style transformer of width {settings['d_model']}. {verdict} The weight norm goes from "
        f"{records[0]['weight_norm']:.1f} to {last['weight_norm']:.1f}."
    )
    return dict(train_at=train_at, val_at=val_at, text=text)


def plot_grok(records, summary, settings, out):
    """Saves grok.png: training and validation accuracy against step (log axis), and the two losses."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6.4, 6), dpi=120, sharex=True)
    steps = [max(r["step"], 1) for r in records]
    ax.plot(steps, [r["train_acc"] for r in records], label="training accuracy")
    ax.plot(steps, [r["val_acc"] for r in records], label="validation accuracy")
    for at, color in ((summary["train_at"], "C0"), (summary["val_at"], "C1")):
        if at is not None:
            ax.axvline(max(at, 1), color=color, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"a + b mod {settings['p']}, {settings['train_fraction']:.0%} of pairs for training, "
        f"weight decay {settings['weight_decay']}"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax2.plot(steps, [r["train_loss"] for r in records], label="training loss")
    ax2.plot(steps, [r["val_loss"] for r in records], label="validation loss")
    ax2.set_yscale("log")
    ax2.set_xlabel("step (log)")
    ax2.set_ylabel("cross-entropy")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "grok.png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------------


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
        prog="python -m assignment.experiments",
        description="The lecture's questions, answered by experiment on this machine. Each writes a Markdown and a "
        "CSV table and PNG plots into --out; runs resume, and finished runs are re-used, not trained again.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m assignment.experiments scaling                 # ~20 min: 6 sizes x 4 budgets, L(C) fit\n"
        "  python -m assignment.experiments ablate --seeds 3\n"
        "  python -m assignment.experiments quantize --run-dir runs/main\n"
        "  python -m assignment.experiments grok --p 97 --steps 6000\n"
        "  python -m assignment.experiments scaling --quick --out /tmp/scaling   # seconds: what the tests run",
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
        from assignment.runs import read_run_config

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
    from assignment.checkpoints import CheckpointError
    from assignment.data import CorpusTooSmall
    from assignment.train import Diverged

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
    except (ExperimentError, CheckpointError, CorpusTooSmall, Diverged) as error:
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


if __name__ == "__main__":
    sys.exit(main())
