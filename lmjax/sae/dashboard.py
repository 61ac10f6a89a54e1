"""Feature dashboards: what makes each latent of a dictionary fire, and what it writes.

For a dictionary (SAE or transcoder) reading `dictionary.hook_in` and a token set
[n_seq, seq_len], each feature i gets

- its top-activating contexts: the `top` largest activations f_i over every token, each
  with a window of tokens around it and f_i at each token of the window;
- contexts sampled from activation-quantile intervals: the firing activations (f_i != 0)
  split at their quantiles (e.g. 0-20%, ..., 80-100%), `per_interval` tokens drawn
  uniformly at random from each interval (so the typical firing, not only the extreme);
- the histogram of its firing activations over [act_min, act_max] (act_min = min(0, the
  smallest firing value)), its firing frequency, and its percentiles 1..100;
- the top and bottom logits of its decoder direction: d_i = W_dec[i] / output_scale is what
  one unit of f_i adds to `hook_out` in model units. Where hook_out is on the residual
  stream (the stream itself, or a write to it: attn/MLP/mixer out, embeddings), and so for
  a transcoder's output side too, its direct effect on the logits is

      logits_i = (center(d_i) * gamma) @ W_U     (center: the final LayerNorm's mean removal)

  the final norm with its divisor held fixed (as direct logit attribution does,
  lmjax.interp.dla): the logit change per unit of f_i, up to the run's positive divisor.
  After the final norm (`ln_final.hook_normalized`) it is d_i @ W_U; elsewhere (inside a
  head or an MLP) there is no direct path to the logits and no logits are given.

Activations come from `model.run_with_cache(params, tokens, [hook_in])` fed as
dictionary.encode(dparams, x * input_scale). Every feature is computed at once, in one
compiled program per pass over the token set (three passes: statistics and top contexts,
histograms, quantile samples; the latents are kept on device between passes when they
fit in `cache_bytes`, else recomputed). Only the running top-k / samples, with their
windows, stay on device; nothing of size n_tokens x width reaches the host.

Outputs: `circuit_tracer_features` / `write_circuit_tracer` (circuit-tracer's feature JSON,
frontend/feature_models.Model) and, for `lmjax explain`, `prompt_features` (the features
most active on a prompt, with mini-dashboards); the HTML pages are drawn by
lmjax.sae.dashboard_html.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.interp import compiling, weights
from lmjax.sae.architectures import Dictionary

# hook points whose value is (a write to) the residual stream, before the final norm
_RESIDUAL = re.compile(r"^(hook_embed|hook_pos_embed|blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|"
                       r"hook_attn_out|hook_mlp_out|hook_mixer_out))$")
_AFTER_FINAL_NORM = "ln_final.hook_normalized"


# ------------------------------------------------------------------------------ data

@dataclasses.dataclass
class Context:
    """One token of the token set where a feature fired, with a window around it."""

    value: float  # the feature's activation at (row, position)
    row: int
    position: int
    start: int  # the position of tokens[0]
    tokens: list[int]
    acts: list[float]  # the feature's activation at each token of the window

    @property
    def index(self) -> int:
        """Where `position` is in the window."""
        return self.position - self.start


@dataclasses.dataclass
class Interval:
    """Firing activations in (lo, hi], between the quantiles q_lo and q_hi of the firing ones."""

    lo: float
    hi: float
    q_lo: float
    q_hi: float
    count: int  # firing tokens in the interval
    contexts: list[Context]

    @property
    def name(self) -> str:
        return f"Quantile {100 * self.q_lo:.0f}-{100 * self.q_hi:.0f}% (activation {self.lo:.3g} to {self.hi:.3g})"


@dataclasses.dataclass
class Feature:
    index: int
    n_tokens: int  # tokens seen (0: no token set, only logits / the prompt)
    n_fired: int
    act_min: float
    act_max: float
    act_mean: float  # over firing tokens
    top: list[Context]
    intervals: list[Interval]  # highest first
    hist_edges: np.ndarray  # [bins + 1] over [act_min, act_max]
    hist: np.ndarray  # [bins] firing tokens per bin (hist.sum() + n_tokens - n_fired == n_tokens)
    quantile_values: np.ndarray  # [100] the 1st..100th percentile of the firing activations
    top_logits: list[tuple[int, float]]  # (token id, logit effect), largest first
    bottom_logits: list[tuple[int, float]]  # smallest first
    prompt: Context | None = None  # the feature on an explained prompt (lmjax explain)

    @property
    def frequency(self) -> float:
        return self.n_fired / self.n_tokens if self.n_tokens else 0.0


@dataclasses.dataclass
class Dashboards:
    dictionary: Dictionary
    features: list[Feature]
    n_tokens: int
    labels: dict  # token id -> its decoded text, for every id shown
    seconds: float

    def __getitem__(self, index: int) -> Feature:
        for f in self.features:
            if f.index == index:
                return f
        raise KeyError(index)


# ----------------------------------------------------------------------- computation

def check_dictionary(model, params, dictionary) -> tuple:
    """The hook's activation shape per token, checked against d_in: a one-line LmjaxError for a
    dictionary of another model (shapes only, nothing compiles)."""
    if not isinstance(dictionary, Dictionary):
        raise LmjaxError(f"feature dashboards take an SAE or transcoder (lmjax.sae.Dictionary); got "
                         f"{type(dictionary).__name__}")
    model.check_hook_names((dictionary.hook_in,))
    probe = jax.eval_shape(lambda p, t: model.run_with_cache(p, t, [dictionary.hook_in])[1], params,
                           jax.ShapeDtypeStruct((1, 2), jnp.int32))
    shape = probe[dictionary.hook_in].shape[2:]
    if int(np.prod(shape)) != dictionary.d_in:
        raise LmjaxError(f"the dictionary reads {dictionary.hook_in} with d_in={dictionary.d_in}, but this model's "
                         f"{dictionary.hook_in} has shape {tuple(shape)} per token: a dictionary of another model?")
    return shape


@compiling.jit(static_argnames=("model", "dictionary"))
def _latents(model, params, dictionary, dparams, tokens, features):
    """f [b, t, F]: the latents `features` of the dictionary at every token."""
    _, cache = model.run_with_cache(params, tokens, [dictionary.hook_in])
    x = cache[dictionary.hook_in].astype(jnp.float32)
    x = x.reshape(*x.shape[:2], -1)
    return dictionary.encode(dparams, x * dictionary.input_scale)[..., features]


def feature_activations(model, params, dictionary, dparams, tokens, features=None) -> np.ndarray:
    """[n, t, F] the activations of `features` (default: all) on tokens [n, t], in one call."""
    check_dictionary(model, params, dictionary)
    features = np.arange(dictionary.width) if features is None else np.asarray(features, np.int32)
    return np.asarray(_latents(model, params, dictionary, dparams, jnp.asarray(tokens, jnp.int32),
                               jnp.asarray(features, jnp.int32)))


def _windows(f, tokens, flat, window):
    """Windows around batch-local flat token indices flat [..., F, m] -> (acts, tokens) [..., F, m, W];
    positions outside the sequence get activation 0 and token -1."""
    _, t, n_feat = f.shape
    left, right = window
    row, pos = flat // t, flat % t
    p = pos[..., None] + jnp.arange(-left, right + 1)
    inside = (p >= 0) & (p < t)
    pc = jnp.clip(p, 0, t - 1)
    r = jnp.broadcast_to(row[..., None], p.shape)
    feat = jnp.broadcast_to(jnp.arange(n_feat)[:, None, None], p.shape[-3:])
    acts = jnp.where(inside, f[r, pc, feat], 0.0)
    toks = jnp.where(inside, tokens[r, pc], -1)
    return acts, toks


def _merge(old, new, score_key, k):
    """Keep the k entries with the largest `score_key` of two dicts of [..., F, m] arrays."""
    both = {name: jnp.concatenate([old[name], new[name]], axis=-1 if old[name].ndim == old[score_key].ndim else -2)
            for name in old}
    _, order = jax.lax.top_k(both[score_key], k)
    out = {}
    for name, a in both.items():
        idx = order if a.ndim == order.ndim else order[..., None]
        out[name] = jnp.take_along_axis(a, idx, axis=order.ndim - 1)
    return out


def _flat(f, valid):
    """f [b, t, F] -> ([F, b t] activations, [b t] mask of real rows)."""
    b, t, n_feat = f.shape
    return f.reshape(b * t, n_feat).T, jnp.repeat(valid, t)


@compiling.jit(static_argnames=("window",))
def _stats_step(state, f, tokens, valid, row0, window):
    """Pass 1: counts, sums, extremes and the running top-k (with windows) of every feature."""
    fl, ok = _flat(f, valid)
    fired = (fl != 0) & ok
    t = f.shape[1]
    k = state["value"].shape[-1]
    state = dict(state)
    stats = {"count": state.pop("count") + fired.sum(1),
             "total": state.pop("total") + jnp.where(fired, fl, 0.0).sum(1),
             "max": jnp.maximum(state.pop("max"), jnp.where(fired, fl, -jnp.inf).max(1)),
             "min": jnp.minimum(state.pop("min"), jnp.where(fired, fl, jnp.inf).min(1))}
    value, flat = jax.lax.top_k(jnp.where(ok, fl, -jnp.inf), min(k, fl.shape[1]))
    acts, toks = _windows(f, tokens, flat, window)
    new = {"value": value, "row": row0 + flat // t, "pos": flat % t, "acts": acts, "toks": toks}
    return {**stats, **_merge(state, new, "value", k)}


@compiling.jit(static_argnames=("bins",))
def _hist_step(hist, f, valid, lo, hi, bins):
    """Pass 2: firing tokens per bin of [lo, hi] for every feature -> hist [F, bins] (int32)."""
    fl, ok = _flat(f, valid)
    fired = (fl != 0) & ok
    width = jnp.maximum(hi - lo, 1e-30)[:, None]
    b = jnp.clip(jnp.floor((fl - lo[:, None]) / width * bins), 0, bins - 1).astype(jnp.int32)
    rows = jnp.broadcast_to(jnp.arange(fl.shape[0])[:, None], b.shape)
    return hist.at[rows, b].add(fired.astype(jnp.int32))


@compiling.jit(static_argnames=("window",))
def _sample_step(state, f, tokens, valid, row0, edges, seed, batch, window):
    """Pass 3: per interval (edges[:, j], edges[:, j + 1]], the m members with the largest
    uniform random key so far: a uniform sample without replacement, merged batch by batch."""
    fl, ok = _flat(f, valid)
    fired = (fl != 0) & ok
    t = f.shape[1]
    m = state["score"].shape[-1]
    u = jax.random.uniform(jax.random.fold_in(jax.random.key(seed), batch), fl.shape)

    def one(j):
        member = fired & (fl > edges[:, j, None]) & (fl <= edges[:, j + 1, None])
        score, flat = jax.lax.top_k(jnp.where(member, u, -1.0), min(m, fl.shape[1]))
        acts, toks = _windows(f, tokens, flat, window)
        value = jnp.take_along_axis(fl, flat, axis=1)
        return ({"score": score, "value": value, "row": row0 + flat // t, "pos": flat % t, "acts": acts,
                 "toks": toks}, member.sum(1))

    new, counts = jax.lax.map(one, jnp.arange(edges.shape[1] - 1))
    state = dict(state)
    count = state.pop("count") + counts
    return {"count": count, **_merge(state, new, "score", m)}


def _batches(model, params, dictionary, dparams, tokens, features, batch_size, cache_bytes):
    """A re-iterable of (f, tokens, valid rows, first row) over the token set, one compiled
    shape (the last batch padded by repeating its last row). Latents that fit in `cache_bytes`
    are computed once and kept on device for the later passes."""
    n = len(tokens)
    bs = min(batch_size, n)
    feats = np.asarray(features, np.int32)
    keep = n * tokens.shape[1] * len(features) * 4 <= cache_bytes
    cache = {}

    def gen():
        for row0 in range(0, n, bs):
            chunk = tokens[row0:row0 + bs]
            pad = bs - len(chunk)
            valid = np.arange(bs) < len(chunk)
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
            tok = np.asarray(chunk, np.int32)
            if row0 in cache:
                f = cache[row0]
            else:
                f = _latents(model, params, dictionary, dparams, tok, feats)
                if keep:
                    cache[row0] = f
            yield f, tok, valid, np.int32(row0)

    return gen


def _row_searchsorted(cum, targets):
    """Per row i, np.searchsorted(cum[i], targets[i], side="left"), for non-decreasing rows of
    non-negative values: one call on the rows laid end to end, each offset past the last."""
    n, bins = cum.shape
    step = float(max(cum.max(initial=0), np.max(targets, initial=0))) + 1.0
    offset = np.arange(n, dtype=np.float64)[:, None] * step
    flat = np.searchsorted((cum + offset).ravel(), (targets + offset).ravel(), side="left")
    return flat.reshape(targets.shape) - np.arange(n)[:, None] * bins


def _percentiles(hist, lo, hi, qs):
    """Values at the quantiles qs of each row's histogram (linear within a bin) -> [F, len(qs)]."""
    n_feat, bins = hist.shape
    cum = np.cumsum(hist, 1)
    total = cum[:, -1:]
    target = np.asarray(qs)[None, :] * total  # [F, Q]
    j = np.minimum(_row_searchsorted(cum, target), bins - 1)
    below = np.where(j > 0, np.take_along_axis(cum, np.maximum(j - 1, 0), 1), 0)
    inbin = np.maximum(np.take_along_axis(hist, j, 1), 1)
    frac = np.clip((target - below) / inbin, 0, 1)
    width = (hi - lo)[:, None] / bins
    return np.where(total > 0, lo[:, None] + (j + frac) * width, 0.0)


