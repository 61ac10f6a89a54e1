"""Dense kernels in the other layout: [*in, *out] (training, checkpoints) <-> [*out, *in].

Decoding one token of one sequence multiplies a vector by every kernel. XLA:CPU streams a
kernel stored [*out, *in] faster through that product than one stored [*in, *out]
(measured on GPT-2 small's shapes: 5-10% faster per kernel alone, 13-15% less time per
decoded token), so the sampler decodes a single row with a copy of the weights in the
"out_in" layout (ModelConfig.kernel_layout). With two or more rows the products are
matrix-matrix ones, for which [*in, *out] measured faster.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.layers import Dense


def dense_kernels(model) -> dict[tuple[str, ...], tuple[int, int]]:
    """The parameter path of every Dense kernel in `model` -> (its n_in, its number of out axes).

    Found by tracing the model's init abstractly (nothing is computed) with an interceptor
    that sees each Dense module; a module's path is its parameters' path. The trace takes
    ~0.3 s for GPT-2 small, so it is done once per model class and config.
    """
    return dict(_dense_kernels(type(model), model.cfg))


@functools.lru_cache(maxsize=32)
def _dense_kernels(model_class, cfg) -> tuple:
    model = model_class(cfg)
    found = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, Dense) and context.method_name == "__call__":
            found[(*module.path, "kernel")] = (module.n_in, len(module.out_shape))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, cfg.max_len), jnp.int32)))
    return tuple(found.items())


def out_in_permutation(ndim: int, n_in: int, n_out: int) -> tuple[int, ...]:
    """Axis order that takes a kernel [*lead, *in, *out] to [*lead, *out, *in]; `lead` are
    stacked axes such as the layer axis of scanned layers."""
    lead = ndim - n_in - n_out
    return (*range(lead), *range(lead + n_in, ndim), *range(lead, lead + n_in))


def to_out_in(model, params, permute=None):
    """(model, params) with every Dense kernel in the "out_in" layout -> the same function.

    `permute(array, axes)` makes each new kernel (default: jnp.transpose); the sampler
    passes one that keeps the copies for as long as the weights live.
    """
    if model.cfg.kernel_layout == "out_in":
        return model, params
    permute = permute or jnp.transpose
    kernels = dense_kernels(model)

    def convert(path, leaf):
        key = tuple(getattr(k, "key", None) for k in path)
        if key not in kernels:
            return leaf
        return permute(leaf, out_in_permutation(leaf.ndim, *kernels[key]))

    converted = jax.tree_util.tree_map_with_path(convert, params)
    return type(model)(dataclasses.replace(model.cfg, kernel_layout="out_in")), converted
