"""Activations for dictionaries: streamed from a model under jit, or cached once to disk.

`ModelSource` runs the model on token windows drawn by step (the same pure function of
(seed, step) that training batches use) and returns the activations at the requested hook
points through `run_with_cache`: nothing touches the disk. `cache_activations` runs it once
over a token budget and writes each hook's activations as a memory-mapped `.npy` shard
(written under a temporary name, renamed when complete); `CachedSource` reads them back in
a fresh shuffle each epoch. Any hook point works, on any mixer (attention, Mamba, LSTM,
gated convolution, hybrids): an activation's trailing axes after [batch, position] are
flattened into one feature axis (e.g. `attn.hook_z` [b, t, heads, d_head] -> heads*d_head).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.data.batches import train_batch
from lmjax.errors import LmjaxError, MissingFileError
from lmjax.sae.training import ArraySource

META = "activations.json"


def check_hooks(model, names: Sequence[str]) -> None:
    """A hook the model does not have is a one-line error naming the hooks it has."""
    model.check_hook_names(tuple(names))


def hook_width(model, params, name: str) -> int:
    """The flattened feature size of hook point `name`."""
    shapes = jax.eval_shape(lambda p: model.run_with_cache(p, jnp.zeros((1, 2), jnp.int32), (name,))[1], params)
    shape = shapes[name].shape
    return int(math.prod(shape[2:])) if len(shape) > 2 else 1


def _flatten(a):
    """[batch, pos, ...] -> [batch * pos, features]."""
    return a.reshape(a.shape[0] * a.shape[1], -1)


class ModelSource:
    """Activations at `hook_in` (and `hook_out`, for a transcoder) streamed from the model.

    tokens: a 1-D token array (a corpus, e.g. TokenData.train); each step draws
    ceil(batch_size / (seq_len - skip)) windows of seq_len and keeps the positions after
    the first `skip` (the first position of a window sees no context). `hook_in` may be a
    list (every layer at once): batches then carry a leading member axis (one dictionary
    per hook), or with `layer_axis=True` a layer axis after the rows ([batch, L, d]: the
    input of one cross-layer transcoder).
    """

    def __init__(self, model, params, tokens, hook_in, hook_out=None, *, seq_len: int = 128, seed: int = 0,
                 skip: int = 1, layer_axis: bool = False):
        self.model, self.params, self.tokens = model, params, tokens
        self.layer_axis = layer_axis and not isinstance(hook_in, str)
        self.member_axis = not isinstance(hook_in, str) and not self.layer_axis
        self.hooks_in = [hook_in] if isinstance(hook_in, str) else list(hook_in)
        if hook_out is None:
            self.hooks_out = None
        else:
            self.hooks_out = [hook_out] if isinstance(hook_out, str) else list(hook_out)
            if len(self.hooks_out) != len(self.hooks_in):
                raise LmjaxError(f"{len(self.hooks_in)} input hooks but {len(self.hooks_out)} output hooks")
        check_hooks(model, self.hooks_in + (self.hooks_out or []))
        max_len = getattr(model.cfg, "max_len", None)
        if max_len and seq_len > max_len:
            raise LmjaxError(f"seq_len={seq_len} exceeds the model's context of {max_len}")
        if not 0 <= skip < seq_len:
            raise LmjaxError(f"skip={skip} must be between 0 and seq_len - 1 = {seq_len - 1}")
        if len(tokens) <= seq_len:
            raise LmjaxError(f"the token array has {len(tokens)} tokens, fewer than one window of seq_len={seq_len}")
        self.seq_len, self.seed, self.skip = seq_len, seed, skip
        names = tuple(dict.fromkeys(self.hooks_in + (self.hooks_out or [])))
        self._names = names
        self._run = jax.jit(lambda p, t: model.run_with_cache(p, t, names)[1])
        self.d_in = hook_width(model, params, self.hooks_in[0])
        self.d_out = self.d_in if self.hooks_out is None else hook_width(model, params, self.hooks_out[0])

    def _stack(self, cache, hooks, keep):
        arrays = [_flatten(cache[h][:, self.skip:])[:keep] for h in hooks]
        if self.layer_axis:
            return jnp.stack(arrays, axis=1)
        return jnp.stack(arrays) if self.member_axis else arrays[0]

    def batch(self, step: int, batch_size: int):
        per_row = self.seq_len - self.skip
        rows = -(-batch_size // per_row)
        window = train_batch(self.tokens, seed=self.seed, step=step, batch_size=rows, seq_len=self.seq_len)["inputs"]
        cache = self._run(self.params, jnp.asarray(window))
        x = self._stack(cache, self.hooks_in, batch_size)
        y = None if self.hooks_out is None else self._stack(cache, self.hooks_out, batch_size)
        # On the host, like every source's batches: the model may be sharded over a mesh the
        # dictionary does not share.
        return jax.device_get((x, y))

    def sample(self, n: int):
        return self.batch(2**20, n)


def cache_activations(source: ModelSource, out: str, *, n_tokens: int, batch_size: int = 4096,
                      dtype=np.float32, progress: bool = True) -> str:
    """Run `source` once over `n_tokens` and write OUT/x.npy (and y.npy) with activations.json;
    an existing complete cache of the same request is reused, anything else at OUT is refused."""
    meta = {"hooks_in": source.hooks_in, "hooks_out": source.hooks_out, "n_tokens": int(n_tokens),
            "seq_len": source.seq_len, "seed": source.seed, "skip": source.skip, "dtype": np.dtype(dtype).name,
            "d_in": source.d_in, "d_out": source.d_out}
    if os.path.isfile(os.path.join(out, META)):
        with open(os.path.join(out, META)) as f:
            if json.load(f) == meta:
                return out
        raise LmjaxError(f"{out} holds cached activations of another request; give a new directory")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise LmjaxError(f"{out} exists and is not an activation cache; give a new directory")
    tmp = f"{out.rstrip('/')}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    members = len(source.hooks_in) if source.member_axis else None
    shape = lambda d: (members, n_tokens, d) if members else (n_tokens, d)  # noqa: E731
    x_file = np.lib.format.open_memmap(os.path.join(tmp, "x.npy"), "w+", dtype, shape(source.d_in))
    y_file = None if source.hooks_out is None else np.lib.format.open_memmap(
        os.path.join(tmp, "y.npy"), "w+", dtype, shape(source.d_out))
    steps = -(-n_tokens // batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # local: only a run with a progress bar needs it
        bar = tqdm(total=n_tokens, desc="caching activations", unit="tok", unit_scale=True)
    for step in range(steps):
        start = step * batch_size
        take = min(batch_size, n_tokens - start)
        x, y = jax.device_get(source.batch(step, batch_size))
        if members:
            x_file[:, start:start + take] = x[:, :take]
        else:
            x_file[start:start + take] = x[:take]
        if y_file is not None:
            (y_file.__setitem__((slice(None), slice(start, start + take)), y[:, :take]) if members
             else y_file.__setitem__(slice(start, start + take), y[:take]))
        if bar is not None:
            bar.update(take)
    if bar is not None:
        bar.close()
    for f in (x_file, y_file):
        if f is not None:
            f.flush()
    del x_file, y_file
    with open(os.path.join(tmp, META), "w") as f:
        json.dump(meta, f, indent=1)
    if os.path.isdir(out):
        os.rmdir(out)  # empty, checked above
    os.replace(tmp, out)
    return out


class CachedSource(ArraySource):
    """Activations cached by `cache_activations`, memory-mapped and read in a fresh shuffle
    each epoch."""

    def __init__(self, path: str, *, seed: int = 0):
        if not os.path.isfile(os.path.join(path, META)):
            raise MissingFileError(f"{path}: no cached activations ({META} missing); make them with cache_activations")
        with open(os.path.join(path, META)) as f:
            self.meta = json.load(f)
        x = np.load(os.path.join(path, "x.npy"), mmap_mode="r")
        y = np.load(os.path.join(path, "y.npy"), mmap_mode="r") if self.meta["hooks_out"] else None
        super().__init__(x, y, seed=seed, member_axis=x.ndim == 3)