def _interval_edges(hist, lo, hi, n_intervals):
    """Edges [F, n + 1] at the firing activations' quantiles 0, 1/n, ..., 1 (from the fine
    histogram: each inner edge on a bin boundary, at or above its quantile); the first edge is
    just below the smallest firing value so that every firing token is in some interval."""
    bins = hist.shape[1]
    cum = np.cumsum(hist, 1)
    total = np.maximum(cum[:, -1:], 1)
    qs = np.arange(1, n_intervals) / n_intervals
    j = _row_searchsorted(cum, qs[None, :] * total)
    inner = lo[:, None] + (np.minimum(j, bins - 1) + 1) * (hi - lo)[:, None] / bins
    first = lo[:, None] - np.maximum(np.abs(lo[:, None]), 1.0) * 1e-6
    edges = np.concatenate([first, inner, hi[:, None]], 1)
    return np.maximum.accumulate(edges, axis=1).astype(np.float32)


def _logit_path(model, dictionary):
    """None where hook_out has no direct path to the logits, else whether the final norm
    comes between (True) or hook_out is after it (False)."""
    hook = dictionary.hook_out
    if dictionary.d_out != model.cfg.d_model or not (hook == _AFTER_FINAL_NORM or _RESIDUAL.match(hook)):
        return None
    return hook != _AFTER_FINAL_NORM


