"""The model's hyperparameters as a frozen dataclass (hashable, so Flax modules can hold it)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

POS_EMBEDDINGS = ("learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "relu", "swiglu")
REMATS = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer. `None` sizes are derived (see the properties)."""

    vocab_size: int
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention; None = n_head (plain MHA)
    d_head: int | None = None  # None = d_model // n_head
    d_mlp: int | None = None  # None = 4 * d_model
    max_len: int = 256  # context length; learned position tables have this many rows
    pos_embedding: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    use_bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False  # one compiled block scanned over layers: fast compiles when deep
    remat: str = "none"  # recompute activations in the backward pass: none | full | dots

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_head

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp or 4 * self.d_model

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"model: unknown keys {unknown}; allowed: {sorted(fields)}")
        return cls(**dict(d))

    def problems(self) -> list[str]:
        """Every inconsistency in this config, as 'model.field: what is wrong' lines."""
        out = []

        def check(ok, field, msg):
            if not ok:
                out.append(f"model.{field}: {msg}")

        for name in ("vocab_size", "n_layer", "d_model", "n_head", "max_len"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, name, f"must be a positive int, got {value!r}")
        if out:
            return out
        check(self.n_kv_head is None or self.n_kv_head > 0, "n_kv_head", "must be positive")
        check(
            self.d_head is not None or self.d_model % self.n_head == 0,
            "d_model",
            f"{self.d_model} is not divisible by n_head={self.n_head} (or set d_head)",
        )
        check(
            self.n_head % self.kv_heads == 0,
            "n_head",
            f"{self.n_head} is not divisible by n_kv_head={self.kv_heads}",
        )
        check(self.pos_embedding in POS_EMBEDDINGS, "pos_embedding", f"{self.pos_embedding!r} not in {POS_EMBEDDINGS}")
        check(
            self.pos_embedding != "rope" or self.head_dim % 2 == 0,
            "d_head",
            f"RoPE needs an even head dimension, got {self.head_dim}",
        )
        check(self.norm in NORMS, "norm", f"{self.norm!r} not in {NORMS}")
        check(self.mlp in MLPS, "mlp", f"{self.mlp!r} not in {MLPS}")
        check(self.remat in REMATS, "remat", f"{self.remat!r} not in {REMATS}")
        check(self.dtype in DTYPES, "dtype", f"{self.dtype!r} not in {DTYPES}")
        check(self.param_dtype in DTYPES, "param_dtype", f"{self.param_dtype!r} not in {DTYPES}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        return out
