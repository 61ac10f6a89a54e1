"""Activation patching: put one activation of one run into another and measure the metric.

Denoising (the default): run the corrupted prompt, restore one clean activation, and see
how much of the clean behaviour comes back, as (M_patched - M_corrupt) / (M_clean -
M_corrupt): 1 = that activation alone carries the difference. Noising is the reverse
(run clean, insert a corrupted activation).

The whole heatmap (layer x position, or layer x head, ...) is **one compiled call**: each
layer's cells are a `lax.map` (vmapped in chunks of `batch_size`) over masks that say
where to patch, and the patched value comes from the two caches alone, never from the run's
own activation. A patch of `blocks.{l}.hook_resid_pre` then makes layers below l dead code,
which XLA removes: only what the patch can change is recomputed (half of the layers on
average). Cells never loop in Python.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.interp import compiling, weights
from lmjax.interp.metrics import as_metric, run_metric

# point -> hook-name suffix under blocks.{l}.
POINTS = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mixer_out": "hook_mixer_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
}
PER = ("position", "layer", "head")


@dataclasses.dataclass
class Patching:
    values: np.ndarray  # [L, T] (per position), [L] (per layer), [L, H] (z per head), [L, T, H] (z per position)
    layers: list[int]  # the layers of the rows
    point: str
    clean: float  # metric on the clean run
    corrupt: float  # metric on the corrupted run
    normalized: bool


def point_name(model, layer: int, point: str) -> str | None:
    if point not in POINTS:
        raise LmjaxError(f"unknown patching point {point!r}; choose from {sorted(POINTS)}")
    return weights.layer_point(model, layer, POINTS[point])


def _replace(x, payload):
    """Where the mask says, the source activation; elsewhere the base run's own (cached)."""
    source, base, mask = payload
    m = mask.reshape(1, *mask.shape, *(1,) * (x.ndim - 1 - mask.ndim))
    return jnp.where(m, source, base).astype(x.dtype)


def _cell_masks(act_shape, point: str, per: str) -> np.ndarray:
    """[cells, *mask shape] boolean masks; the mask covers the axes between batch and features."""
    t = act_shape[1]
    if point == "z":
        h = act_shape[2]
        if per == "layer":
            return np.ones((1, t, h), bool)
        if per == "head":
            return np.broadcast_to(np.eye(h, dtype=bool)[:, None, :], (h, t, h)).copy()
        return np.eye(t * h, dtype=bool).reshape(t * h, t, h)
    if per == "head":
        raise LmjaxError(f"per='head' needs point='z', not {point!r}")
    return np.ones((1, t), bool) if per == "layer" else np.eye(t, dtype=bool)


@compiling.jit(static_argnames=("model", "plan", "per", "batch_size"))
def _heatmap(model, params, clean_tokens, corrupt_tokens, metric, plan, per, denoise, batch_size):
    """plan: ((point, layers), ...) -> ({point: [L, cells]}, clean metric, corrupted metric)."""
    names = {point: [point_name(model, l, point) for l in layers] for point, layers in plan}
    every = sorted({n for ns in names.values() for n in ns})
    _, clean = model.run_with_cache(params, clean_tokens, every)
    _, corrupt = model.run_with_cache(params, corrupt_tokens, every)
    m_clean = run_metric(model, params, clean_tokens, metric)
    m_corrupt = run_metric(model, params, corrupt_tokens, metric)
    # `denoise` is traced (a selection, not a branch): noising and denoising share one program.
    pick = lambda a, b: jnp.where(denoise, a, b)  # noqa: E731
    base_tokens = pick(corrupt_tokens, clean_tokens)
    base = {n: pick(corrupt[n], clean[n]) for n in every}
    source = {n: pick(clean[n], corrupt[n]) for n in every}
    out = {}
    for point, point_names in names.items():
        rows = []
        for name in point_names:
            masks = jnp.asarray(_cell_masks(base[name].shape, point, per))

            def cell(mask, name=name):
                return run_metric(model, params, base_tokens, metric,
                                  {name: (_replace, (source[name], base[name], mask))})

            rows.append(jax.lax.map(cell, masks, batch_size=min(batch_size, masks.shape[0])))
        out[point] = jnp.stack(rows)
    return out, m_clean, m_corrupt