def _effects(model, params, w_dec, features, output_scale, before_norm):
    """[F, vocab] logit effects of the decoder rows `features` (traced)."""
    u = w_dec.astype(jnp.float32)[features] / output_scale
    if before_norm:
        if model.cfg.norm == "layernorm":
            u = u - u.mean(-1, keepdims=True)
        u = u * weights.unbox(params)["ln_final"]["scale"].astype(jnp.float32)
    return u @ weights.w_u(model, params).astype(jnp.float32)


@compiling.jit(static_argnames=("model", "before_norm", "k"))
def _logit_extremes(model, params, w_dec, features, output_scale, before_norm, k):
    """(top values, top ids, bottom values, bottom ids) [F, k] of each row's logit effects."""
    logits = _effects(model, params, w_dec, features, output_scale, before_norm)
    top_v, top_i = jax.lax.top_k(logits, k)
    bot_v, bot_i = jax.lax.top_k(-logits, k)
    return top_v, top_i, -bot_v, bot_i


def logit_effects(model, params, dictionary, dparams, features=None):
    """[F, vocab] the direct logit effect of one unit of each feature (the formula in the module
    docstring), or None where hook_out has no direct path to the logits. For tests and small
    vocabularies; the dashboards keep only each row's extremes (`top_logits`)."""
    before = _logit_path(model, dictionary)
    if before is None:
        return None
    features = np.arange(dictionary.width) if features is None else np.asarray(features)
    return np.asarray(_effects(model, params, dparams["W_dec"], features, dictionary.output_scale, before))


