"""Scaling-law figures (matplotlib, written as PNG files).

- `plot_loss_vs_compute`: every run's loss against its compute, and the compute-optimal
  frontier of an approach-3 fit;
- `plot_isoflops`: loss against N for each compute budget, with the approach-2 parabolas
  and their minima;
- `plot_optimal_allocation`: compute-optimal N and D against C with their power laws;
- `plot_emergence`: a sweep's emergence probes (ICL score, best induction score, copy
  gain) and its loss against N, one colour per compute budget.
"""
from __future__ import annotations

import numpy as np

from lmjax import plotting
from lmjax.scaling.fits import _cluster


def _figure():
    plt = plotting.pyplot()
    return plt, *plt.subplots(figsize=(6, 4.2), dpi=120)


def _save(plt, fig, ax, path):
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plotting.save(fig, path, tight=False)


def plot_loss_vs_compute(N, D, L, fit=None, path="loss_vs_compute.png"):
    plt, fig, ax = _figure()
    C = 6 * np.asarray(N, float) * np.asarray(D, float)
    points = ax.scatter(C, L, c=np.log10(N), s=12, cmap="viridis", label="runs")
    fig.colorbar(points, ax=ax, label="log10 N")
    if fit is not None:
        grid = np.logspace(np.log10(C.min()), np.log10(C.max()), 100)
        n_opt, d_opt = fit.compute_optimal(grid)
        ax.plot(grid, fit.predict(n_opt, d_opt), "r-", label=f"approach 3 frontier (E={fit.E:.3f})")
    ax.set(xscale="log", xlabel="training compute C = 6ND (FLOPs)", ylabel="loss", title="Loss vs compute")
    return _save(plt, fig, ax, path)


def plot_isoflops(N, D, L, allocation, rtol: float = 0.05, path="isoflops.png", C=None, window: int = 0):
    """C: each run's compute as the fit grouped it (default 6 N D); window: as the fit's
    (each parabola drawn through the runs it was fitted to)."""
    plt, fig, ax = _figure()
    N, D, L = (np.asarray(x, float) for x in (N, D, L))
    C = 6 * N * D if C is None else np.asarray(C, float)
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(allocation.C)))
    for budget, n_opt, l_opt, color in zip(allocation.C, allocation.N_opt, allocation.L_opt, colors):
        members = np.abs(C / budget - 1) <= rtol
        x, y = np.log(N[members]), L[members]
        ax.scatter(N[members], y, color=color, s=14)
        if window:
            near = np.argsort(np.abs(x - x[np.argmin(y)]))[:window]
            x, y = x[near], y[near]
        curve = np.linspace(x.min(), x.max(), 50)
        ax.plot(np.exp(curve), np.polyval(np.polyfit(x, y, 2), curve), color=color, label=f"C = {budget:.2g}")
        ax.plot([n_opt], [l_opt], "k*", ms=9)
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP profiles (* = N_opt)")
    return _save(plt, fig, ax, path)


def plot_optimal_allocation(allocation, path="optimal_allocation.png"):
    plt, fig, ax = _figure()
    C = np.asarray(allocation.C)
    grid = np.logspace(np.log10(C.min()), np.log10(C.max()), 50)
    ax.scatter(C, allocation.N_opt, color="C0")
    ax.plot(grid, allocation.n_law(grid), color="C0", label=f"N_opt ~ C^{allocation.n_law.exponent:.2f}")
    ax.scatter(C, allocation.D_opt, color="C1")
    ax.plot(grid, allocation.d_law(grid), color="C1", label=f"D_opt ~ C^{allocation.d_law.exponent:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="N_opt, D_opt",
           title="Compute-optimal allocation")
    return _save(plt, fig, ax, path)


def plot_emergence(N, C, L, probes: dict[str, np.ndarray], rtol: float = 0.05, path="emergence.png"):
    """Loss and each probe (name -> values per run) against N, one line per compute budget."""
    plt = plotting.pyplot()
    N, C, L = (np.asarray(x, float) for x in (N, C, L))
    panels = {"final val loss (nats/token)": L, **probes}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), dpi=120)
    budgets = _cluster(C, rtol)
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(budgets)))
    for ax, (name, values) in zip(np.atleast_1d(axes), panels.items()):
        values = np.asarray(values, float)
        for budget, color in zip(budgets, colors):
            members = np.flatnonzero(np.abs(C / budget - 1) <= rtol)
            members = members[np.argsort(N[members])]
            ax.plot(N[members], values[members], "o-", color=color, ms=4, label=f"C = {budget:.2g}")
        ax.set(xscale="log", xlabel="parameters N", title=name)
        ax.title.set_fontsize(9)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    return plotting.save(fig, path, tight=False)
