"""Runs as a CSV table (one row per run or per evaluation), read into float columns."""
from __future__ import annotations

import csv
import os

import numpy as np


def read_columns(path: str, names: dict[str, str]) -> dict[str, np.ndarray]:
    """{role: column name} -> {role: float array}; a missing file or column, or a value
    that is not a number, is a ValueError naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such CSV: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in names.values() if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the CSV has {header} "
                             "(choose columns with --n/--d/--loss/--c)")
        rows = list(reader)
    out = {}
    for role, column in names.items():
        try:
            out[role] = np.array([float(r[column]) for r in rows])
        except ValueError as e:
            raise ValueError(f"{path}: column {column!r} has a value that is not a number ({e})") from None
    return out
