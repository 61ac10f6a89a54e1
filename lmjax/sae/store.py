"""Where dictionaries live on disk: dictionary directories and training run directories.

A dictionary directory holds `dictionary.json` (the `Dictionary` fields, scales and hook
names included, plus what it was trained on under "trained_on") and `params.safetensors`.
A training run directory (`lmjax sae train --out DIR`) holds

    DIR/checkpoints/           Orbax checkpoints of the whole training state (resume)
    DIR/metrics.jsonl, DIR/tb/ the logged metrics (as a model's training run)
    DIR/dictionaries/<i>/      the trained dictionaries, one directory each

`load_dictionary` takes either kind of directory. Everything is written to a temporary
name and renamed, so a killed write never leaves half a dictionary.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np

from lmjax.data.safetensors_io import load_arrays, save_arrays
from lmjax.errors import LmjaxError, MissingFileError
from lmjax.sae.architectures import Dictionary
from lmjax.train.checkpoint import Checkpointer
from lmjax.train.run_metrics import RunMetrics

DICTIONARY_JSON = "dictionary.json"
PARAMS_FILE = "params.safetensors"
DICTIONARIES = "dictionaries"
CHECKPOINTS = "checkpoints"


def save_dictionary(path: str, dictionary: Dictionary, params, trained_on: dict | None = None) -> str:
    """Write one dictionary directory (replacing an older one at `path` only once complete)."""
    path = os.path.abspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_arrays(os.path.join(tmp, PARAMS_FILE), {k: np.asarray(v, np.float32) for k, v in dictionary.params_to_arrays(jax.device_get(params)).items()})
    meta = {"kind": type(dictionary).__name__, **dictionary.to_dict(), "trained_on": trained_on or {}}
    with open(os.path.join(tmp, DICTIONARY_JSON), "w") as f:
        json.dump(meta, f, indent=1)
    if os.path.isdir(path):
        old = f"{path}.old{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def save_dictionaries(out: str, dictionaries, params, trained_on: dict | None = None) -> list[str]:
    """OUT/dictionaries/<i>/ for each member (params stacked over a leading axis when several)."""
    paths = []
    for i, d in enumerate(dictionaries):
        p = params if len(dictionaries) == 1 else jax.tree.map(lambda a: a[i], params)
        paths.append(save_dictionary(os.path.join(out, DICTIONARIES, str(i)), d, p, trained_on))
    return paths


def dictionary_dirs(path: str) -> list[str]:
    """The dictionary directories at `path`: itself, or a run directory's members in order."""
    if os.path.isfile(os.path.join(path, DICTIONARY_JSON)):
        return [path]
    members = os.path.join(path, DICTIONARIES)
    if os.path.isdir(members):
        names = sorted((n for n in os.listdir(members) if n.isdigit()), key=int)
        return [os.path.join(members, n) for n in names if os.path.isfile(os.path.join(members, n, DICTIONARY_JSON))]
    return []


def load_dictionary(path: str, member: int | None = None):
    """-> (Dictionary, params) from a dictionary directory, or from a run directory (which
    must hold one dictionary unless `member` picks one)."""
    found = dictionary_dirs(path)
    if not found:
        raise MissingFileError(f"{path}: no dictionary here (neither {DICTIONARY_JSON} nor {DICTIONARIES}/<i>/"
                               f"{DICTIONARY_JSON}); train one with `lmjax sae train --out DIR`")
    if member is None and len(found) > 1:
        raise LmjaxError(f"{path} holds {len(found)} dictionaries; pick one: {path}/{DICTIONARIES}/<0..{len(found) - 1}>")
    if member is not None and not 0 <= member < len(found):
        raise LmjaxError(f"{path} holds {len(found)} dictionaries; member {member} does not exist")
    where = found[member or 0]
    with open(os.path.join(where, DICTIONARY_JSON)) as f:
        meta = json.load(f)
    meta.pop("trained_on", None)
    kind = meta.pop("kind", "Dictionary")
    if kind != "Dictionary":
        from lmjax.sae.crosslayer import CrossLayerTranscoder  # local: crosslayer builds on this module's peers
        dictionary = CrossLayerTranscoder.from_dict(meta)
    else:
        dictionary = Dictionary.from_dict(meta)
    arrays, _ = load_arrays(os.path.join(where, PARAMS_FILE))
    return dictionary, dictionary.params_from_arrays(arrays)


def trained_on(path: str) -> dict:
    """What a dictionary directory records it was trained on (the model's config, the hooks)."""
    with open(os.path.join(dictionary_dirs(path)[0], DICTIONARY_JSON)) as f:
        return json.load(f).get("trained_on", {})


def open_run(out: str, state, run_config: dict, *, save_every: int):
    """-> (checkpointer, metrics writer, restored state or None) for a training run in `out`.
    A run directory whose checkpoint was made with other settings is refused in one line."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise LmjaxError(f"--out {out} is a file; it names the run directory")
    os.makedirs(out, exist_ok=True)
    checkpointer = Checkpointer(os.path.join(out, CHECKPOINTS), keep=2, save_every=save_every, exclusive=True)
    restored = None
    if checkpointer.latest_step() is not None:
        stored, _ = checkpointer.restore_meta()
        changed = sorted(k for k in set(stored) | set(run_config)
                         if k != "steps" and json.dumps(stored.get(k), sort_keys=True, default=str)
                         != json.dumps(run_config.get(k), sort_keys=True, default=str))
        if changed:
            checkpointer.close()
            raise LmjaxError(f"{out} holds a dictionary run with other settings ({', '.join(changed)} differ); "
                             "give a new --out, or the same settings to resume")
        restored = checkpointer.restore(state)
    return checkpointer, RunMetrics(out, cache_dir=os.path.join(out, ".cache")), restored
