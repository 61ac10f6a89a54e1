"""How good a dictionary is, each quantity defined once.

Over an eval set of N tokens with inputs x, targets y (y = x for an SAE) and predictions
y_hat, all in model units:

- FVU (fraction of variance unexplained) = sum_n ||y_n - y_hat_n||^2 / sum_n ||y_n - mean(y)||^2,
  with mean(y) the mean over the whole eval set; explained variance = 1 - FVU. (Not the
  variance about zero, and not a mean of per-batch ratios.) Predicting the mean gives 0.
- L0 = the mean number of nonzero latents per token.
- dead latents = the fraction of latents that never fired in the N eval tokens (N reported
  as `dead_window_tokens`; training logs the same over its last `dead_window` tokens).
- shrinkage = mean_n ||y_hat_n|| / ||y_n||.
- feature density = per latent, the fraction of tokens where it fires (its log10 histogram).
- CE loss recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean): CE_clean is the
  model's next-token loss, CE_spliced with the output hook replaced by the reconstruction,
  CE_zero with it set to zero. Also reported: delta CE = CE_spliced - CE_clean and the KL
  divergence KL(clean || spliced) of the next-token distributions, in nats per token.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.sae.splice import Splice, spliced_run
from lmjax.train.loss import cross_entropy


class ReconstructionStats:
    """Running sums for FVU, L0, shrinkage and density, exact over any number of batches
    (float64 sums about a shift taken from the first batch, so no catastrophic cancellation)."""

    def __init__(self, width: int):
        self.width = width
        self.n = 0
        self.shift = None
        self.sum_err = self.sum_dev = self.sum_dev_sq = None
        self.l0 = 0.0
        self.shrink = 0.0
        self.fired = np.zeros(width, np.int64)

    def update(self, y, y_hat, f):
        y, y_hat, f = (np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in jax.device_get((y, y_hat, f)))
        if self.shift is None:
            self.shift = y.mean(0)
            self.sum_err, self.sum_dev, self.sum_dev_sq = 0.0, np.zeros_like(self.shift), 0.0
        dev = y - self.shift
        self.sum_err += float(((y - y_hat) ** 2).sum())
        self.sum_dev += dev.sum(0)
        self.sum_dev_sq += float((dev ** 2).sum())
        nz = f != 0
        self.l0 += float(nz.sum())
        self.fired += nz.sum(0)
        norms = np.linalg.norm(y, axis=-1)
        self.shrink += float((np.linalg.norm(y_hat, axis=-1) / np.maximum(norms, 1e-12)).sum())
        self.n += y.shape[0]

    def result(self) -> dict:
        total_var = self.sum_dev_sq - float((self.sum_dev ** 2).sum()) / self.n
        fvu = self.sum_err / total_var if total_var > 0 else float("nan")
        density = self.fired / self.n
        return {"fvu": fvu, "explained_variance": 1.0 - fvu, "l0": self.l0 / self.n,
                "dead_fraction": float((self.fired == 0).mean()), "dead_window_tokens": self.n,
                "shrinkage": self.shrink / self.n, "tokens": self.n, "density": density}


def reconstruction_metrics(dictionary, params, batches) -> dict:
    """FVU, explained variance, L0, dead fraction, shrinkage and per-latent density over
    `batches`, an iterable of (x, y) in model units (y None for an SAE)."""
    stats = ReconstructionStats(dictionary.width)
    params = jax.device_get(params)  # host arrays follow the batches to their devices
    run = jax.jit(lambda p, x: _forward(dictionary, p, x))
    for x, y in batches:
        f, y_hat = run(params, jnp.asarray(x))
        stats.update(x if y is None else y, y_hat, f)
    return stats.result()


def _forward(dictionary, params, x):
    xs = x * dictionary.input_scale
    f = dictionary.encode(params, xs)
    return f, dictionary.decode(params, f, xs) / dictionary.output_scale


def density_histogram(density, bins: int = 40) -> dict:
    """The histogram of log10 feature density (dead latents counted apart)."""
    density = np.asarray(density)
    alive = density[density > 0]
    counts, edges = np.histogram(np.log10(alive), bins=bins) if alive.size else (np.zeros(0, int), np.zeros(0))
    return {"log10_density_edges": edges.tolist(), "counts": counts.tolist(), "dead": int((density == 0).sum())}


def _ce(logits, tokens):
    return cross_entropy(logits[:, :-1], tokens[:, 1:])


def _kl(clean_logits, logits):
    p = jax.nn.log_softmax(clean_logits[:, :-1].astype(jnp.float32))
    q = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    return jnp.mean(jnp.sum(jnp.exp(p) * (p - q), -1))


def _zero(y, payload):
    return jnp.zeros_like(y)


def ce_recovered(model, params, tokens, dictionary, dparams, *, error: bool = False) -> dict:
    """CE_clean, CE_spliced, CE_zero, CE loss recovered, delta CE and KL on `tokens`
    [batch, seq] (next-token loss over every position but the last). `error=True` splices
    with the error term (so recovered must be 1 and the logits the model's). A cross-layer
    transcoder replaces (and the zero ablation zeroes) every layer's output."""
    tokens = jnp.asarray(tokens)
    splice = Splice(dictionary, jax.device_get(dparams), error=error)  # host arrays: the model may be sharded
    outputs = tuple(dictionary.hooks_out) if hasattr(dictionary, "hooks_out") else (dictionary.hook_out,)

    @jax.jit
    def run(params, splice, tokens):
        clean = model.run_with_cache(params, tokens, ())[0]
        spliced = spliced_run(model, params, tokens, [splice])[0]
        zero = model.run_with_hooks(params, tokens, {h: (_zero, jnp.zeros(())) for h in outputs})
        return _ce(clean, tokens), _ce(spliced, tokens), _ce(zero, tokens), _kl(clean, spliced), \
            jnp.max(jnp.abs(clean - spliced))

    ce_clean, ce_spliced, ce_zero, kl, max_diff = (float(v) for v in run(params, splice, tokens))
    return {"ce_clean": ce_clean, "ce_spliced": ce_spliced, "ce_zero_ablated": ce_zero,
            "ce_loss_recovered": (ce_zero - ce_spliced) / (ce_zero - ce_clean),
            "delta_ce": ce_spliced - ce_clean, "kl": kl, "max_logit_diff": max_diff}
