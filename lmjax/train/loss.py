"""The training loss: mean next-token cross-entropy, with a hand-written backward pass.

The forward is the usual logsumexp(z) - z[target] in float32. The backward writes
d loss / d logits = (softmax(z) - onehot(target)) / n straight in the logits' dtype, in one
pass over the logits. Autodiff of the float32 forward instead materialises that gradient as
a float32 [batch, length, vocab] array and converts it for the bfloat16 matmuls after it:
at GPT-2's vocabulary 3.3 GB written and read again per 16K tokens (that kernel alone:
1.7 ms of a ~95 ms H100 step of a 350M model). The values are the same: the matmuls round
the gradient to the logits' dtype either way. Together with the LayerNorm residuals of
lmjax/model/normalize.py: 93.9 -> 91.9 ms per step at batch 16 x 1024, 179.0 -> 175.5 ms
at 32 x 1024 (bench/accelerator_mfu.py, H100, same run).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


@jax.custom_vjp
def cross_entropy(logits, targets):
    """Mean of -log softmax(logits)[target] over all positions, in nats (float32).

    logits [..., vocab] (any float dtype), targets [...] integer ids."""
    return _forward(logits, targets)[0]


def _token_losses(logits, targets):
    """(-log softmax(logits)[target] per position, logsumexp per position), float32."""
    z = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(z, axis=-1)
    target_z = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - target_z, lse


def _softmax_minus_onehot(logits, targets, lse):
    vocab = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    return probs - (targets[..., None].astype(jnp.int32) == vocab)


def _forward(logits, targets):
    losses, lse = _token_losses(logits, targets)
    return jnp.mean(losses), (logits, targets, lse)


def _backward(residuals, g):
    logits, targets, lse = residuals
    d_logits = _softmax_minus_onehot(logits, targets, lse) * (g / targets.size)
    return d_logits.astype(logits.dtype), None


cross_entropy.defvjp(_forward, _backward)


@jax.custom_vjp
def weighted_cross_entropy(logits, targets, weights):
    """sum(weights * -log softmax(logits)[target]) / sum(weights) (1 if the weights are all 0),
    with the same one-pass backward as `cross_entropy`; weights [...] float32."""
    return _weighted_forward(logits, targets, weights)[0]


def _weighted_forward(logits, targets, weights):
    losses, lse = _token_losses(logits, targets)
    total = jnp.maximum(weights.sum(), 1.0)
    return (losses * weights).sum() / total, (logits, targets, weights, total, lse)


def _weighted_backward(residuals, g):
    logits, targets, weights, total, lse = residuals
    d_logits = _softmax_minus_onehot(logits, targets, lse) * (weights * (g / total))[..., None]
    return d_logits.astype(logits.dtype), None, None


weighted_cross_entropy.defvjp(_weighted_forward, _weighted_backward)


def same_document(batch):
    """float32 [b, t]: 1 where the target is in the input's document (a packed batch's
    segment_ids and target_segment_ids, lmjax.data.batches), 0 where it opens the next one."""
    return (batch["segment_ids"] == batch["target_segment_ids"]).astype(jnp.float32)


def next_token_loss(model):
    """The loss of `lmjax train`: loss_fn(params, batch, key) -> the mean next-token
    cross-entropy of batch["inputs"] -> batch["targets"], with dropout drawn from `key`
    when the model has any (lmjax.train.steps.make_train_step's default).

    A packed batch (with "segment_ids", lmjax.data.batches) keeps its documents apart in
    the model and leaves out the positions whose target opens the next document: the mean
    is over the rest, so the summed loss is the sum of the documents' own losses."""
    stochastic = model.cfg.dropout > 0

    def loss_fn(params, batch, key):
        logits = model.apply({"params": params}, batch["inputs"], deterministic=not stochastic,
                             rngs={"dropout": key} if stochastic else None, segment_ids=batch.get("segment_ids"))
        if "segment_ids" in batch:
            return weighted_cross_entropy(logits, batch["targets"], same_document(batch))
        return cross_entropy(logits, batch["targets"])

    return loss_fn


def masked_cross_entropy(logits, targets, mask):
    """Mean of -log softmax(logits)[target] over the positions where mask > 0 (float32 nats;
    mask [...] of weights, e.g. 1 at the answers of a recall task)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)
