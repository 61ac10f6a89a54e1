"""Attention-head detectors with TransformerLens's definitions (see DESIGN.md).

A detection mask D marks where a head of a given kind should attend; a head's score is the
share of its attention mass that falls on D ("mul": sum(A * D) / sum(A) over the lower
triangle), averaged over the batch:

- previous-token: D[i, i-1] = 1;
- duplicate-token: D[i, j] = 1 when tok_i = tok_j, j < i;
- induction: the duplicate mask shifted one column right, D[i, j] = 1 when tok_i = tok_{j-1}
  (attend to the token *after* an earlier copy of the current one).

`induction_score` is the standard probe on [BOS] + r + r, r uniformly random of length n:
the mean over batch and second-half queries q of pattern[q, q - n + 1]. Patterns come from
`hook_pattern`, or for a Mamba layer from its implicit attention (lmjax.interp.ssm:
|alpha| averaged over channels and normalised per query row, one "head" per layer or one
per channel group), so the same tables rank every kind of mixer. Mamba "heads" are
labelled `L{l}ssm` (`L{l}ssm{g}` with channel groups) where attention heads are `L{l}H{h}`.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.interp import compiling, ssm, weights

KINDS = ("previous_token", "duplicate_token", "induction")


def previous_token_mask(t: int) -> np.ndarray:
    return np.eye(t, k=-1, dtype=np.float32)


def duplicate_token_mask(tokens) -> np.ndarray:
    """[..., t, t]: 1 where the query's token occurred earlier at the key (strictly below the diagonal)."""
    tokens = np.asarray(tokens)
    same = tokens[..., :, None] == tokens[..., None, :]
    return np.tril(same, k=-1).astype(np.float32)


def induction_mask(tokens) -> np.ndarray:
    """[..., t, t]: the duplicate mask shifted one key to the right (keys 1.., within the causal triangle)."""
    dup = duplicate_token_mask(tokens)
    out = np.zeros_like(dup)
    out[..., :, 1:] = dup[..., :, :-1]
    return np.tril(out)


def detection_score(pattern, mask, exclude_bos: bool = False, exclude_current: bool = False):
    """sum(A * D) / sum(A) over the lower triangle; pattern [..., q, k], mask broadcastable.

    Leading axes other than the last two are kept except the first (batch), which is
    averaged: pattern [b, head, q, k] -> [head]. `exclude_bos` drops attention to key 0,
    `exclude_current` the diagonal, before both sums.
    """
    a = jnp.tril(jnp.asarray(pattern, jnp.float32))
    if exclude_bos:
        a = a.at[..., 0].set(0.0)
    if exclude_current:
        a = a * (1.0 - jnp.eye(a.shape[-1], dtype=a.dtype))
    d = jnp.asarray(mask, jnp.float32)
    score = (a * d).sum((-2, -1)) / a.sum((-2, -1))
    return score.mean(0)


def patterns(model, params, tokens, layers=None, ssm_groups: int = 1) -> dict[int, jax.Array]:
    """{layer: pattern [b, head, q, k]} for attention layers and Mamba layers (their
    implicit attention as `ssm_groups` "heads", lmjax.interp.ssm.as_pattern), from one
    compiled run; layers with other mixers (LSTM, GRU, conv) have no pattern and are left out."""
    layers = range(model.cfg.n_layer) if layers is None else layers
    att = tuple(int(l) for l in layers if weights.is_attention(model, int(l)))
    mamba = tuple(ssm.mamba_layers(model, layers))
    if not att and not mamba:
        return {}
    return dict(sorted(_patterns(model, params, jnp.asarray(tokens), att, mamba, ssm_groups).items()))


@compiling.jit(static_argnames=("model", "att", "mamba", "groups"))
def _patterns(model, params, tokens, att, mamba, groups):
    names = [f"blocks.{l}.attn.hook_pattern" for l in att] + [n for l in mamba for n in ssm.alpha_cache_names(l)]
    _, cache = model.run_with_cache(params, tokens, names)
    out = {l: cache[f"blocks.{l}.attn.hook_pattern"] for l in att}
    out.update({l: ssm.as_pattern(ssm.alpha_from_cache(params, cache, l), groups) for l in mamba})
    return out


def head_label(model, layer: int, head: int, ssm_groups: int = 1) -> str:
    """"L1H3" for an attention head; "L0ssm" (or "L0ssm{g}" with channel groups) for a
    Mamba layer; "L0lstm" (the mixer's name) for another mixer, which is one unit."""
    if model is None or weights.is_attention(model, layer):
        return f"L{layer}H{head}"
    mixer = model.cfg.layer_mixers[layer]
    if mixer == "mamba":
        return f"L{layer}ssm" + (str(head) if ssm_groups > 1 else "")
    return f"L{layer}{mixer}"


