"""Experiment 1, scaling laws: loss against compute for several sizes and token budgets, with L(C) and L(N) fits
(given, not graded)."""

from pathlib import Path

import numpy as np

from lmrun.experiments.fits import (
    bootstrap_exponent,
    fit_loss_surface,
    fit_power_law,
    optimal_allocation,
    pareto_frontier,
    power_law,
)
from lmrun.experiments.sweeps import Sweep, plain_log_ticks, pyplot, quick_corpus, small_llama_request, write_table

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
                request = small_llama_request(
                    corpus, d_model, layers, heads, context, batch, steps, args.quick, lr=scaling_lr(d_model)
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
    plt = pyplot()
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
    plain_log_ticks(ax.yaxis)
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
    plain_log_ticks(ax.yaxis)
    ax.set_title(f"loss against size at the largest budget ({top[0]['tokens']:,} tokens)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling_loss_vs_params.png")
    plt.close(fig)
