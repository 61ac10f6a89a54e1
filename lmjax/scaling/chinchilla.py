"""Chinchilla's approach 3 on Epoch AI's extraction of Hoffmann et al.'s points (REFERENCES.md)."""
from __future__ import annotations

import numpy as np

from lmjax.scaling.tables import read_columns

# Epoch AI's replication of Hoffmann et al.'s approach 3 on the same extracted points, and
# Hoffmann et al.'s own published fit (REFERENCES.md).
EPOCH = {"E": 1.817, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def epoch_points(path: str):
    """(N, D, L) of Epoch AI's extraction, dropping the 5 highest losses as they did."""
    cols = read_columns(path, {"N": "Model Size", "C": "Training FLOP", "loss": "loss"})
    keep = np.argsort(cols["loss"])[:-5]
    N, C, L = cols["N"][keep], cols["C"][keep], cols["loss"][keep]
    return N, C / (6 * N), L