def activation_patching(model, params, clean_tokens, corrupt_tokens, metric, point: str = "resid_pre", *,
                        per: str = "position", layers=None, denoise: bool = True, normalize: bool = True,
                        batch_size: int = 32) -> Patching:
    """The patching heatmap of `point` (see POINTS) over layers x `per` in one compiled call.

    per: "position" ([L, T]; z: [L, T, H]), "layer" ([L], every position at once) or
    "head" (z only: [L, H], every position of one head). `layers` defaults to every layer
    that has the point (e.g. attention layers of a hybrid for "z"). `batch_size` cells run
    vmapped at a time (memory: batch_size x one forward's activations).
    """
    return activation_patching_points(model, params, clean_tokens, corrupt_tokens, metric, (point,), per=per,
                                      layers=layers, denoise=denoise, normalize=normalize,
                                      batch_size=batch_size)[point]


def activation_patching_points(model, params, clean_tokens, corrupt_tokens, metric, points, *,
                               per: str = "position", layers=None, denoise: bool = True, normalize: bool = True,
                               batch_size: int = 32) -> dict[str, Patching]:
    """{point: Patching} for several points (e.g. resid_pre, attn_out, z), all from one
    compiled call (the clean and corrupted runs shared). Arguments as `activation_patching`."""
    if per not in PER:
        raise LmjaxError(f"per must be one of {PER}, got {per!r}")
    plan = []
    for point in points:
        chosen = [l for l in range(model.cfg.n_layer) if point_name(model, l, point)] if layers is None else layers
        chosen = tuple(int(l) for l in chosen)
        missing = [l for l in chosen if point_name(model, l, point) is None]
        if not chosen or missing:
            raise LmjaxError(f"point {point!r} is not in layer(s) {missing or 'any'} of this model")
        plan.append((point, chosen))
    clean_tokens, corrupt_tokens = jnp.asarray(clean_tokens), jnp.asarray(corrupt_tokens)
    if clean_tokens.shape != corrupt_tokens.shape:
        raise LmjaxError(f"clean {clean_tokens.shape} and corrupted {corrupt_tokens.shape} tokens differ in shape")
    values, m_clean, m_corrupt = _heatmap(model, params, clean_tokens, corrupt_tokens, as_metric(metric),
                                          tuple(plan), per, jnp.asarray(bool(denoise)), batch_size)
    m_clean, m_corrupt = float(m_clean), float(m_corrupt)
    out = {}
    for point, chosen in plan:
        v = np.asarray(values[point])
        if point == "z" and per == "position":
            v = v.reshape(len(chosen), clean_tokens.shape[1], -1)
        if per == "layer":
            v = v[:, 0]
        if normalize:
            v = (v - m_corrupt) / (m_clean - m_corrupt)
        out[point] = Patching(v, list(chosen), point, m_clean, m_corrupt, normalize)
    return out


def _write(x, payload):
    """`value` where the position mask says, the run's own activation elsewhere."""
    value, mask = payload
    return jnp.where(mask.reshape(1, -1, *(1,) * (x.ndim - 2)), value.astype(x.dtype), x)


@compiling.jit(static_argnames=("model",))
def _patched_metric(model, params, tokens, metric, values, mask):
    return run_metric(model, params, tokens, metric, {name: (_write, (v, mask)) for name, v in values.items()})


def patch(model, params, tokens, patches: dict, metric, positions=None):
    """The metric on `tokens` with `patches` {hook name: activation} written at `positions`
    (a list of ints; None = every position). Elsewhere the run's own activations stay.
    One compiled program per set of hook names."""
    tokens = jnp.asarray(tokens)
    model.check_hook_names(list(patches))
    t = tokens.shape[1]
    mask = np.zeros(t, bool)
    mask[np.arange(t) if positions is None else np.asarray(positions)] = True
    values = {name: jnp.asarray(v) for name, v in patches.items()}
    return float(_patched_metric(model, params, tokens, as_metric(metric), values, jnp.asarray(mask)))


def metric_value(model, params, tokens, metric) -> float:
    """The metric on an unpatched run (the same compiled path as `patch`)."""
    tokens = jnp.asarray(tokens)
    return float(_patched_metric(model, params, tokens, as_metric(metric), {}, jnp.ones(tokens.shape[1], bool)))
