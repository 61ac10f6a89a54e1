"""Implicit attention of selective state-space (Mamba) layers (Ali et al. 2024).

A Mamba layer's output is a data-dependent linear map of its inputs:
y_t = sum_s alpha_{t,s} x_s per channel, with
alpha_{t,s} = C_t . (prod_{k=s+1..t} exp(delta_k A)) . delta_s B_s. Exposed as a
[b, channel, t, s] (or channel-averaged [b, t, s]) "pattern", attention plots and head
detectors apply to Mamba layers too.

Pending: the Mamba mixer (issue 5) is not in lmjax.model yet; until it lands this module
finds no Mamba layers and returns nothing.
"""
from __future__ import annotations


def implicit_patterns(model, params, tokens, layers) -> dict:
    """{layer: [b, 1, t, t]} channel-averaged implicit attention of the Mamba layers among `layers`."""
    return {}
