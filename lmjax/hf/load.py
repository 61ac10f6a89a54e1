"""Import a local Hugging Face model directory into lmjax parameters, slice by slice.

    cfg, params = load_params("path/to/hf_dir", mesh=mesh)        # sharded over `mesh`
    model = lmjax.model.Transformer(cfg)

Everything that can be wrong is checked before a single tensor byte is read: the
architecture, every tensor's presence and shape against what config.json implies, and
tensors the architecture does not explain. Then each parameter is created with
`jax.make_array_from_callback` straight in its target sharding: every device's callback
copies only its own slice out of the memory-mapped safetensors file (a GPT-2 `c_attn`
column block, a range of heads of a `q_proj`), converts it to the parameter dtype and
hands it over; the host never holds more than one parameter's worth at a time.
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmjax import sharding as sharding_lib
from lmjax.errors import LmjaxError, MissingFileError
from lmjax.hf.families import Link, UnsupportedModel, family_for_hf
from lmjax.data.safetensors_io import Checkpoint
from lmjax.model import ModelConfig, Transformer

CONFIG_FILE = "config.json"


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isdir(directory):
        raise MissingFileError(f"{directory} is not a directory (expected a Hugging Face model directory)")
    if not os.path.isfile(path):
        raise MissingFileError(f"{directory} has no {CONFIG_FILE}: not a Hugging Face model directory")
    with open(path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise LmjaxError(f"{path} is not valid JSON ({e}): not a Hugging Face config") from None
    if not isinstance(config, dict):
        raise LmjaxError(f"{path} holds a JSON {type(config).__name__}, not an object: not a Hugging Face config")
    return config


def import_config(directory: str, *, dtype: str = "float32", scan_layers: bool = False) -> ModelConfig:
    """The lmjax ModelConfig of a Hugging Face model directory (reads config.json only).

    `dtype` is the parameter and compute dtype (float32 for exact parity with transformers).
    """
    hf = read_hf_config(directory)
    cfg = dataclasses.replace(family_for_hf(hf).config_from_hf(hf), dtype=dtype, param_dtype=dtype,
                              scan_layers=scan_layers)
    problems = cfg.problems()
    if problems:
        raise UnsupportedModel(f"{directory}/{CONFIG_FILE} maps to an invalid lmjax config: " + "; ".join(problems))
    return cfg


def _abstract_params(cfg: ModelConfig):
    """The model's parameter tree as flax Partitioned boxes around ShapeDtypeStructs (no compute)."""
    model = Transformer(cfg)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in keys)


