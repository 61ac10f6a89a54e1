"""Scaling-law fits: Chinchilla's three approaches and Kaplan's single-variable laws.

Every fit takes arrays of model sizes N, training tokens D (compute C = 6 N D unless given)
and losses L, all positive.

- Approach 1 (`fit_envelope`): the lowest loss reached at each compute, then power laws
  N_opt ~ C^a and D_opt ~ C^b through the runs on that envelope.
- Approach 2 (`fit_isoflop`): at each compute budget a parabola of L in log N; its
  minimum is N_opt(C); then N_opt ~ C^a and D_opt ~ C^b across budgets
  (`isoflop_leave_one_out`: the exponents' range when each run is left out in turn).
- Approach 3 (`fit_parametric`): L = E + A / N^alpha + B / D^beta, fitted in log space by
  minimising sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)
  (A = e^a, B = e^b, E = e^e; delta = 1e-3) with L-BFGS from every start of a grid,
  keeping the best (Hoffmann et al. 2022, as replicated by Besiroglu et al. 2024), with
  bootstrap percentile intervals.
- Kaplan et al. 2020 (`fit_kaplan`): L(N) = (N_c / N)^alpha_N, or L(D) likewise, as a line
  in log-log space.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from lmjax.errors import LmjaxError

# Hoffmann et al.'s grid of initialisations (the Epoch replication uses the same).
DEFAULT_GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.01, 5.0),
    "b": np.arange(0.0, 25.01, 5.0),
}
PARAMETRIC_NAMES = ("E", "A", "B", "alpha", "beta")


def check_points(n_points: int, minimum: int, **columns) -> dict[str, np.ndarray]:
    """Columns as float arrays; every value finite and positive, enough points."""
    out = {}
    for name, values in columns.items():
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1 or len(x) != n_points:
            raise LmjaxError(f"{name}: expected {n_points} values, got shape {x.shape}")
        bad = ~np.isfinite(x) | (x <= 0)
        if bad.any():
            raise LmjaxError(f"{name}: {int(bad.sum())} value(s) not positive and finite, e.g. row "
                             f"{int(np.argmax(bad))} = {x[bad][0]!r}; scaling fits take logs")
        out[name] = x
    if n_points < minimum:
        raise LmjaxError(f"{n_points} points are too few for this fit: it needs at least {minimum}")
    return out


# ------------------------------------------------------------------ approach 3


@dataclasses.dataclass
class ParametricFit:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float  # the Huber objective at the optimum
    n_points: int
    delta: float
    starts: int
    wall_s: float
    intervals: dict[str, tuple[float, float]] | None = None  # 95% bootstrap percentiles

    def predict(self, N, D):
        return self.E + self.A / np.asarray(N, float) ** self.alpha + self.B / np.asarray(D, float) ** self.beta

    def compute_optimal(self, C):
        """(N_opt, D_opt) minimising L at compute C = 6 N D."""
        a, b = self.alpha, self.beta
        G = (a * self.A / (b * self.B)) ** (1 / (a + b))
        C6 = np.asarray(C, float) / 6
        return G * C6 ** (b / (a + b)), C6 ** (a / (a + b)) / G

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _huber_objective(theta, log_n, log_d, log_l, delta):
    """Huber loss of the log-space residuals and its gradient, theta = (a, b, e, alpha, beta).

    Written out by hand (no scipy.special.logsumexp): it runs ~10^5 times per fit."""
    a, b, e, alpha, beta = theta
    t1, t2 = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(t1, t2), e)
    w1, w2, w3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = w1 + w2 + w3
    r = top + np.log(total) - log_l
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    dr = np.where(small, r, delta * np.sign(r)) / total  # d Huber / d r, times the softmax normaliser
    g1, g2 = dr * w1, dr * w2
    grad = np.array([g1.sum(), g2.sum(), (dr * w3).sum(), -(g1 @ log_n), -(g2 @ log_d)])
    return value, grad


# L-BFGS-B's default tolerances stop where the objective is flat in A and B (it is, at
# ~1e-3): the polish and the bootstrap refits use these instead.
TIGHT = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000}


def _best_start(starts, log_n, log_d, log_l, delta, options=None):
    best = None
    # One BLAS thread: these are thousands of 5-parameter problems, and a multithreaded BLAS
    # spinning up for each tiny vector operation made a fit 100x slower on a shared 2-core box.
    with threadpool_limits(limits=1, user_api="blas"):
        for theta0 in starts:
            res = minimize(_huber_objective, theta0, args=(log_n, log_d, log_l, delta), jac=True,
                           method="L-BFGS-B", options=options)
            if best is None or res.fun < best.fun:
                best = res
    return best


def fit_parametric(N, D, L, *, delta: float = 1e-3, grid: dict | None = None, bootstrap: int = 0,
                   seed: int = 0, progress=None) -> ParametricFit:
    """Chinchilla approach 3. `bootstrap` > 0 resamples the points that many times, refits
    each from the full fit's optimum, and reports 95% percentile intervals."""
    cols = check_points(len(np.atleast_1d(L)), 6, N=N, D=D, loss=L)
    log_n, log_d, log_l = np.log(cols["N"]), np.log(cols["D"]), np.log(cols["loss"])
    grid = {**DEFAULT_GRID, **(grid or {})}
    starts = [np.array([a, b, e, al, be]) for al, be, e, a, b in
              itertools.product(grid["alpha"], grid["beta"], grid["e"], grid["a"], grid["b"])]
    t0 = time.perf_counter()
    best = _best_start(progress(starts) if progress else starts, log_n, log_d, log_l, delta)
    best = _best_start([best.x], log_n, log_d, log_l, delta, TIGHT)
    a, b, e, alpha, beta = best.x
    fit = ParametricFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                        beta=float(beta), objective=float(best.fun), n_points=len(log_l), delta=delta,
                        starts=len(starts), wall_s=0.0)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(log_l), len(log_l))
            res = _best_start([best.x], log_n[idx], log_d[idx], log_l[idx], delta, TIGHT)
            ra, rb, re, ral, rbe = res.x
            samples.append([np.exp(re), np.exp(ra), np.exp(rb), ral, rbe])
        lo, hi = np.percentile(np.array(samples), [2.5, 97.5], axis=0)
        fit.intervals = {n: (float(l), float(h)) for n, l, h in zip(PARAMETRIC_NAMES, lo, hi)}
    fit.wall_s = time.perf_counter() - t0
    return fit


