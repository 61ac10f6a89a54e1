"""AdamW with warmup + decay, global-norm clipping, and weight decay only on matrices;
frozen parameters (`freeze`)."""
from __future__ import annotations

import jax
import optax

from lmjax.errors import LmjaxError


def learning_rate_schedule(opt, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine / linear decay to `end_lr` (or constant)."""
    warmup = min(int(opt.warmup_steps), total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if opt.schedule == "cosine":
        decay = optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.end_lr / opt.lr)
    elif opt.schedule == "linear":
        decay = optax.linear_schedule(opt.lr, opt.end_lr, decay_steps)
    else:
        decay = optax.constant_schedule(opt.lr)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), decay], [warmup])


def decay_mask(params):
    """Weight decay for matrices and embeddings; not for norms' scales, biases, any 1-D vector,
    or Mamba's A_log and D (decaying them would pull the SSM's decay rates and skip towards
    zero; the Mamba reference exempts them too).

    Parameters of scanned layers carry a leading layer axis, so a bias there is 2-D: the
    leaf's name, not only its rank, decides.
    """

    def wants_decay(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        return leaf.ndim >= 2 and name not in ("bias", "scale", "A_log", "D")

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(opt, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(opt, total_steps)
    parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
    parts.append(
        optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts)


def frozen_mask(params, frozen):
    """The pytree of bools (True = frozen) that `frozen` names over `params`: `frozen` is
    such a pytree already, or a predicate on a leaf's key path, e.g. `lambda path: any(
    getattr(k, "key", None) == "mlp" for k in path)` (every MLP parameter)."""
    if callable(frozen):
        return jax.tree_util.tree_map_with_path(lambda path, _: bool(frozen(path)), params)
    mask = jax.tree.map(bool, frozen)
    if jax.tree.structure(mask) != jax.tree.structure(params):
        raise LmjaxError(f"frozen: a pytree of bools shaped like the parameters, or a predicate on the key path; "
                         f"got a tree of structure {jax.tree.structure(mask)}")
    return mask


def freeze(optimizer: optax.GradientTransformation, frozen) -> optax.GradientTransformation:
    """`optimizer` for the parameters that `frozen` leaves free; the frozen ones get a zero
    update and no optimizer state (their moments are never allocated, and the gradient
    clipping inside `optimizer` sees only the free parameters' gradients)."""
    return optax.multi_transform({False: optimizer, True: optax.set_to_zero()},
                                 lambda params: frozen_mask(params, frozen))
