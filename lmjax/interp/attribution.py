"""Attribution patching (Nanda 2023; Syed et al. 2023): activation patching to first order.

Patching activation a from the clean run into the corrupted run changes the metric by about
(a_clean - a_corrupt) . dM/da, the gradient taken on the corrupted run. One forward and
one backward give that estimate for every layer, position and head at once: a zero
perturbation is added at each hook point (an intervention `x + delta` with delta = 0), and
`jax.grad` with respect to the deltas is dM/da there. Values are normalised like
activation patching, by (M_clean - M_corrupt), so the two heatmaps are comparable cell by
cell. Cheap but linear: it misjudges activations where the metric saturates (e.g. a
softmax or LayerNorm far from linear), which is why it is checked against the real thing.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.interp import compiling
from lmjax.interp.metrics import as_metric, run_metric
from lmjax.interp.patching import POINTS, point_name


def _add(x, delta):
    return x + delta.astype(x.dtype)


@compiling.jit(static_argnames=("model", "names"))
def _attribute(model, params, clean_tokens, corrupt_tokens, metric, names):
    _, clean = model.run_with_cache(params, clean_tokens, names)
    m_clean = run_metric(model, params, clean_tokens, metric)
    _, corrupt = model.run_with_cache(params, corrupt_tokens, names)
    deltas = {n: jnp.zeros(corrupt[n].shape, jnp.float32) for n in names}

    def corrupted_metric(deltas):
        return run_metric(model, params, corrupt_tokens, metric, {n: (_add, d) for n, d in deltas.items()})

    m_corrupt, grads = jax.value_and_grad(corrupted_metric)(deltas)
    # (a_clean - a_corrupt) . dM/da, summed over the batch (M is a batch mean) and features
    scores = {n: ((clean[n] - corrupt[n]).astype(jnp.float32) * grads[n]).sum(axis=(0, -1)) for n in names}
    return scores, m_clean, m_corrupt


def attribution_patching(model, params, clean_tokens, corrupt_tokens, metric,
                         points=("resid_pre", "attn_out", "mlp_out", "z"), normalize: bool = True) -> dict:
    """{point: [L, T] (z: [L, T, H])} first-order patching estimates, plus "clean"/"corrupt"
    metric values. Rows of layers without the point (e.g. attention in a Mamba layer) are NaN."""
    n_layer = model.cfg.n_layer
    names = {(p, l): point_name(model, l, p) for p in points for l in range(n_layer)}
    present = tuple(sorted(n for n in names.values() if n))
    scores, m_clean, m_corrupt = _attribute(model, params, jnp.asarray(clean_tokens), jnp.asarray(corrupt_tokens),
                                            as_metric(metric), present)
    m_clean, m_corrupt = float(m_clean), float(m_corrupt)
    scale = (m_clean - m_corrupt) if normalize else 1.0
    out = {"clean": m_clean, "corrupt": m_corrupt}
    for p in points:
        if p not in POINTS:
            raise LmjaxError(f"unknown point {p!r}; choose from {sorted(POINTS)}")
        shape = next((np.shape(scores[n]) for (q, _), n in names.items() if q == p and n), None)
        if shape is None:
            continue
        rows = [np.asarray(scores[names[p, l]]) / scale if names[p, l] else np.full(shape, np.nan)
                for l in range(n_layer)]
        out[p] = np.stack(rows)
    return out