def top_logits(model, params, dictionary, dparams, features, k: int = 10, chunk: int = 512):
    """-> (top, bottom): per feature [(token id, effect)] k largest (largest first) and k smallest
    (smallest first); ([], []) per feature where hook_out has no direct path to the logits."""
    features = np.asarray(features, np.int32).reshape(-1)
    before = _logit_path(model, dictionary)
    if before is None:
        return [[] for _ in features], [[] for _ in features]
    k = min(k, model.cfg.vocab_size)
    top, bottom = [], []
    for s in range(0, len(features), chunk):  # [chunk, vocab] logits at a time, one compiled shape
        part = features[s:s + chunk]
        n = len(part)
        if len(features) > chunk:
            part = np.concatenate([part, np.zeros(chunk - n, np.int32)])
        tv, ti, bv, bi = map(np.asarray, _logit_extremes(model, params, dparams["W_dec"], part,
                                                         np.float32(dictionary.output_scale), before, k))
        top += [list(zip(ti[r].tolist(), tv[r].tolist())) for r in range(n)]
        bottom += [list(zip(bi[r].tolist(), bv[r].tolist())) for r in range(n)]
    return top, bottom


def _contexts(value, row, pos, acts, toks, window, keep) -> list[Context]:
    out = []
    for j in np.flatnonzero(keep):
        valid = toks[j] >= 0
        first = int(np.argmax(valid))
        out.append(Context(float(value[j]), int(row[j]), int(pos[j]), int(pos[j]) - window[0] + first,
                           toks[j][valid].tolist(), acts[j][valid].astype(float).tolist()))
    return out


