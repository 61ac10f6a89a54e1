"""Mixtures: named sources with weights (optionally a schedule of weights over steps), and
training batches drawn from them as a pure function of (seed, step).

A mixture is ``data.mixture``, a tuple of components::

    ({"name": "web", "source": "data/web/*.jsonl.zst", "weight": 0.7},
     {"name": "code", "source": "data/code/*.parquet", "weight": 0.3, "text_key": "content"})

A weight is a number, or a schedule ``((0, 0.7), (5000, 0.5))``: from each step on, that
weight (piecewise constant; the first entry is at step 0). Weights at a step are
normalised over the components, so they need not sum to one.

Each row of a step's global batch picks its component with probability equal to its
weight, then a uniform window of that component's train tokens; both draws come from a
Philox stream keyed by (seed, step), so every process computes the same global batch and
reads only its own rows: a resumed run, or one with another number of processes, sees the
same data.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np

from lmjax.data.batches import check_windows, inputs_targets, windows
from lmjax.errors import LmjaxError

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_KEYS = ("name", "source", "weight", "text_key")


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    source: str
    schedule: tuple[tuple[int, float], ...]  # (first step, weight), steps increasing from 0
    text_key: str | None = None  # None: data.text_key

    def weight_at(self, step: int) -> float:
        return next(w for s, w in reversed(self.schedule) if s <= step)


def _schedule(weight) -> tuple[tuple[int, float], ...]:
    if isinstance(weight, (int, float)) and not isinstance(weight, bool):
        return ((0, float(weight)),)
    if not isinstance(weight, (tuple, list)) or not weight:
        raise ValueError(f"weight must be a number or ((step, weight), ...), got {weight!r}")
    out = []
    for entry in weight:
        if (not isinstance(entry, (tuple, list)) or len(entry) != 2 or isinstance(entry[0], bool)
                or not isinstance(entry[0], int) or isinstance(entry[1], bool)
                or not isinstance(entry[1], (int, float))):
            raise ValueError(f"a weight schedule entry must be (step, weight), got {entry!r}")
        out.append((int(entry[0]), float(entry[1])))
    steps = [s for s, _ in out]
    if steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"a weight schedule's steps must start at 0 and increase, got {steps}")
    return tuple(out)


def _components(entries) -> tuple[list[Component], list[str]]:
    comps, problems = [], []
    if not isinstance(entries, (tuple, list)):
        return [], [f"data.mixture: expected a tuple of components, got {type(entries).__name__}"]
    for k, entry in enumerate(entries):
        where = f"data.mixture[{k}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a dict with keys {_KEYS}, got {entry!r}")
            continue
        unknown = sorted(set(entry) - set(_KEYS))
        missing = [key for key in ("name", "source", "weight") if key not in entry]
        if unknown or missing:
            problems.append(f"{where}: " + "; ".join(
                ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else []))
                + f" (allowed: {_KEYS})")
            continue
        name, source, text_key = entry["name"], entry["source"], entry.get("text_key")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"{where}.name: {name!r} must be letters, digits, '_', '.' or '-' (it names metrics)")
            continue
        if not isinstance(source, str) or not source:
            problems.append(f"{where}.source: expected a file, directory or glob, got {source!r}")
            continue
        if text_key is not None and (not isinstance(text_key, str) or not text_key):
            problems.append(f"{where}.text_key: expected a non-empty string, got {text_key!r}")
            continue
        try:
            schedule = _schedule(entry["weight"])
        except ValueError as e:
            problems.append(f"{where}.weight: {e}")
            continue
        if any(w < 0 or not math.isfinite(w) for _, w in schedule):
            problems.append(f"{where}.weight: weights must be finite and >= 0, got {entry['weight']!r}")
            continue
        comps.append(Component(name, source, schedule, text_key))
    names = [c.name for c in comps]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"data.mixture: the name {name!r} is used twice")
    if comps and not problems:
        starts = sorted({s for c in comps for s, _ in c.schedule})
        for s in starts:
            if sum(c.weight_at(s) for c in comps) <= 0:
                problems.append(f"data.mixture: the weights from step {s} are all zero")
    return comps, problems


def mixture_problems(entries) -> list[str]:
    """Every problem of a ``data.mixture`` value, one "field: what is wrong" line each."""
    return _components(entries)[1]


def parse_mixture(entries) -> tuple[Component, ...]:
    """The components of a ``data.mixture`` value (an error lists every problem)."""
    comps, problems = _components(entries)
    if problems:
        raise LmjaxError("; ".join(problems))
    return tuple(comps)


def canonical(entries) -> str:
    """A mixture as one comparable string: a config file's tuples and a checkpoint's JSON lists agree."""
    return json.dumps([dataclasses.asdict(c) for c in parse_mixture(entries)], sort_keys=True) if entries else ""


def weights_at(components, step: int) -> np.ndarray:
    """The components' sampling probabilities at ``step``."""
    w = np.array([c.weight_at(step) for c in components], dtype=np.float64)
    return w / w.sum()


def choose_rows(sizes, weights, *, seed: int, step: int, batch_size: int, seq_len: int):
    """Each global row's component and window start: ``(component [batch_size], offsets [batch_size])``.

    ``sizes``: each component's number of train tokens. Pure in (seed, step, weights, sizes).
    """
    rng = np.random.Generator(np.random.Philox(key=np.array([seed, step], dtype=np.uint64)))
    cdf = np.cumsum(weights)
    cdf[-1] = 1.0  # rounding must not leave a sliver past the last component
    component = np.minimum(np.searchsorted(cdf, rng.random(batch_size), side="right"), len(weights) - 1)
    highs = np.asarray(sizes, dtype=np.int64) - seq_len
    offsets = rng.integers(0, highs[component], dtype=np.int64)
    return component, offsets


@dataclasses.dataclass(frozen=True)
class MixtureData:
    """Token data of each component (lmjax.data.shards.TokenData), and the mixture's batches."""

    components: tuple[Component, ...]
    parts: dict  # name -> TokenData

    @property
    def meta(self) -> dict:
        return {c.name: self.parts[c.name].meta for c in self.components}

    def train_rows(self, *, seed: int, step: int, batch_size: int, seq_len: int, start: int, stop: int,
                   eos: int | None = None) -> dict:
        """Rows ``[start, stop)`` of the global training batch for ``step``, reading only those windows
        (with ``eos``, also their document ids, as lmjax.data.batches.train_rows gives them)."""
        if not 0 <= start <= stop <= batch_size:
            raise LmjaxError(f"rows [{start}, {stop}) are not inside the batch of {batch_size}")
        trains = [self.parts[c.name].train for c in self.components]
        for c, tokens in zip(self.components, trains):
            check_windows(tokens, seq_len, f"train tokens of mixture component {c.name!r}")
        component, offsets = choose_rows([len(t) for t in trains], weights_at(self.components, step),
                                         seed=seed, step=step, batch_size=batch_size, seq_len=seq_len)
        rows = np.zeros((stop - start, seq_len + 1), np.int32)
        component, offsets = component[start:stop], offsets[start:stop]
        for k, tokens in enumerate(trains):
            mine = np.flatnonzero(component == k)
            if mine.size:
                rows[mine] = windows(tokens, offsets[mine], seq_len)
        return inputs_targets(rows, eos)

    def val_splits(self) -> dict:
        """Each component's val tokens, by name (evaluated separately)."""
        return {c.name: self.parts[c.name].val for c in self.components}

    def windows_problem(self, seq_len: int, eval_rows: int) -> str | None:
        for c in self.components:
            problem = self.parts[c.name].windows_problem(seq_len, eval_rows)
            if problem:
                return f"mixture component {c.name!r}: {problem}"
        return None

    def summary(self) -> str:
        n_train = sum(len(self.parts[c.name].train) for c in self.components)
        n_val = sum(len(self.parts[c.name].val) for c in self.components)
        w = weights_at(self.components, 0)
        shares = ", ".join(f"{c.name} {p:.0%}" for c, p in zip(self.components, w))
        return f"{n_train:,} train / {n_val:,} val tokens in {len(self.components)} sources ({shares} at step 0)"

