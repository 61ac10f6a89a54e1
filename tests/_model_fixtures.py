"""Shared helpers for the model and hook tests: tiny configs and O(1)-scale random parameters.

Parameters are re-drawn at O(1) scale (biases and norm scales included, unlike the
model's own init) so that every parameter visibly matters and attention patterns are
far from uniform. Everything is cached per config, so each model compiles once.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmjax.model import ModelConfig, Transformer

GPT2 = dict(pos_embedding="learned", norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=True)
LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, use_bias=False, tie_embeddings=False)


def random_tokens(cfg: ModelConfig, batch: int, length: int, seed: int = 0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, cfg.vocab_size, (batch, length)), jnp.int32)


@functools.lru_cache(maxsize=None)
def param_shapes(cfg: ModelConfig):
    """The model's own parameter tree as ShapeDtypeStructs (traced, never compiled: fast)."""
    variables = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    return nn.unbox(variables["params"])


def assert_same_layout(params, cfg: ModelConfig):
    """`params` has exactly the tree, shapes and dtypes that `cfg`'s own init produces."""
    ref = param_shapes(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)


def stack_layers(params, n_layer: int):
    """Unscanned `blocks_{l}` subtrees -> the scanned layout `blocks/block`, layers on axis 0."""
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    layers = [params[f"blocks_{l}"] for l in range(n_layer)]
    out["blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
    return out


@functools.lru_cache(maxsize=None)
def random_params(cfg: ModelConfig, seed: int = 0):
    """O(1)-scale random parameters in the layout of `cfg` (scanned: the stacked unscanned ones)."""
    if cfg.scan_layers:
        flat_cfg = dataclasses.replace(cfg, scan_layers=False, remat="none")
        return stack_layers(random_params(flat_cfg, seed), cfg.n_layer)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(cfg))
    rng = np.random.RandomState(1000 + seed)
    new = []
    for path, leaf in leaves:
        names = [p.key for p in path]
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if names[-1] == "scale":
            value = 1.0 + 0.2 * noise
        elif names[-1] == "bias":
            value = 0.2 * noise
        elif names[-1] in ("embed", "pos_embed"):
            value = 0.5 * noise
        else:  # kernels and the untied unembedding: unit-variance outputs
            fan_in = leaf.shape[0] * (leaf.shape[1] if names[-2:-1] == ["o"] else 1)
            value = noise / math.sqrt(fan_in)
        new.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, new)


# For gradient programs, whose compile time dominates: LLVM's optimisation level changes
# nothing that is compared (remat and hooks are HLO-level) and halves the compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def forward(cfg: ModelConfig):
    """jit(params, tokens, positions=None) -> logits, one per config."""
    model = Transformer(cfg)
    return jax.jit(lambda params, tokens, positions=None: model.apply({"params": params}, tokens, positions))


@functools.lru_cache(maxsize=None)
def init_params(cfg: ModelConfig, seed: int = 0):
    """The model's own initialisation (lmjax.train.steps.init_params) from jax.random.key(seed),
    as one program compiled at -O0: run op by op, even a 2-layer model's init took seconds.
    The values equal the op-by-op ones to an ulp."""
    from lmjax.train.steps import init_params as init  # the model's own init, not a test's copy

    model = Transformer(cfg)
    return jax.jit(lambda key: init(model, key), compiler_options=FAST_COMPILE)(jax.random.key(seed))