def token_text(tokenizer, token_id: int) -> str:
    """A token's decoded text, newline / tab / CR made visible the way circuit-tracer does; a
    byte that is no text on its own is `\\xNN` (circuit-tracer's front end joins such runs
    back into characters), any other undecodable token `<id>`."""
    token_id = int(token_id)
    s = tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)
    s = s.replace("\n", "\u23ce").replace("\t", "\u2192").replace("\r", "\u21b5")
    if s and s.isprintable() and "\ufffd" not in s:
        return s
    if getattr(tokenizer, "kind", None) == "byte" and token_id < 256:
        return f"\\x{token_id:02x}"
    return f"<{token_id}>"


def compute(model, params, tokenizer, dictionary, dparams, tokens, features=None, *, top: int = 10,
            n_intervals: int = 5, per_interval: int = 5, window: tuple[int, int] = (10, 4), bins: int = 40,
            fine: int = 20, n_logits: int = 10, batch_size: int = 16, seed: int = 0,
            cache_bytes: int = 1 << 28) -> Dashboards:
    """Dashboards of `features` (default: every latent) over tokens [n_seq, seq_len].

    top: contexts with the largest activation; n_intervals x per_interval: contexts sampled
    from the quantile intervals of the firing activations; window: (tokens before, tokens
    after) the activating token; bins: histogram bins (quantiles are read from a histogram
    `fine` times finer); n_logits: top and bottom logits; seed: the interval sampling's.
    """
    start = time.time()
    check_dictionary(model, params, dictionary)
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.size == 0:
        raise LmjaxError(f"the token set must be a non-empty [n_seq, seq_len] array; got shape {tokens.shape}")
    if tokens.min() < 0 or tokens.max() >= model.cfg.vocab_size:
        raise LmjaxError(f"the token set holds ids outside the model's vocabulary [0, {model.cfg.vocab_size})")
    for name, v, least in (("top", top, 1), ("n_intervals", n_intervals, 1), ("per_interval", per_interval, 1),
                           ("bins", bins, 1), ("fine", fine, 1), ("n_logits", n_logits, 1),
                           ("batch_size", batch_size, 1), ("window[0]", window[0], 0), ("window[1]", window[1], 0)):
        if int(v) != v or v < least:
            raise LmjaxError(f"{name}={v!r}: must be an integer >= {least}")
    if tokens.shape[1] > model.cfg.max_len:
        raise LmjaxError(f"the token set's rows are {tokens.shape[1]} tokens, longer than the model's context "
                         f"of {model.cfg.max_len}")
    features = np.arange(dictionary.width) if features is None else np.asarray(features, np.int64).reshape(-1)
    if features.size == 0 or features.min() < 0 or features.max() >= dictionary.width:
        raise LmjaxError(f"features must be latent indices in [0, {dictionary.width}); got {features.tolist()[:8]}")
    window = (int(window[0]), int(window[1]))
    n_feat, w = len(features), window[0] + window[1] + 1
    batches = _batches(model, params, dictionary, dparams, tokens, features, batch_size, cache_bytes)

    # initial states as host arrays: no weak types (one compiled step), no eager ops on device
    full = lambda shape, fill, dt=np.float32: np.full(shape, fill, dt)  # noqa: E731

    def slots(m, lead=()):
        return {"row": full(lead + (n_feat, m), 0, np.int32), "pos": full(lead + (n_feat, m), 0, np.int32),
                "acts": full(lead + (n_feat, m, w), 0.0), "toks": full(lead + (n_feat, m, w), -1, np.int32)}

    # pass 1: statistics and the top contexts
    state = {"count": full(n_feat, 0, np.int32), "total": full(n_feat, 0.0), "max": full(n_feat, -np.inf),
             "min": full(n_feat, np.inf), "value": full((n_feat, top), -np.inf), **slots(top)}
    for f, tok, valid, row0 in batches():
        state = _stats_step(state, f, tok, valid, row0, window)
    s1 = jax.device_get(state)
    count = s1["count"].astype(np.int64)
    act_max = np.where(count > 0, s1["max"], 0.0).astype(np.float32)
    act_min = np.minimum(np.where(count > 0, s1["min"], 0.0), 0.0).astype(np.float32)

    # pass 2: fine histograms; quantiles and interval edges from them
    hist = full((n_feat, bins * fine), 0, np.int32)
    for f, _, valid, _ in batches():
        hist = _hist_step(hist, f, valid, act_min, act_max, bins * fine)
    fine_hist = np.asarray(hist).astype(np.int64)
    quantiles = _percentiles(fine_hist, act_min, act_max, np.arange(1, 101) / 100)
    edges = _interval_edges(fine_hist, act_min, act_max, n_intervals)

    # pass 3: uniform samples from each interval
    state = {"count": full((n_intervals, n_feat), 0, np.int32),
             "score": full((n_intervals, n_feat, per_interval), -2.0),
             "value": full((n_intervals, n_feat, per_interval), 0.0), **slots(per_interval, (n_intervals,))}
    for i, (f, tok, valid, row0) in enumerate(batches()):
        state = _sample_step(state, f, tok, valid, row0, edges, np.uint32(seed), np.int32(i), window)
    s3 = jax.device_get(state)

    tops, bottoms = top_logits(model, params, dictionary, dparams, features, n_logits)
    out = []
    n_tokens = int(tokens.size)
    for i, index in enumerate(features):
        top_ctx = _contexts(s1["value"][i], s1["row"][i], s1["pos"][i], s1["acts"][i], s1["toks"][i], window,
                            np.isfinite(s1["value"][i]) & (s1["value"][i] != 0))
        intervals, seen = [], 0
        for j in range(n_intervals):
            c = int(s3["count"][j, i])
            ctx = _contexts(s3["value"][j, i], s3["row"][j, i], s3["pos"][j, i], s3["acts"][j, i], s3["toks"][j, i],
                            window, s3["score"][j, i] >= 0)
            lo_j = max(float(edges[i, j]), float(act_min[i])) if j == 0 else float(edges[i, j])
            if c:  # an interval can be empty: many tokens at one value, or too few firing tokens
                intervals.append(Interval(lo_j, float(edges[i, j + 1]), seen / max(count[i], 1),
                                          (seen + c) / max(count[i], 1), c, ctx))
            seen += c
        coarse = fine_hist[i].reshape(bins, fine).sum(1)
        out.append(Feature(int(index), n_tokens, int(count[i]), float(act_min[i]), float(act_max[i]),
                           float(s1["total"][i] / count[i]) if count[i] else 0.0, top_ctx,
                           [iv for iv in reversed(intervals)], np.linspace(act_min[i], act_max[i], bins + 1),
                           coarse, quantiles[i].astype(np.float32), tops[i], bottoms[i]))
    return Dashboards(dictionary, out, n_tokens, card_labels(tokenizer, out), time.time() - start)


