"""Runs as a CSV table (one row per run or per evaluation), read into float columns."""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from lmjax.errors import LmjaxError


def read_columns(path: str, names: dict[str, str]) -> dict[str, np.ndarray]:
    """{role: column name} -> {role: float array}. A missing file or column, an empty table,
    or a cell that is empty, not a number, NaN or infinite is an error naming the column
    and the row (its line in the file, the header being line 1)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such CSV: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if not header:
            raise LmjaxError(f"{path}: the CSV is empty (no header row); expected columns {list(names.values())}")
        missing = [c for c in names.values() if c not in header]
        if missing:
            raise LmjaxError(f"{path}: missing column(s) {missing}; the CSV has {header} "
                             "(choose columns with --n/--d/--loss/--c)")
        rows = [(i, reader.line_num, r) for i, r in enumerate(reader, 1)]
    if not rows:
        raise LmjaxError(f"{path}: the CSV has a header but no rows: nothing to fit")
    out = {}
    for role, column in names.items():
        values = []
        for number, line, row in rows:
            cell = (row.get(column) or "").strip()
            try:
                value = float(cell)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                why = "not finite" if value is not None else "not a number"
                what = f"is {cell!r}, {why}" if cell else "is empty"
                raise LmjaxError(f"{path}: column {column!r}, row {number} (line {line}) {what}; "
                                 "every value must be a finite number")
            values.append(value)
        out[role] = np.array(values)
    return out
