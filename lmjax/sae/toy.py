"""Toy data with known ground-truth features, for testing dictionaries (pure JAX, explicit keys).

Three generators; each gives the true feature directions as rows [n_features, d] and a
sampler `sample(key, batch_size) -> x [batch_size, d]` (batch_size a Python int, so it can
be called under jit), with `sample.with_codes(key, batch_size) -> (x, codes)` where codes
[batch_size, n_features] are the true feature coefficients (> 0 where a feature fires).

- `sharkey`: Sharkey, Braun & Millidge (2022), "Taking features out of superposition with
  sparse autoencoders": G = 512 random unit features in h = 256 dims. Per sample, a
  correlated Gaussian z ~ N(0, C) (C a fixed random correlation matrix) gives correlated
  uniforms u = Phi(z); feature i fires with probability p_i = c u_i lambda^i (lambda = 0.99:
  frequencies decay with the index), c chosen so the expected number firing is 5
  (c = 5 / (E[u] sum_i lambda^i), E[u] = 1/2); a firing feature's coefficient is U[0, 1];
  x = sum_i coef_i f_i.
- `tms`: Toy Models of Superposition (Elhage et al. 2022): x in R^20, each x_i = 0 with
  probability S = 0.9 else U[0, 1]; h = W x in R^5; x' = ReLU(W^T W x + b), trained on
  sum_i I_i (x_i - x'_i)^2 with importance I_i = 0.7^i. The features in h-space are W's
  columns; the sampler draws h.
- `synthsaebench`: the data model of SAELens' `sae_lens.synthetic` (SynthSAEBench, Chanin &
  Garriga-Alonso 2026) rewritten in JAX, scaled down by default to 2,048 features in 256
  dims; see `SynthConfig`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmjax.errors import LmjaxError


class Sampler:
    """`sampler(key, batch_size) -> x`; `sampler.with_codes(key, batch_size) -> (x, codes)`."""

    def __init__(self, with_codes: Callable):
        self._with_codes = with_codes

    def with_codes(self, key, batch_size: int):
        return self._with_codes(key, int(batch_size))

    def __call__(self, key, batch_size: int):
        return self.with_codes(key, batch_size)[0]


def _unit_rows(key, n: int, d: int):
    w = jax.random.normal(key, (n, d), jnp.float32)
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


# -- Sharkey et al. 2022 ------------------------------------------------------------------

def _random_correlation(key, n: int):
    """A random correlation matrix: a symmetrised U[0, 1] matrix shifted to be positive
    definite, rescaled to unit diagonal (so z's marginals are N(0, 1) and Phi(z) is U[0, 1]).
    Its positive entries give every pair a small positive correlation, and pairs differ."""
    u = jax.random.uniform(key, (n, n), jnp.float32)
    m = (u + u.T) / 2
    lo = jnp.linalg.eigvalsh(m)[0]
    m = m + (jnp.maximum(-lo, 0.0) * 1.001 + 1e-3) * jnp.eye(n)
    s = 1 / jnp.sqrt(jnp.diag(m))
    return m * s[:, None] * s[None, :]


def sharkey(key, n_features: int = 512, d: int = 256, avg_active: float = 5.0, decay: float = 0.99,
            correlated: bool = True):
    """-> (features [n_features, d] unit rows, sampler). See the module docstring."""
    k_feat, k_corr = jax.random.split(key)
    features = _unit_rows(k_feat, n_features, d)
    decay_i = decay ** jnp.arange(n_features, dtype=jnp.float32)
    scale = avg_active / (0.5 * float(jnp.sum(decay_i)))
    if float(scale * decay_i[0]) > 1:
        raise LmjaxError(f"avg_active={avg_active} is too many for {n_features} features with decay {decay}: "
                         f"the first feature would fire with probability {float(scale):.2f} > 1")
    chol = jnp.linalg.cholesky(_random_correlation(k_corr, n_features)) if correlated else None

    def with_codes(key, batch_size):
        k_z, k_fire, k_mag = jax.random.split(key, 3)
        z = jax.random.normal(k_z, (batch_size, n_features), jnp.float32)
        u = jax.scipy.stats.norm.cdf(z @ chol.T) if correlated else jax.random.uniform(k_z, z.shape)
        p = scale * u * decay_i
        fire = jax.random.uniform(k_fire, p.shape) < p
        codes = jnp.where(fire, jax.random.uniform(k_mag, p.shape), 0.0)
        return codes @ features, codes

    return features, Sampler(jax.jit(with_codes, static_argnums=1))


# -- Toy Models of Superposition ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TMS:
    """A trained toy model: W [m, n], b [n]; `features` = W's columns as rows [n, m];
    `sample(key, B) -> h [B, m]` (hidden activations), `.with_codes` also gives x [B, n];
    `loss` the final importance-weighted training loss."""

    W: jax.Array
    b: jax.Array
    sample: Sampler
    loss: float

    @property
    def features(self):
        return self.W.T

    def represented(self, min_norm: float = 0.5):
        """Indices of the features the model represents (column norm >= min_norm); the
        rest map to ~0 in h and no dictionary can recover them."""
        return np.flatnonzero(np.linalg.norm(np.asarray(self.W), axis=0) >= min_norm)


def tms_inputs(key, batch_size: int, n_features: int, sparsity: float):
    """x [B, n]: each entry 0 with probability `sparsity`, else U[0, 1]."""
    k_on, k_val = jax.random.split(key)
    on = jax.random.uniform(k_on, (batch_size, n_features)) >= sparsity
    return jnp.where(on, jax.random.uniform(k_val, (batch_size, n_features)), 0.0)


def tms(key, n_features: int = 20, d_hidden: int = 5, sparsity: float = 0.9, importance_decay: float = 0.7,
        steps: int = 4000, batch_size: int = 1024, lr: float = 1e-3) -> TMS:
    """Train the ReLU-output toy model with Adam; see the module docstring."""
    k_init, k_data = jax.random.split(key)
    importance = importance_decay ** jnp.arange(n_features, dtype=jnp.float32)
    params = {"W": jax.nn.initializers.xavier_normal()(k_init, (d_hidden, n_features), jnp.float32),
              "b": jnp.zeros(n_features, jnp.float32)}
    opt = optax.adam(lr)

    def loss_fn(p, x):
        x_hat = jax.nn.relu(x @ p["W"].T @ p["W"] + p["b"])
        return jnp.mean(jnp.sum(importance * (x - x_hat) ** 2, -1))

    def step(carry, k):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, tms_inputs(k, batch_size, n_features, sparsity))
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    @jax.jit
    def train(p, k):
        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), jax.random.split(k, steps))
        return p, jnp.mean(losses[-100:])

    params, loss = train(params, k_data)
    W = params["W"]

    def with_codes(key, batch_size):
        x = tms_inputs(key, batch_size, n_features, sparsity)
        return x @ W.T, x

    return TMS(W=W, b=params["b"], sample=Sampler(jax.jit(with_codes, static_argnums=1)), loss=float(loss))


# -- SynthSAEBench (SAELens sae_lens.synthetic) --------------------------------------------

@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """SynthSAEBench's data model; defaults are SynthSAEBench-16k's settings with the sizes
    scaled down (16,384 features in 768 dims -> 2,048 in 256; 128 hierarchy roots -> 16, so
    the same two thirds of the features sit in trees; true L0 ~34 -> ~11, the same
    fraction of d).

    Sampling a token (as `ActivationGenerator.sample` + `FeatureDictionary` do):
    1. Firing: a Gaussian copula, g = F e + sqrt(diag) eta (F [n, rank] ~ N(0, scale^2),
       diag = 1 - rowsum(F^2), e ~ N(0, I_rank), eta ~ N(0, I_n)); feature i fires where
       g_i > Phi^-1(1 - p_i), so it fires with probability p_i, correlated through F.
       p: Zipfian over the index, 1 / r^exponent (r = i + 1) min-max scaled to [min_prob, max_prob].
    2. Magnitude of a firing feature: ReLU(mean_i + std_i N(0, 1)); mean linear from
       mean_start (i = 0, frequent) to mean_end (rare); std_i = |N(std_mean, std_std)| drawn
       once per feature.
    3. Hierarchy: a forest of `roots` trees of the given branching and depth, features
       numbered breadth-first (roots 0..roots-1, then each root's children, ...). Top-down,
       a child is zeroed unless its parent is active (> 0); among the active children of an
       active parent, a mutually exclusive group (a `me_portion` share of the parents,
       all by default) keeps one chosen uniformly at random. With `compensate`, p is first
       scaled per feature so that the marginal rates survive the gating: by 1 / p_parent,
       and in a mutually exclusive group by 1 + (sum of the siblings' p) / p_parent
       (clamped to <= 1).
    4. x = sum_i a_i d_i + bias: d_i random unit vectors, optionally pushed apart by
       `ortho_steps` Adam steps (lr `ortho_lr`) on sum_{i!=j} (d_i.d_j)^2 + n sum_i (|d_i|^2 - 1)^2
       and renormalised; bias a random direction of norm `bias_norm` (0: none).
    """

    n_features: int = 2048
    d: int = 256
    exponent: float = 0.5
    max_prob: float = 0.4
    min_prob: float = 5e-4
    roots: int = 16
    branching: int = 4
    depth: int = 3
    me_portion: float = 1.0
    compensate: bool = True
    rank: int = 25
    corr_scale: float = 0.1
    mean_start: float = 5.0
    mean_end: float = 4.0
    std_mean: float = 0.5
    std_std: float = 0.5
    ortho_steps: int = 100
    ortho_lr: float = 3e-4
    bias_norm: float = 1.0

    @classmethod
    def full(cls) -> "SynthConfig":
        """SynthSAEBench-16k's own sizes."""
        return cls(n_features=16384, d=768, roots=128)


def zipf_probs(n: int, exponent: float, max_prob: float, min_prob: float) -> np.ndarray:
    if not 0 < min_prob < max_prob <= 1:
        raise LmjaxError(f"firing probabilities need 0 < min_prob < max_prob <= 1; got {min_prob}, {max_prob}")
    if n == 1:
        return np.array([max_prob])
    r = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return min_prob + (max_prob - min_prob) * (r - r.min()) / (r.max() - r.min())


def forest(n: int, roots: int, branching: int, depth: int):
    """Breadth-first numbered forest -> (parent [n] (-1: none), levels: list over depth 1..
    of (child indices [G, branching], parent indices [G]) sibling groups)."""
    parent = np.full(n, -1, np.int64)
    nxt = min(roots, n)
    current = list(range(nxt))
    levels = []
    for _ in range(depth):
        groups, owners, following = [], [], []
        for p in current:
            kids = list(range(nxt, min(nxt + branching, n)))
            nxt += len(kids)
            if not kids:
                break
            parent[kids] = p
            groups.append(kids + [-1] * (branching - len(kids)))
            owners.append(p)
            following += kids
        if groups:
            levels.append((np.array(groups), np.array(owners)))
        current = following
    return parent, levels


def compensation(probs: np.ndarray, levels, me: list) -> np.ndarray:
    """Per-feature factors undoing the rate lost to parent gating and mutual exclusion."""
    factor = np.ones_like(probs)
    for (groups, owners), me_l in zip(levels, me):
        for kids, p, excl in zip(groups, owners, me_l):
            kids = kids[kids >= 0]
            factor[kids] = 1.0 / probs[p]
            if excl and len(kids) >= 2:
                total = probs[kids].sum()
                factor[kids] *= 1.0 + np.maximum(total - probs[kids], 0.0) / probs[p]
    return factor


def _orthogonalize(d, steps: int, lr: float):
    n = d.shape[0]
    opt = optax.adam(lr)

    def loss(w):
        g = w @ w.T
        diag = jnp.diag(g)
        return jnp.sum(g ** 2) - jnp.sum(diag ** 2) + n * jnp.sum((diag - 1) ** 2)

    def step(carry, _):
        w, s = carry
        u, s = opt.update(jax.grad(loss)(w), s, w)
        return (optax.apply_updates(w, u), s), None

    (d, _), _ = jax.lax.scan(step, (d, opt.init(d)), None, length=steps)
    return d / jnp.linalg.norm(d, axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Synth:
    """A built SynthSAEBench model: `features` [n, d] unit rows, `bias` [d], `probs` [n]
    (after compensation), `parent` [n] (-1: a root or outside the forest), and `sample`."""

    config: SynthConfig
    features: jax.Array
    bias: jax.Array
    probs: np.ndarray
    parent: np.ndarray
    sample: Sampler


def synthsaebench(key, config: Optional[SynthConfig] = None) -> Synth:
    """Build the data model (features, probabilities, hierarchy, correlations) -> `Synth`."""
    c = config or SynthConfig()
    n = c.n_features
    if c.rank * c.corr_scale ** 2 >= 0.99:
        raise LmjaxError(f"rank * corr_scale^2 = {c.rank * c.corr_scale ** 2:.2f} must stay below 0.99 "
                         "(the copula's diagonal would go negative)")
    k_feat, k_bias, k_corr, k_std, k_me = jax.random.split(key, 5)

    features = _unit_rows(k_feat, n, c.d)
    if c.ortho_steps:
        features = jax.jit(_orthogonalize, static_argnums=(1, 2))(features, c.ortho_steps, c.ortho_lr)
    bias = jnp.zeros(c.d, jnp.float32)
    if c.bias_norm:
        b = jax.random.normal(k_bias, (c.d,), jnp.float32)
        bias = b / jnp.linalg.norm(b) * c.bias_norm

    parent, levels = forest(n, c.roots, c.branching, c.depth) if c.roots else (np.full(n, -1), [])
    rng = np.random.default_rng(np.asarray(jax.random.randint(k_me, (4,), 0, 2 ** 31 - 1)).tolist())
    owners_all = np.concatenate([o for _, o in levels]) if levels else np.zeros(0, np.int64)
    n_me = int(len(owners_all) * c.me_portion)
    chosen = set(rng.choice(len(owners_all), n_me, replace=False).tolist()) if n_me else set()
    me, offset = [], 0
    for groups, owners in levels:
        me.append(np.array([(offset + j) in chosen and (g >= 0).sum() >= 2 for j, g in enumerate(groups)]))
        offset += len(owners)

    probs = zipf_probs(n, c.exponent, c.max_prob, c.min_prob)
    if c.compensate and levels:
        probs = np.minimum(probs * compensation(probs, levels, me), 1.0)
    thresholds = jnp.asarray(math.sqrt(2) * jax.scipy.special.erfinv(1 - 2 * jnp.asarray(probs, jnp.float32)))

    factor = jax.random.normal(k_corr, (n, c.rank), jnp.float32) * c.corr_scale
    diag_sqrt = jnp.sqrt(1 - jnp.sum(factor ** 2, -1))
    means = jnp.linspace(c.mean_start, c.mean_end, n, dtype=jnp.float32)
    stds = jnp.abs(c.std_mean + c.std_std * jax.random.normal(k_std, (n,), jnp.float32))
    level_arrays = [(jnp.asarray(g), jnp.asarray(o), jnp.asarray(m)) for (g, o), m in zip(levels, me)]

    def with_codes(key, batch_size):
        k_e, k_eta, k_mag, k_win = jax.random.split(key, 4)
        g = (jax.random.normal(k_e, (batch_size, c.rank)) @ factor.T
             + jax.random.normal(k_eta, (batch_size, n)) * diag_sqrt)
        a = jnp.where(g > thresholds, jax.nn.relu(means + stds * jax.random.normal(k_mag, (batch_size, n))), 0.0)
        for i, (groups, owners, excl) in enumerate(level_arrays):
            a = _gate_level(a, groups, owners, excl, jax.random.fold_in(k_win, i))
        return a @ features + bias, a

    return Synth(config=c, features=features, bias=bias, probs=probs, parent=parent,
                 sample=Sampler(jax.jit(with_codes, static_argnums=1)))


def _gate_level(a, groups, owners, exclusive, key):
    """One level of the hierarchy on a [B, n]: children zeroed where their parent is
    inactive; in exclusive groups, one active child kept, chosen uniformly at random."""
    valid = groups >= 0
    idx = jnp.where(valid, groups, 0)
    kids = a[:, idx]  # [B, G, k]
    alive = (kids > 0) & valid & (a[:, owners] > 0)[:, :, None]
    score = jnp.where(alive, jax.random.uniform(key, kids.shape), -1.0)
    winner = jax.nn.one_hot(jnp.argmax(score, -1), kids.shape[-1], dtype=bool)
    keep = alive & jnp.where(exclusive[None, :, None], winner, True)
    new = jnp.where(keep, kids, 0.0)
    # padded slots scatter their (unchanged) zero-index value back harmlessly: write only valid ones
    flat_idx = jnp.where(valid, groups, a.shape[1]).reshape(-1)
    return a.at[:, flat_idx].set(new.reshape(a.shape[0], -1), mode="drop")