# ------------------------------------------------------------------ approaches 1 and 2


@dataclasses.dataclass
class PowerLaw:
    """y = coefficient * x^exponent, fitted as a line in log-log space."""

    exponent: float
    coefficient: float

    def __call__(self, x):
        return self.coefficient * np.asarray(x, float) ** self.exponent


def fit_power_law(x, y) -> PowerLaw:
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(slope), float(np.exp(intercept)))


@dataclasses.dataclass
class OptimalAllocation:
    """Compute-optimal N and D as power laws of C, from the points that define them."""

    C: list[float]
    N_opt: list[float]
    D_opt: list[float]
    L_opt: list[float]
    n_law: PowerLaw  # N_opt = k C^a
    d_law: PowerLaw  # D_opt = k C^b

    @property
    def tokens_per_parameter(self) -> list[float]:
        return [d / n for n, d in zip(self.N_opt, self.D_opt)]

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["tokens_per_parameter"] = self.tokens_per_parameter
        return out


def fit_isoflop(N, D, L, C=None, *, budgets=None, rtol: float = 0.05, window: int = 0) -> OptimalAllocation:
    """Chinchilla approach 2. Runs belong to the budget their compute is within `rtol` of
    (budgets: the distinct C values when not given); each budget needs 3 or more sizes.

    window > 0 fits each parabola to only the `window` runs nearest (in log N) to the
    budget's lowest loss: a profile spanning a wide range of sizes is not a parabola far
    from its minimum. A minimum outside the sizes fitted is an error: the runs do not
    bracket the optimum."""
    if window and window < 3:
        raise LmjaxError(f"window: a parabola needs at least 3 runs, got {window}")
    n = len(np.atleast_1d(L))
    cols = check_points(n, 6, N=N, D=D, loss=L, **({"C": C} if C is not None else {}))
    compute = cols.get("C", 6 * cols["N"] * cols["D"])
    if budgets is None:
        budgets = _cluster(compute, rtol)
    rows = []
    for budget in budgets:
        members = np.abs(compute / budget - 1) <= rtol
        if members.sum() < 3:
            raise LmjaxError(f"compute budget {budget:.3g} has {int(members.sum())} run(s); a parabola needs >= 3")
        x, y, log_d = np.log(cols["N"][members]), cols["loss"][members], np.log(cols["D"][members])
        if window:
            near = np.argsort(np.abs(x - x[np.argmin(y)]))[:window]
            x, y, log_d = x[near], y[near], log_d[near]
        c2, c1, c0 = np.polyfit(x, y, 2)
        if c2 <= 0:
            raise LmjaxError(f"compute budget {budget:.3g}: loss is not convex in log N (no minimum); "
                             "add sizes on both sides of the optimum")
        x_opt = -c1 / (2 * c2)
        if not x.min() <= x_opt <= x.max():
            raise LmjaxError(f"compute budget {budget:.3g}: the parabola's minimum N = {np.exp(x_opt):.3g} lies "
                             f"outside the sizes fitted ({np.exp(x.min()):.3g} to {np.exp(x.max()):.3g}); "
                             "add sizes on that side or fit a narrower window")
        # D_opt from the runs' own tokens (log D against log N, interpolated): C / (6 N_opt)
        # when C = 6ND, and right too when C counts more than 6N per token
        log_d_opt = np.polyval(np.polyfit(x, log_d, 2), x_opt)
        rows.append((budget, float(np.exp(x_opt)), float(np.exp(log_d_opt)), float(c0 + c1 * x_opt + c2 * x_opt**2)))
    return _allocation(rows)


