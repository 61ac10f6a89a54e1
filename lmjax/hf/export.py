"""Export lmjax parameters as a Hugging Face model directory that `from_pretrained` loads.

    export_hf("out_dir", cfg, params, tokenizer)

Writes config.json, model.safetensors (or numbered shards with
model.safetensors.index.json when larger than `max_shard_bytes`) and the tokenizer files,
into a temporary sibling directory that is renamed to `out_dir` only when everything is
written: a failed export leaves nothing behind. Tensors are fetched from the devices and
written one at a time, so the host holds one tensor, never the model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import numpy as np

from lmjax.errors import LmjaxError, PathExistsError
from lmjax.hf.families import family_for_config
from lmjax.data.safetensors_io import INDEX_FILE, SINGLE_FILE, write_file
from lmjax.data.hf_tokenizer import write_tokenizer
from lmjax.model import ModelConfig

DEFAULT_SHARD_BYTES = 5 * 2**30


def _param(params, cfg: ModelConfig, path: str):
    """The host copy of parameter `path` (unscanned naming) from either layout."""
    parts = path.split("/")
    layer = None
    if parts[0].startswith("blocks_") and "blocks" in params and "block" in params["blocks"]:
        layer, parts = int(parts[0][len("blocks_"):]), ["blocks", "block", *parts[1:]]
    node = params
    for p in parts:
        node = node[p]
    if not getattr(node, "is_fully_addressable", True):
        raise LmjaxError(f"parameter {path} is not fully addressable from this process: export from one process")
    array = np.asarray(jax.device_get(node[layer] if layer is not None else node))
    return array


def hf_tensors(cfg: ModelConfig, params, dtype=None):
    """(entries, produce): the Hugging Face tensors as (name, shape, dtype) and a function
    that assembles one of them from the lmjax parameters (inverting each Link)."""
    family = family_for_config(cfg)
    by_name: dict[str, list] = {}
    for path, link in family.links(cfg).items():
        by_name.setdefault(link.hf, []).append((path, link))
    out_dtype = np.dtype(dtype or cfg.param_dtype)
    entries = [(name, items[0][1].hf_shape, out_dtype) for name, items in sorted(by_name.items())]

    def produce(name):
        items = by_name[name]
        tensor = np.empty(items[0][1].hf_shape, out_dtype)
        for path, link in items:
            block = _param(params, cfg, path)
            if block.shape != link.shape:
                raise LmjaxError(f"parameter {path} has shape {block.shape}, the config implies {link.shape}")
            squeezed = (1,) * (len(link.full_perm) - len(link.perm))
            block = block.reshape(block.shape + squeezed).transpose(np.argsort(link.full_perm)).reshape(link.block_shape)
            if link.part is None:
                tensor[...] = block
            else:
                axis, i, _ = link.part
                width = link.block_shape[axis]
                index = [slice(None)] * tensor.ndim
                index[axis] = slice(i * width, (i + 1) * width)
                tensor[tuple(index)] = block
        return tensor

    return entries, produce


def _special_ids(tokenizer) -> dict:
    out = {}
    for attr, key in (("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"), ("pad_id", "pad_token_id")):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if value is not None:
            out[key] = int(value)
    return out


def export_hf(out_dir: str, cfg: ModelConfig, params, tokenizer=None, *, dtype=None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Write the model (and tokenizer) as a Hugging Face directory; returns the files written.

    `out_dir` must not exist yet (or be an empty directory). `dtype`: the stored dtype
    (default: the parameters'). Raises UnsupportedModel, before writing, when the model has
    no Hugging Face equivalent.
    """
    family = family_for_config(cfg)
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise PathExistsError(f"{out_dir} already exists and is not empty: choose a new directory")
    entries, produce = hf_tensors(cfg, params, dtype)
    out_dtype = np.dtype(dtype or cfg.param_dtype)
    hf_config = family.config_to_hf(cfg)
    hf_config.update(_special_ids(tokenizer))
    hf_config["dtype"] = hf_config["torch_dtype"] = str(out_dtype) if out_dtype.name != "bfloat16" else "bfloat16"

    # Shards: consecutive tensors until the next would pass the limit.
    shards, size = [[]], 0
    for entry in entries:
        nbytes = out_dtype.itemsize * int(np.prod(entry[1], dtype=np.int64))
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make the export private
        written = ["config.json"]
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        if len(shards) == 1:
            files = [SINGLE_FILE]
        else:
            files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for file, shard in zip(files, shards):
            write_file(os.path.join(tmp, file), shard, produce, {"format": "pt"})
        written += files
        if len(shards) > 1:
            total = sum(out_dtype.itemsize * int(np.prod(e[1], dtype=np.int64)) for e in entries)
            index = {"metadata": {"total_size": total},
                     "weight_map": {e[0]: file for file, shard in zip(files, shards) for e in shard}}
            with open(os.path.join(tmp, INDEX_FILE), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
            written.append(INDEX_FILE)
        if tokenizer is not None:
            written += write_tokenizer(tokenizer, tmp, max_len=cfg.max_len)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
