"""Parameter and FLOP accounting for the transformer, by formula (checked against the tree).

Convention (PaLM, appendix B; nanoGPT's estimate_mfu): training FLOPs per token
    6 * N + 12 * n_layer * (n_head * d_head) * seq_len
where N counts the parameters that enter matrix multiplies: every block's weights and
the output head (a tied embedding counted once, as the head). Position embeddings, norms
and biases are out; the attention term counts the full (not causal-halved) score matrix.
"""
from __future__ import annotations

import math

import jax

from lmjax.model.config import ModelConfig


def _block_matrices(cfg: ModelConfig) -> int:
    d, dh = cfg.d_model, cfg.head_dim
    attn = d * dh * (2 * cfg.n_head + 2 * cfg.kv_heads)  # q, o, and the k, v groups
    mlp = d * cfg.mlp_dim * (3 if cfg.mlp == "swiglu" else 2)
    return attn + mlp


def matmul_params(cfg: ModelConfig) -> int:
    """N of the FLOP count: block weight matrices plus the output head."""
    return cfg.n_layer * _block_matrices(cfg) + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token."""
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


def count_params(params) -> int:
    """Total number of parameters in a parameter tree."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