def card_labels(tokenizer, features) -> dict:
    """token id -> its text, for every token the features' cards show."""
    ids = set()
    for f in features:
        for c in f.top + [c for iv in f.intervals for c in iv.contexts] + ([f.prompt] if f.prompt else []):
            ids.update(c.tokens)
        ids.update(t for t, _ in f.top_logits + f.bottom_logits)
    return {i: token_text(tokenizer, i) for i in sorted(ids)}


# ------------------------------------------------------------------ circuit-tracer JSON

def circuit_tracer_features(dash: Dashboards, transcoder_id: str | None = None) -> list[dict]:
    """One dict per feature in circuit-tracer's feature schema (frontend/feature_models.py:
    Model, ExamplesQuantile, Example). `histogram` counts the firing tokens over [act_min,
    act_max]; `quantile_values` are the firing activations' percentiles 1..100 (its
    front end reads an activation's percentile from them); `is_repeated_datapoint` marks a
    token already shown in an earlier group."""
    tid = transcoder_id or (dash.dictionary.hook_in if not dash.dictionary.is_transcoder
                            else f"{dash.dictionary.hook_in}->{dash.dictionary.hook_out}")
    out = []
    for f in dash.features:
        seen = set()

        def example(c: Context):
            repeated = (c.row, c.position) in seen
            seen.add((c.row, c.position))
            return {"tokens_acts_list": [float(a) for a in c.acts], "train_token_ind": c.index,
                    "is_repeated_datapoint": repeated, "tokens": [dash.labels[t] for t in c.tokens]}

        groups = [{"quantile_name": "Top activations", "examples": [example(c) for c in f.top]}]
        groups += [{"quantile_name": iv.name, "examples": [example(c) for c in iv.contexts]} for iv in f.intervals]
        out.append({"transcoder_id": tid, "index": f.index, "examples_quantiles": groups,
                    "top_logits": [dash.labels[t] for t, _ in f.top_logits],
                    "bottom_logits": [dash.labels[t] for t, _ in f.bottom_logits],
                    "act_min": f.act_min, "act_max": f.act_max,
                    "quantile_values": [float(v) for v in f.quantile_values],
                    "histogram": [float(v) for v in f.hist], "activation_frequency": f.frequency})
    return out


