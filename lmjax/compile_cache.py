"""JAX's persistent compilation cache, on by default for lmjax's programs.

The first call of an analysis waits for tracing (Python) and then XLA's compiling. With
the cache, a program XLA compiled once is loaded by every later process with the same
shapes, options and JAX version (JAX keys the entries on all of them); tracing is still
paid each time. A 4-layer attribution graph of 64 tokens: 2.6 s in a fresh process,
1.9 s in the next one (bench/graph.py, `lmjax_warm`).

The folder is $LMJAX_COMPILE_CACHE, else ~/.cache/lmjax/compiled. A cache the user gave
JAX (JAX_COMPILATION_CACHE_DIR or jax.config) is kept as it is; LMJAX_COMPILE_CACHE=0
turns lmjax's off. lmjax's folder keeps at most MAX_BYTES (2 GiB), least recently used
entries evicted first.
"""
from __future__ import annotations

import os

import jax

ENV = "LMJAX_COMPILE_CACHE"
# Oldest entries go first beyond this (JAX's own default is unbounded).
MAX_BYTES = 2 * 2**30
# Programs that compile faster than this are not kept. JAX's default, 1 s, would skip most
# of an attribution graph's programs (LLVM at -O0, ~0.3-1 s each), which add up.
MIN_COMPILE_SECONDS = 0.2


def default_dir() -> str | None:
    """Where lmjax keeps compiled programs, or None when $LMJAX_COMPILE_CACHE is 0 / off."""
    value = os.environ.get(ENV, "")
    if value.lower() in ("0", "off", "false", "no"):
        return None
    return os.path.expanduser(value or os.path.join("~", ".cache", "lmjax", "compiled"))


def enable() -> str | None:
    """Point JAX's persistent cache at `default_dir()` unless JAX already has one.
    -> the folder JAX now caches in, or None."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    folder = default_dir()
    if folder is not None:
        jax.config.update("jax_compilation_cache_dir", folder)
        if jax.config.jax_compilation_cache_max_size < 0:
            jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
        if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's default
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder
