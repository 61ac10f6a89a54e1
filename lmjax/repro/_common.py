"""Plumbing shared by the reproductions: command line, config files, results, timing.

A reproduction's command line is `--out DIR [--variant NAME] [--config.a.b=v ...]`:
the config is `configs/repro/NAME.py` (its `get_config(variant)`), the overrides are
applied with lmjax.config's parsing rules (a string is parsed to the field's type; an
unknown key is an error naming the keys that exist).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import time

import jax
import ml_collections
import numpy as np
import optax

from lmjax.config import ConfigError, parse_value

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_path(name: str) -> str:
    return os.path.join(REPO_ROOT, "configs", "repro", f"{name}.py")


def load_repro_config(name: str, variant: str | None = None, overrides=()) -> ml_collections.ConfigDict:
    """configs/repro/NAME.py's get_config(variant) with `a.b=v` overrides applied."""
    path = config_path(name)
    if not os.path.isfile(path):
        raise ConfigError(f"reproduction config {path} not found")
    spec = importlib.util.spec_from_file_location(f"lmjax_repro_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        config = module.get_config(variant)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"configs/repro/{name}.py: {e}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form a.b=value")
        set_override(config, key, value)
    return config


def set_override(config: ml_collections.ConfigDict, dotted: str, value: str) -> None:
    *parents, key = dotted.split(".")
    node = config
    for part in parents:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"unknown config key {dotted!r}; the config has: {sorted(config.keys())}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        have = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"unknown config key {dotted!r}; {'.'.join(parents) or 'config'} has: {have}")
    current = node[key]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"{dotted} is a section; set its keys: {sorted(current.keys())}")
    parsed = value if isinstance(current, str) else parse_value(value)
    if isinstance(current, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = float(parsed)
    if current is not None and type(parsed) is not type(current):
        raise ConfigError(f"{dotted}: expected {type(current).__name__}, got {type(parsed).__name__} {value!r}")
    node[key] = parsed


def parse_args(name: str, argv, doc: str | None = None):
    """-> (config, out_dir). `--config.a.b=v` items are split off before argparse."""
    argv = list(argv or [])
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    p = argparse.ArgumentParser(prog=f"lmjax repro {name}", description=(doc or "").split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("runs", "repro", name), help="where figures and results.json go")
    p.add_argument("--variant", default=None, help="the config's variant, e.g. small (get_config's argument)")
    args = p.parse_args(rest)
    config = load_repro_config(name, args.variant, overrides)
    os.makedirs(args.out, exist_ok=True)
    return config, args.out


def reproduce(name: str, argv, doc: str | None, experiment) -> tuple[dict, str]:
    """The shape of every reproduction's main: parse the command line, run
    `experiment(config, out) -> results` under a stopwatch (`wall_time_s`), write
    results.json. -> (results, out)."""
    config, out = parse_args(name, argv, doc)
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
    payload = dict(results)
    if config is not None:
        payload["config"] = config.to_dict()
    path = os.path.join(out, "results.json")
    with open(path, "w") as f:
        json.dump(to_jsonable(payload), f, indent=1)
    return path


@contextlib.contextmanager
def stopwatch(results: dict, key: str = "wall_time_s"):
    """Store the block's wall time (seconds) in results[key]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        results[key] = round(time.perf_counter() - t0, 1)


def frozen_where(optimizer: optax.GradientTransformation, params, frozen) -> optax.GradientTransformation:
    """`optimizer` for the leaves where frozen(path) is False; the others never move."""
    labels = jax.tree_util.tree_map_with_path(lambda path, _: bool(frozen(path)), params)
    return optax.multi_transform({False: optimizer, True: optax.set_to_zero()}, labels)


def is_mlp_path(path) -> bool:
    return any(getattr(p, "key", None) == "mlp" for p in path)


def attention_only(params):
    """Zero every MLP weight: lmjax has no attention-only switch, and an MLP with zero
    weights and biases writes exactly nothing to the residual stream (freeze it with
    `frozen_where(..., is_mlp_path)` so that it stays that way)."""
    return jax.tree_util.tree_map_with_path(lambda path, x: x * 0 if is_mlp_path(path) else x, params)


def savefig(fig, out: str, name: str, dpi: int = 90) -> str:
    path = os.path.join(out, name)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
