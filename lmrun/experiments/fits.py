"""Power-law fits: L(x) = a x^-alpha + L_inf by least squares, the loss surface, the compute frontier and the
bootstrap of an exponent (given, not graded)."""

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike


def fit_power_law(x: ArrayLike, y: ArrayLike, grid: int = 400) -> dict[str, float]:
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


def power_law(x: ArrayLike, fit: dict[str, float]) -> np.ndarray:
    """Returns `fit["a"] * x**-fit["alpha"] + fit["l_inf"]`."""
    return fit["a"] * np.asarray(x, np.float64) ** -fit["alpha"] + fit["l_inf"]


def fit_loss_surface(n: ArrayLike, d: ArrayLike, loss: ArrayLike, grid: int = 60) -> dict[str, float]:
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


def optimal_allocation(fit: dict[str, float], compute: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(n_opt, d_opt)`: the split of `compute = 6 n d` FLOPs that minimises the fitted loss surface."""
    g = (fit["alpha"] * fit["a"] / (fit["beta"] * fit["b"])) ** (1 / (fit["alpha"] + fit["beta"]))
    n_opt = g * (np.asarray(compute, np.float64) / 6) ** (fit["beta"] / (fit["alpha"] + fit["beta"]))
    return n_opt, np.asarray(compute, np.float64) / (6 * n_opt)


def pareto_frontier(compute: Sequence[float], loss: Sequence[float]) -> list[int]:
    """Returns the indices, by increasing compute, of the runs no cheaper-or-equal run beats: the compute-optimal
    frontier."""
    order = sorted(range(len(compute)), key=lambda i: (compute[i], loss[i]))
    frontier, best = [], math.inf
    for i in order:
        if loss[i] < best:
            frontier.append(i)
            best = loss[i]
    return frontier


def bootstrap_exponent(
    rows: list[dict],
    x_key: str,
    fit_rows: Callable[[list[dict]], list[dict]],
    samples: int = 500,
    seed: int = 0,
) -> np.ndarray:
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
