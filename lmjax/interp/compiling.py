"""How lmjax.interp compiles its programs: `jax.jit`, with optional XLA compiler options.

`COMPILER_OPTIONS` (e.g. {"xla_backend_optimization_level": 0}: LLVM at -O0, about half
the compile time on CPU, same results up to float rounding) applies to every interp
program compiled after it is set. The tests set it, because for their tiny models
compiling is nearly all the time. Each set of options keeps its own `jax.jit` (and so its
own compiled programs): changing them never reuses a program compiled with others.

Importing this module turns on JAX's persistent compilation cache (lmjax.compile_cache),
so that a program compiled in one process is loaded, not compiled, by the next.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmjax import compile_cache

compile_cache.enable()

COMPILER_OPTIONS: dict = {}


def jit(fn=None, *, static_argnames=()):
    """`jax.jit(fn, static_argnames=...)` compiled with the current COMPILER_OPTIONS."""
    if fn is None:
        return functools.partial(jit, static_argnames=static_argnames)
    versions = {}

    @functools.wraps(fn)
    def call(*args, **kwargs):
        # Called inside another program (traced arguments) it is a nested jit, which takes no options.
        nested = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs)))
        key = () if nested else tuple(sorted(COMPILER_OPTIONS.items()))
        if key not in versions:
            versions[key] = jax.jit(fn, static_argnames=static_argnames, compiler_options=dict(key) or None)
        return versions[key](*args, **kwargs)

    return call


@jit(static_argnames=("model", "names"))
def _run_with_cache(model, params, tokens, names):
    return model.run_with_cache(params, tokens, names)


def run_with_cache(model, params, tokens, names):
    """`model.run_with_cache`, compiled once per model, hook names and shapes (run eagerly,
    Flax dispatches, and on first use compiles, every operation on its own)."""
    return _run_with_cache(model, params, jnp.asarray(tokens), tuple(names))
