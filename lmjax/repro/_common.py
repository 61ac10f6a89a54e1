"""Plumbing shared by the reproductions: command line, config, results, timing, and the
attention-only models of two of them.

A reproduction's command line is

    lmjax repro NAME[:variant] [--out DIR] [--config.a.b=v ...]

(`--variant V` is an alias of `:V`). The config is configs/repro/NAME.py through
lmjax.config.load_config: the file declares its own schema (`defaults()`) or is a training
config, so an override is parsed to its key's type and an unknown key, a wrong type or a
failed check is a one-line error before anything runs. --out is always a directory
(default runs/repro/NAME): the figures and results.json go there.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from lmjax.config import load_config
from lmjax.errors import LmjaxError, MissingFileError, PathExistsError
from lmjax.repro import REPRODUCTIONS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_path(name: str) -> str:
    return os.path.join(REPO_ROOT, "configs", "repro", f"{name}.py")


def load_repro_config(name: str, variant: str | None = None, overrides=()) -> ml_collections.ConfigDict:
    """configs/repro/NAME.py[:variant] with `a.b=v` overrides, loaded and checked by
    lmjax.config.load_config. `name` may carry the variant itself: "grokking:small"."""
    name, variant = _variant(name, variant)
    path = config_path(name)
    if not os.path.isfile(path):
        raise MissingFileError(f"no reproduction config {path}; the reproductions: {sorted(REPRODUCTIONS)}")
    return load_config(f"{path}:{variant or ''}", overrides)


def _variant(spec: str, variant: str | None) -> tuple[str, str | None]:
    """"NAME[:variant]" and a --variant -> (NAME, variant); the two must agree."""
    name, _, inline = spec.partition(":")
    if inline and variant and inline != variant:
        raise LmjaxError(f"two variants: {spec!r} and --variant {variant!r}; give one (NAME:variant)")
    return name, inline or variant or None


class Invocation(NamedTuple):
    config: ml_collections.ConfigDict
    out: str  # the output directory, made if missing
    variant: str | None


def parse_args(name: str, argv, doc: str | None = None, variant: str | None = None) -> Invocation:
    """The reproduction's command line (`--out DIR`, `--variant V`, `--config.a.b=v` ...) ->
    its loaded config, output directory and variant. `name` may carry the variant
    ("shakespeare:gpu"), as may `variant` (what `lmjax repro NAME:variant` gave)."""
    name, variant = _variant(name, variant)
    argv = list(argv or [])
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    p = argparse.ArgumentParser(prog=f"lmjax repro {name}[:variant]", description=(doc or "").split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("runs", "repro", name),
                   help="the directory where figures and results.json go (made if missing)")
    p.add_argument("--variant", default=None, help="an alias of NAME:variant, e.g. small (get_config's argument)")
    args = p.parse_args(rest)
    name, variant = _variant(f"{name}:{variant or ''}", args.variant)
    config = load_repro_config(name, variant, overrides)
    make_out_dir(args.out)
    return Invocation(config, args.out, variant)


def make_out_dir(out: str) -> None:
    """--out is always a directory: make it, or say in one line why it cannot be one."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise PathExistsError(f"--out {out} is a file; --out names the directory for the figures and results.json")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise LmjaxError(f"--out {out}: cannot make the directory: {e.strerror or e}") from None


def reproduce(name: str, argv, doc: str | None, experiment, variant: str | None = None) -> tuple[dict, str]:
    """The shape of every reproduction's main: parse the command line, run
    `experiment(config, out) -> results` under a stopwatch (`wall_time_s`), write
    results.json. -> (results, out)."""
    config, out, _ = parse_args(name, argv, doc, variant)
    results = {}
    with stopwatch(results):
        results.update(experiment(config, out))
    write_results(out, results, config)
    return results, out


def to_jsonable(x):
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def write_results(out: str, results: dict, config=None) -> str:
    """OUT/results.json (the numbers, and the config that made them), written whole or not at all."""
    payload = dict(results)
    if config is not None:
        payload["config"] = config.to_dict()
    path = os.path.join(out, "results.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(to_jsonable(payload), f, indent=1)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def stopwatch(results: dict, key: str = "wall_time_s"):
    """Store the block's wall time (seconds) in results[key]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        results[key] = round(time.perf_counter() - t0, 1)


def is_mlp_path(path) -> bool:
    """Is this parameter (by its key path) inside an MLP? A `frozen` predicate for
    lmjax.train.steps.make_train_step."""
    return any(getattr(p, "key", None) == "mlp" for p in path)


def attention_only(params):
    """Zero every MLP weight: lmjax has no attention-only switch, and an MLP with zero
    weights and biases writes exactly nothing to the residual stream (train it with
    `frozen=is_mlp_path` so that it stays that way)."""
    return jax.tree_util.tree_map_with_path(lambda path, x: x * 0 if is_mlp_path(path) else x, params)
