"""JAX's persistent compilation cache, on by default for lmjax's programs.

Compiling is most of what a user waits for the first time an analysis runs (a 12 x 20
patching heatmap of GPT-2 small: ~15 s of compiling for ~2.5 s of running on a 2-core
CPU). With the cache, a program compiled once is loaded by every later call and process
with the same shapes, options and JAX version (JAX keys the entries on all of them), so
the second `lmjax explain` of a model starts in seconds.

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