def parse_label(label: str) -> tuple[int, int]:
    """(layer, head) of a `head_label` ("L1H3" -> (1, 3), "L0ssm" -> (0, 0), "L0ssm2" -> (0, 2))."""
    m = re.fullmatch(r"L(\d+)(?:H(\d+)|ssm(\d*)|[a-z]+)", label)
    if m is None:
        raise LmjaxError(f"not a head label: {label!r} (expected e.g. 'L1H3' or 'L0ssm')")
    return int(m.group(1)), int(m.group(2) or m.group(3) or 0)


def head_scores(model, params, tokens, exclude_bos: bool = False, exclude_current: bool = False,
                ssm_groups: int = 1) -> dict:
    """{kind: {layer: [head] scores}} on `tokens` [b, t] for the three detectors (Mamba
    layers: their implicit attention, `ssm_groups` "heads" each)."""
    tokens = np.asarray(tokens)
    masks = {
        "previous_token": previous_token_mask(tokens.shape[1])[None, None],
        "duplicate_token": duplicate_token_mask(tokens)[:, None],
        "induction": induction_mask(tokens)[:, None],
    }
    out = {k: {} for k in KINDS}
    for layer, pattern in patterns(model, params, tokens, ssm_groups=ssm_groups).items():
        for kind in KINDS:
            out[kind][layer] = np.asarray(detection_score(pattern, masks[kind], exclude_bos, exclude_current))
    return out


def repeated_tokens(vocab_size: int, n: int, batch: int, bos: int | None, seed: int = 0, low: int = 0):
    """[BOS] + r + r with r uniform in [low, vocab_size) (BOS and specials excluded by `low`/`vocab_size`)."""
    r = np.random.RandomState(seed).randint(low, vocab_size, (batch, n))
    rows = np.concatenate([r, r], axis=1)
    if bos is not None:
        rows = np.concatenate([np.full((batch, 1), bos), rows], axis=1)
    return rows.astype(np.int32)


def induction_stripe(pattern, n: int, offset: int = 1):
    """Mean over batch and second-half queries of pattern[q, q - n + 1] -> [head].
    `offset` is 1 with a BOS in front of r + r, else 0."""
    pattern = jnp.asarray(pattern)
    q = np.arange(offset + n, offset + 2 * n)
    return pattern[..., q, q - n + 1].mean(-1).mean(0)


def induction_score(model, params, n: int = 20, batch: int = 8, bos: int | None = None, seed: int = 0,
                    vocab_range: tuple[int, int] | None = None, ssm_groups: int = 1) -> dict[int, np.ndarray]:
    """{layer: [head]} induction scores on [BOS] + r + r (the DESIGN.md definition)."""
    low, high = vocab_range or (0, model.cfg.vocab_size)
    tokens = repeated_tokens(high, n, batch, bos, seed, low)
    return {l: np.asarray(induction_stripe(p, n, int(bos is not None)))
            for l, p in patterns(model, params, tokens, ssm_groups=ssm_groups).items()}


def ranked(scores: dict[int, np.ndarray], top: int | None = None, model=None, ssm_groups: int = 1
           ) -> list[tuple[str, float]]:
    """[("L1H3", score), ...] from {layer: [head]}, highest first (with `model`, Mamba
    layers are labelled "L0ssm": see `head_label`)."""
    rows = [(head_label(model, l, h, ssm_groups), float(v))
            for l, s in scores.items() for h, v in enumerate(np.asarray(s))]
    return sorted(rows, key=lambda r: -r[1])[:top]


def table(all_scores: dict[str, dict[int, np.ndarray]], top: int = 10, model=None, ssm_groups: int = 1) -> list[dict]:
    """Rows {head, previous_token, duplicate_token, induction, best} ranked by the best score
    (labels as in `head_label`)."""
    heads = {}
    for kind, scores in all_scores.items():
        for l, s in scores.items():
            for h, v in enumerate(np.asarray(s)):
                heads.setdefault((l, h), {"head": head_label(model, l, h, ssm_groups)})[kind] = float(v)
    rows = list(heads.values())
    for r in rows:
        r["best"] = max((k for k in r if k != "head"), key=lambda k: r[k])
    return sorted(rows, key=lambda r: -r[r["best"]])[:top]


def implicit_patterns(model, params, tokens, layers=None, groups: int = 1) -> dict[int, jax.Array]:
    """{layer: [b, groups, t, t]} attention-like patterns (`as_pattern`) of the Mamba layers
    among `layers` (others are skipped). `patterns` returns these together with the
    attention layers' `hook_pattern`, from one run."""
    return patterns(model, params, tokens, ssm.mamba_layers(model, layers), groups)