def isoflop_leave_one_out(N, D, L, C=None, *, rtol: float = 0.05, window: int = 0) -> dict:
    """How much approach 2's exponents depend on single runs: refit without each run in turn
    (a budget left with < 3 runs or no minimum skips that refit) and report the range of
    a (N_opt ~ C^a), b (D_opt ~ C^b) and the tokens-per-parameter ratios over the refits.
    With a handful of budgets a bootstrap or a regression interval says little; this range
    is the honest spread."""
    N, D, L = (np.asarray(x, float) for x in (N, D, L))
    compute = np.asarray(C, float) if C is not None else 6 * N * D
    budgets = _cluster(compute, rtol)
    a, b, tpp = [], [], []
    for i in range(len(L)):
        keep = np.arange(len(L)) != i
        try:
            fit = fit_isoflop(N[keep], D[keep], L[keep], compute[keep], budgets=budgets, rtol=rtol, window=window)
        except ValueError:
            continue
        a.append(fit.n_law.exponent), b.append(fit.d_law.exponent), tpp.extend(fit.tokens_per_parameter)
    if not a:
        raise LmjaxError("no leave-one-out refit succeeded: every run is needed for a minimum")
    return {"refits": len(a), "of": len(L), "a": (min(a), max(a)), "b": (min(b), max(b)),
            "tokens_per_parameter": (min(tpp), max(tpp))}


def fit_envelope(N, D, L, C=None, *, bins_per_decade: int = 4) -> OptimalAllocation:
    """Chinchilla approach 1: in each logarithmic compute bin the run with the lowest loss;
    power laws of its N and D in C. Points may be several per run (loss along training)."""
    n = len(np.atleast_1d(L))
    cols = check_points(n, 3, N=N, D=D, loss=L, **({"C": C} if C is not None else {}))
    compute = cols.get("C", 6 * cols["N"] * cols["D"])
    # bins centred on round budgets (1e12 +- half a bin): a budget of 9.99e11 and one of 1e12 share one
    bins = np.round(np.log10(compute) * bins_per_decade)
    rows = []
    for b in np.unique(bins):
        i = np.flatnonzero(bins == b)
        j = i[np.argmin(cols["loss"][i])]
        rows.append((float(compute[j]), float(cols["N"][j]), float(cols["D"][j]), float(cols["loss"][j])))
    if len(rows) < 2:
        raise LmjaxError("all points fall in one compute bin: approach 1 needs a range of compute")
    return _allocation(rows)


def _allocation(rows) -> OptimalAllocation:
    C, N_opt, D_opt, L_opt = (list(map(float, col)) for col in zip(*rows))
    return OptimalAllocation(C, N_opt, D_opt, L_opt, fit_power_law(C, N_opt), fit_power_law(C, D_opt))


def _cluster(values: np.ndarray, rtol: float) -> list[float]:
    """Distinct budgets: sorted values, a new one wherever the gap exceeds rtol."""
    out: list[float] = []
    for v in np.sort(values):
        if not out or v / out[-1] - 1 > rtol:
            out.append(float(v))
    return out


# ------------------------------------------------------------------ Kaplan


def fit_kaplan(x, L) -> dict:
    """L(x) = (x_c / x)^alpha_x for x = N or D: returns {"alpha": ..., "x_c": ...}."""
    cols = check_points(len(np.atleast_1d(L)), 2, x=x, loss=L)
    law = fit_power_law(cols["x"], cols["loss"])  # L = k x^(-alpha) = (x_c / x)^alpha
    alpha = -law.exponent
    return {"alpha": alpha, "x_c": float(law.coefficient ** (1 / alpha)) if alpha != 0 else float("inf")}


def summarise(fit) -> dict:
    """Any fit result as a JSON-ready dict."""
    return fit.as_dict() if hasattr(fit, "as_dict") else dict(fit)


__all__: Sequence[str] = ("fit_parametric", "fit_isoflop", "isoflop_leave_one_out", "fit_envelope", "fit_kaplan", "fit_power_law",
                          "ParametricFit", "OptimalAllocation", "PowerLaw", "check_points", "DEFAULT_GRID")