def write_circuit_tracer(dash: Dashboards, directory: str, transcoder_id: str | None = None) -> list[str]:
    """DIRECTORY/<index>.json per feature: the layout circuit-tracer's front end loads a
    feature from (`<scan>/<index>.json`)."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for d in circuit_tracer_features(dash, transcoder_id):
        path = os.path.join(directory, f"{d['index']}.json")
        write_text(path, json.dumps(d))
        paths.append(path)
    return paths


def text_tokens(tokenizer, text: str, seq_len: int, max_rows: int | None = None) -> np.ndarray:
    """A text as a token set [n, seq_len]: its tokens cut into consecutive rows, each started
    with BOS when the tokenizer has one (the remainder shorter than a row dropped, unless it is
    all there is)."""
    bos = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
    ids = tokenizer.encode(text, add_bos=False)
    body = seq_len - len(bos)
    if body < 1 or not ids:
        raise LmjaxError(f"no token set from this text ({len(ids)} tokens, rows of {seq_len}): give a non-empty text")
    n = max(len(ids) // body, 1)
    n = n if max_rows is None else min(n, max_rows)
    rows = [bos + ids[i * body:(i + 1) * body] for i in range(n)]
    width = max(len(r) for r in rows)
    return np.asarray([r + r[-1:] * (width - len(r)) for r in rows], np.int32)


@dataclasses.dataclass
class PromptFeatures:
    """The features of a dictionary on one prompt."""

    token_strs: list[str]
    last: list[tuple[int, float]]  # the most active features at the last position, largest first
    per_position: list[list[tuple[int, float]]]  # the same at each position
    dashboards: Dashboards  # a mini-dashboard per listed feature (its activation on the prompt set)


def prompt_features(model, params, tokenizer, dictionary, dparams, ids, *, top: int = 8, per_position: int = 3,
                    tokens=None, max_cards: int = 16, **dashboard_kwargs) -> PromptFeatures:
    """The `top` features most active at the prompt's last position and the `per_position`
    most active at each position, with a dashboard of each (at most `max_cards`, the last
    position's first): over `tokens` [n, t] when given, else only the logits and the prompt."""
    f = feature_activations(model, params, dictionary, dparams, np.asarray([ids]))[0]  # [T, width]

    def ranked(row, n):
        order = np.argsort(-row, kind="stable")[:n]
        return [(int(i), float(row[i])) for i in order if row[i] > 0]

    last = ranked(f[-1], top)
    per_pos = [ranked(row, per_position) for row in f]
    listed = list(dict.fromkeys([i for i, _ in last] + [i for row in per_pos for i, _ in row]))[:max_cards]
    # always max_cards features (the last repeated): every prompt runs the same compiled programs
    padded = listed + listed[-1:] * (max_cards - len(listed))
    if tokens is not None and listed:
        dash = compute(model, params, tokenizer, dictionary, dparams, tokens, padded, **dashboard_kwargs)
        dash.features = dash.features[:len(listed)]
    else:
        t_top, t_bottom = top_logits(model, params, dictionary, dparams, np.asarray(padded, np.int64),
                                     dashboard_kwargs.get("n_logits", 10)) if listed else ([], [])
        empty = np.zeros(0)
        feats = [Feature(i, 0, 0, 0.0, 0.0, 0.0, [], [], empty, empty, empty, t_top[j], t_bottom[j])
                 for j, i in enumerate(listed)]
        dash = Dashboards(dictionary, feats, 0, {}, 0.0)
    for feat in dash.features:
        acts = f[:, feat.index]
        pos = len(ids) - 1
        feat.prompt = Context(float(acts[pos]), 0, pos, 0, list(map(int, ids)), acts.astype(float).tolist())
    dash.labels = card_labels(tokenizer, dash.features)
    from lmjax.interp import plots  # local: matplotlib is imported only when an explain page is drawn

    return PromptFeatures(plots.token_labels(tokenizer, ids), last, per_pos, dash)


def write_text(path: str, text: str) -> str:
    """Write a text file whole or not at all (a temporary name, then a rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path

