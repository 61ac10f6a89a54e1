"""Parameter and FLOP accounting for every mixer, by formula (checked against the tree).

Convention (PaLM, appendix B; nanoGPT's estimate_mfu): training FLOPs per token
    6 * N + 3 * (the forward FLOPs per token outside those matmuls)
where N counts the parameters that enter matrix multiplies: every block's weights and
the output head (a tied embedding counted once, as the head). Position embeddings, norms,
biases, Mamba's A_log and D and its depthwise conv are out of N.

The rest is per mixer, forward, per layer and token:
- attention: 4 * n_head * d_head * seq_len (q.k and pattern.v over the full, not
  causal-halved, score matrix), so a transformer keeps PaLM's 12 * n_layer * d_attn * seq;
- Mamba: 2 * d_conv * d_inner (the depthwise conv) + 8 * d_inner * d_state (the scan:
  discretise exp(delta A) and delta B x, update h, read out C . h): independent of seq_len;
- LSTM, GRU and the gated conv: all their work is in matmuls (the recurrent product is one
  per token), so nothing beyond 6 N.
"""
from __future__ import annotations

import math

import jax

from lmjax.errors import LmjaxError
from lmjax.model.config import ModelConfig
from lmjax.model.transformer import Transformer


def _mixer_matrices(cfg: ModelConfig, mixer: str) -> int:
    d = cfg.d_model
    if mixer == "attention":
        return d * cfg.head_dim * (2 * cfg.n_head + 2 * cfg.kv_heads)  # q, o, and the k, v groups
    if mixer == "mamba":
        di, r, n = cfg.d_inner, cfg.mamba_dt_rank, cfg.d_state
        return d * 2 * di + di * (r + 2 * n) + r * di + di * d  # in_proj, x_proj, dt_proj, out_proj
    if mixer in ("lstm", "gru"):
        h, gates = cfg.rnn_width, 4 if mixer == "lstm" else 3
        return d * gates * h + h * gates * h + h * d  # input, recurrent, out_proj
    if mixer == "conv":
        return cfg.conv_width * d * 2 * d + d * d  # the convolution's kernel, out_proj
    raise LmjaxError(f"unknown mixer {mixer!r}")


def _mlp_matrices(cfg: ModelConfig) -> int:
    return cfg.d_model * cfg.mlp_dim * (3 if cfg.mlp == "swiglu" else 2)


def _block_matrices(cfg: ModelConfig, mixer: str = "attention") -> int:
    return _mixer_matrices(cfg, mixer) + (_mlp_matrices(cfg) if cfg.has_mlp(mixer) else 0)


def matmul_params(cfg: ModelConfig) -> int:
    """N of the FLOP count: block weight matrices plus the output head."""
    return sum(_block_matrices(cfg, m) for m in cfg.layer_mixers) + cfg.d_model * cfg.vocab_size


def mixer_flops(cfg: ModelConfig, mixer: str, seq_len: int) -> float:
    """Forward FLOPs per token of a mixer beyond its matmul parameters (see the module doc)."""
    if mixer == "attention":
        return 4.0 * cfg.n_head * cfg.head_dim * seq_len
    if mixer == "mamba":
        return 2.0 * cfg.d_conv * cfg.d_inner + 8.0 * cfg.d_inner * cfg.d_state
    return 0.0


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token."""
    return 6.0 * matmul_params(cfg) + 3.0 * sum(mixer_flops(cfg, m, seq_len) for m in cfg.layer_mixers)


def _mixer_params(cfg: ModelConfig, mixer: str) -> int:
    d, bias = cfg.d_model, cfg.use_bias
    if mixer == "attention":
        q_out, kv_out = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        return _mixer_matrices(cfg, mixer) + bias * (q_out + 2 * kv_out + d)
    if mixer == "mamba":
        di = cfg.d_inner
        return _mixer_matrices(cfg, mixer) + cfg.d_conv * di + di + di + di * cfg.d_state + di  # conv, dt bias, A_log, D
    if mixer in ("lstm", "gru"):
        h, gates = cfg.rnn_width, 4 if mixer == "lstm" else 3
        hidden_bias = gates * h if mixer == "gru" else 0
        return _mixer_matrices(cfg, mixer) + gates * h + hidden_bias + bias * d
    return _mixer_matrices(cfg, mixer) + 2 * d + bias * d  # conv: its bias always, out_proj's if use_bias


def param_count(cfg: ModelConfig) -> int:
    """Every parameter of the model, from the config alone (equals count_params of its init)."""
    d = cfg.d_model
    norm = d * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)
    mlp = _mlp_matrices(cfg) + cfg.use_bias * (cfg.mlp_dim * (2 if cfg.mlp == "swiglu" else 1) + d)
    total = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2) + norm
    total += cfg.max_len * d if cfg.pos_embedding == "learned" else 0
    for mixer in cfg.layer_mixers:
        total += norm + _mixer_params(cfg, mixer) + ((norm + mlp) if cfg.has_mlp(mixer) else 0)
    return total


def count_params(params) -> int:
    """Total number of parameters in a parameter tree."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def size_report(cfg, seq_len: int) -> dict:
    """Parameter counts under the conventions that change fitted exponents, counted on the
    real parameter tree (shapes only, nothing allocated), and FLOPs per token."""
    model = Transformer(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 1), "int32"))["params"])
    total = count_params(shapes)
    tables = {name: count_params(shapes[name]) for name in ("embed", "pos_embed", "unembed") if name in shapes}
    head = cfg.d_model * cfg.vocab_size
    non_embedding = total - sum(tables.values())
    return {
        "params_total": total,  # Chinchilla's N: everything
        "params_non_embedding": non_embedding,  # Kaplan's N: no token/position tables, no head
        "params_non_embedding_with_head": non_embedding + head,  # Porian et al.'s N: the head counts
        "params_matmul": matmul_params(cfg),  # the N in 6N below
        "flops_per_token_palm": flops_per_token(cfg, seq_len),  # 6 N_matmul + 12 L d T
        "flops_per_token_6n_kaplan": 6.0 * non_embedding,
    }