def plan(directory: str, cfg: ModelConfig | None = None, *, dtype: str = "float32", scan_layers: bool = False):
    """(cfg, checkpoint, {lmjax path: (resolved tensor name or None, Link)}) after checking everything.

    Raises UnsupportedModel / ValueError naming the tensor when something is missing, of
    the wrong shape, or unexplained; nothing but headers has been read when it returns.
    """
    hf = read_hf_config(directory)
    family = family_for_hf(hf)
    cfg = cfg or import_config(directory, dtype=dtype, scan_layers=scan_layers)
    ckpt = Checkpoint(directory)
    try:
        links = family.links(dataclasses.replace(cfg, scan_layers=False), hf)
        resolved, problems = {}, []
        for path, link in links.items():
            if link.hf is None:
                resolved[path] = (None, link)
                continue
            name = _resolve(ckpt, link.hf, family.prefixes)
            if name is None:
                problems.append(f"missing tensor {link.hf!r} (for lmjax parameter {path})")
            elif tuple(ckpt.info(name).shape) != link.hf_shape:
                problems.append(f"tensor {name!r} has shape {list(ckpt.info(name).shape)}, but {CONFIG_FILE} "
                                f"implies {list(link.hf_shape)} (for lmjax parameter {path})")
            else:
                resolved[path] = (name, link)
        used = {name for name, _ in resolved.values() if name is not None}
        extra = [n for n in ckpt.names() if n not in used and not n.endswith(family.ignorable)
                 and not (cfg.tie_embeddings and n == "lm_head.weight")]
        if extra:
            shown = ", ".join(repr(n) for n in extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
            problems.append(f"unexpected tensor(s) {shown}: {hf.get('architectures')} as lmjax reads it has no "
                            "place for them (a variant lmjax does not implement?)")
        if problems:
            raise LmjaxError(f"cannot import {directory}:\n  " + "\n  ".join(problems))
    except BaseException:
        ckpt.close()
        raise
    return cfg, ckpt, resolved


def _resolve(ckpt: Checkpoint, name: str, prefixes) -> str | None:
    """The checkpoint's name for `name`, allowing it to lack the family's module prefix."""
    if name in ckpt:
        return name
    for prefix in prefixes:
        if prefix and name.startswith(prefix) and name[len(prefix):] in ckpt:
            return name[len(prefix):]
    return None


def _normalize(index, shape) -> tuple[slice, ...]:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    out = []
    for s, n in zip(index, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"strided shard index {s}")
        out.append(slice(start, stop))
    return tuple(out)


def read_slice(ckpt: Checkpoint, name: str | None, link: Link, index, dtype) -> np.ndarray:
    """The lmjax parameter's block `index` (slices over its shape), read from tensor `name`.

    Each axis of the stored tensor is split into `link.groups()`; a slice of the outermost
    split axis of a group is a contiguous range of the stored axis, so only that range is
    copied, and slices of inner split axes are taken after the reshape.
    """
    index = _normalize(index, link.shape)
    split_index = [slice(0, 1)] * len(link.split)  # axes perm leaves out have size 1
    for lm_axis, split_axis in enumerate(link.perm):
        split_index[split_axis] = index[lm_axis]
    if name is None:
        return np.zeros(tuple(s.stop - s.start for s in index), dtype)
    ranges, block_shape, inner = [], [], []
    for axis, group in enumerate(link.groups()):
        outer = split_index[group[0]]
        stride = int(np.prod([link.split[k] for k in group[1:]], dtype=np.int64))
        offset = 0
        if link.part is not None and link.part[0] == axis:
            offset = link.part[1] * link.block_shape[axis]
        ranges.append(slice(offset + outer.start * stride, offset + outer.stop * stride))
        block_shape += [outer.stop - outer.start] + [link.split[k] for k in group[1:]]
        inner += [slice(None)] + [split_index[k] for k in group[1:]]
    block = ckpt.read(name, tuple(ranges))  # the copy: only these bytes are read
    block = block.reshape(block_shape)[tuple(inner)]
    block = block.transpose(link.full_perm).reshape(tuple(s.stop - s.start for s in index))
    return np.ascontiguousarray(block).astype(dtype, copy=False)


def load_params(directory: str, cfg: ModelConfig | None = None, *, mesh=None, rules=None,
                dtype: str = "float32", scan_layers: bool = False):
    """-> (cfg, params): the checkpoint's parameters in lmjax's layout (`blocks/block` stacked
    over layers when `cfg.scan_layers`).

    With a `mesh`, every parameter is created directly in the sharding lmjax trains with
    (logical axis `rules`, default lmjax.sharding's); without one, on the first local device.
    """
    cfg, ckpt, resolved = plan(directory, cfg, dtype=dtype, scan_layers=scan_layers)
    with ckpt:
        boxed = _abstract_params(cfg)
        if mesh is not None:
            shardings, _ = sharding_lib.param_shardings(boxed, mesh, rules)
        else:
            single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            shardings = jax.tree.map(lambda _: single, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        abstract = nn.unbox(boxed)

        def build(keys, leaf, target):
            path = _path(keys)
            dtype = leaf.dtype
            if path.startswith("blocks/block/"):  # scanned: leading layer axis
                rest = path[len("blocks/block/"):]
                per_layer = [resolved[f"blocks_{l}/{rest}"] for l in range(cfg.n_layer)]

                def callback(index):
                    index = _normalize(index, leaf.shape)
                    return np.stack([read_slice(ckpt, *per_layer[l], index[1:], dtype)
                                     for l in range(index[0].start, index[0].stop)])

            else:
                if path not in resolved:
                    raise UnsupportedModel(f"lmjax parameter {path} has no source tensor (a bug in lmjax.hf.families)")
                name, link = resolved[path]
                if link.shape != leaf.shape:
                    raise AssertionError(f"{path}: link shape {link.shape} vs parameter {leaf.shape}")
                callback = lambda index: read_slice(ckpt, name, link, index, dtype)  # noqa: E731
            return jax.make_array_from_callback(leaf.shape, target, callback)

        params = jax.tree_util.tree_map_with_path(build, abstract, shardings)
        jax.block_until_ready(params)  # all copies out of the mapped file are done before it closes
    return cfg, params
