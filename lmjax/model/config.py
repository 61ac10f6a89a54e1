"""The model's hyperparameters as a frozen dataclass (hashable, so Flax modules can hold it).

The sequence mixer of each layer is a choice: `mixer` for every layer, or `layer_pattern`
(one letter per layer, repeated to n_layer) for hybrids, e.g. "MMMA" = three Mamba layers
then one attention layer. Letters: A attention, M mamba, L lstm, G gru, C conv.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from lmjax.errors import LmjaxError

POS_EMBEDDINGS = ("learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "relu", "swiglu")
REMATS = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")
KERNEL_LAYOUTS = ("in_out", "out_in")
MIXER_LETTERS = {"A": "attention", "M": "mamba", "L": "lstm", "G": "gru", "C": "conv"}
MIXERS = tuple(MIXER_LETTERS.values())
SSM_SCANS = ("auto", "associative", "chunked", "sequential")


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
    # Dense kernels stored [*in, *out] ("in_out"), or [*out, *in] ("out_in"), which XLA:CPU
    # reads faster in matrix-vector products: the sampler decodes a single row with a copy in
    # that layout (lmjax.model.layout). Checkpoints and the interp tools use "in_out".
    kernel_layout: str = "in_out"
    # -- Sequence mixers (lmjax/model/mixers.py).
    mixer: str = "attention"  # every layer's mixer: attention | mamba | lstm | gru | conv
    layer_pattern: str = ""  # per-layer letters (A M L G C) repeated to n_layer, e.g. "MMMA"; "" = `mixer`
    mamba_mlp: bool = True  # Mamba blocks have an MLP; False = the paper's block (norm + mixer only)
    d_state: int = 16  # Mamba: SSM state size per channel
    d_conv: int = 4  # Mamba: causal depthwise conv width
    expand: int = 2  # Mamba: d_inner = expand * d_model
    dt_rank: int | None = None  # Mamba: rank of the delta projection; None = ceil(d_model / 16)
    ssm_scan: str = "auto"  # Mamba training scan: associative | chunked | sequential | auto (per backend)
    ssm_chunk: int = 0  # positions per chunk (chunked / sequential scans); 0 = 128 / 16
    rnn_hidden: int | None = None  # LSTM / GRU state width; None = d_model
    conv_width: int = 4  # gated conv mixer: kernel width (positions seen per layer)

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
    def layer_mixers(self) -> tuple[str, ...]:
        """The mixer of each layer (attention, mamba, lstm, gru or conv)."""
        if not self.layer_pattern:
            return (self.mixer,) * self.n_layer
        pattern = self.layer_pattern * max(1, self.n_layer // max(1, len(self.layer_pattern)))
        return tuple(MIXER_LETTERS.get(c, c) for c in pattern[: self.n_layer])

    def has_mlp(self, mixer: str) -> bool:
        return mixer != "mamba" or self.mamba_mlp

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def mamba_dt_rank(self) -> int:
        return self.dt_rank or -(-self.d_model // 16)

    @property
    def rnn_width(self) -> int:
        return self.rnn_hidden or self.d_model

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
            raise LmjaxError(f"model: unknown keys {unknown}; allowed: {sorted(fields)}")
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
        out += self._mixer_problems()
        attention = "attention" in self.layer_mixers
        check(self.n_kv_head is None or self.n_kv_head > 0, "n_kv_head", "must be positive")
        check(
            not attention or self.d_head is not None or self.d_model % self.n_head == 0,
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
            self.pos_embedding != "rope" or not attention or self.head_dim % 2 == 0,
            "d_head",
            f"RoPE needs an even head dimension, got {self.head_dim}",
        )
        check(self.norm in NORMS, "norm", f"{self.norm!r} not in {NORMS}")
        check(self.mlp in MLPS, "mlp", f"{self.mlp!r} not in {MLPS}")
        check(self.remat in REMATS, "remat", f"{self.remat!r} not in {REMATS}")
        check(self.kernel_layout in KERNEL_LAYOUTS, "kernel_layout", f"{self.kernel_layout!r} not in {KERNEL_LAYOUTS}")
        check(self.dtype in DTYPES, "dtype", f"{self.dtype!r} not in {DTYPES}")
        check(self.param_dtype in DTYPES, "param_dtype", f"{self.param_dtype!r} not in {DTYPES}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        return out

    def _mixer_problems(self) -> list[str]:
        out = []
        letters = "".join(MIXER_LETTERS)
        if self.mixer not in MIXERS:
            out.append(f"model.mixer: {self.mixer!r} not in {MIXERS}")
        bad = sorted(set(self.layer_pattern) - set(letters))
        if bad:
            out.append(f"model.layer_pattern: {self.layer_pattern!r} has letters {bad}; allowed: "
                       + ", ".join(f"{k} ({v})" for k, v in MIXER_LETTERS.items()))
        elif self.layer_pattern and self.n_layer % len(self.layer_pattern):
            out.append(f"model.layer_pattern: {self.layer_pattern!r} ({len(self.layer_pattern)} layers) does not "
                       f"repeat evenly to n_layer={self.n_layer}; give n_layer letters or a divisor of n_layer")
        if out:
            return out
        if self.scan_layers and len(set(self.layer_mixers)) > 1:
            out.append(f"model.scan_layers: a scanned stack needs identical blocks, but layer_pattern "
                       f"{self.layer_pattern!r} mixes {sorted(set(self.layer_mixers))}; set scan_layers=False")
        for name in ("d_state", "d_conv", "expand", "conv_width"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                out.append(f"model.{name}: must be a positive int, got {value!r}")
        if not (isinstance(self.ssm_chunk, int) and self.ssm_chunk >= 0):
            out.append(f"model.ssm_chunk: must be an int >= 0 (0 = the scan's default), got {self.ssm_chunk!r}")
        for name in ("dt_rank", "rnn_hidden"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value > 0):
                out.append(f"model.{name}: must be a positive int or None (derived), got {value!r}")
        if self.ssm_scan not in SSM_SCANS:
            out.append(f"model.ssm_scan: {self.ssm_scan!r} not in {SSM_SCANS}")
        return out
