"""Building blocks: norms, the MLP, rotary embeddings, parameter helpers.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`,
`vocab`, `length`); `lmjax.sharding` maps them onto a device mesh. Model code never
mentions devices.
"""
from __future__ import annotations

import math
from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import ModelConfig
from lmjax.model.hooks import Hooks, hook
from lmjax.model.normalize import affine, centered, divide, divisor, normalize


def param(module: nn.Module, name: str, init, shape, axes, dtype):
    """A parameter annotated with logical axis names for sharding.

    When the parameter exists (every apply), it is returned after comparing its shape with
    `shape`: `Module.param` would instead trace the initializer abstractly to learn that
    shape, which was half of the time spent tracing a model (GPT-2 small: ~3 ms per
    parameter, every time a program is traced)."""
    if module.has_variable("params", name):
        value = nn.meta.unbox(module.get_variable("params", name))
        if tuple(value.shape) != tuple(shape):
            raise flax.errors.ScopeParamShapeError(name, "/".join(module.path), tuple(value.shape), tuple(shape))
        return value
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def normal(std: float):
    return nn.initializers.normal(stddev=std)


def uniform(bound: float):
    """U(-bound, bound): PyTorch's default for Linear and Conv1d is bound = fan_in ** -0.5,
    which the Mamba and LSTM references keep."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Norm(nn.Module):
    """LayerNorm or RMSNorm, statistics in float32, with TransformerLens's hook points.

    hook_scale is the divisor sqrt(var + eps) [batch, pos, 1]; hook_normalized the output
    after the learned scale (and bias).
    """

    cfg: ModelConfig
    name_prefix: str  # e.g. "blocks.0.ln1" or "ln_final"

    @nn.compact
    def __call__(self, x, hooks: Hooks | None = None, layer_index=None):
        cfg = self.cfg
        d = x.shape[-1]
        center = cfg.norm == "layernorm"
        weight = param(self, "scale", nn.initializers.ones, (d,), ("embed",), cfg.params_dtype)
        bias = None
        if center and cfg.use_bias:
            bias = param(self, "bias", nn.initializers.zeros, (d,), ("embed",), cfg.params_dtype)
        x32 = x.astype(jnp.float32)
        scale_point = f"{self.name_prefix}.hook_scale"
        if hooks is None or not hooks.touches(scale_point):
            y = normalize(x32, weight, bias, cfg.norm_eps, center)  # hand-written backward
        else:
            xc = centered(x32, center)
            scale = hook(self, hooks, scale_point, divisor(xc, cfg.norm_eps), layer_index)
            y = affine(divide(xc, scale), weight, bias)
        y = y.astype(cfg.compute_dtype)
        return hook(self, hooks, f"{self.name_prefix}.hook_normalized", y, layer_index)


class Dense(nn.Module):
    """Contract the last `n_in` axes of x with a kernel of shape [*in, *out_shape] (+ bias);
    [*out_shape, *in] when cfg.kernel_layout is "out_in"."""

    cfg: ModelConfig
    out_shape: tuple[int, ...]
    axes: tuple[str, ...]  # logical names of (*in, *out)
    std: float
    use_bias: bool
    n_in: int = 1
    init: Callable | None = None  # the kernel's initializer; None = normal(std)
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        in_shape = x.shape[x.ndim - self.n_in :]
        n_in, n_out = math.prod(in_shape), math.prod(self.out_shape)
        init = self.init or normal(self.std)
        # One 2-D matmul: contracting 3-D activations directly makes XLA write transposed
        # copies of them in the backward pass (measured: 14-34% of a training step on CPU).
        if cfg.kernel_layout == "out_in":
            axes = (*self.axes[self.n_in :], *self.axes[: self.n_in])
            kernel = param(self, "kernel", init, (*self.out_shape, *in_shape), axes, cfg.params_dtype)
            kernel = kernel.astype(cfg.compute_dtype).reshape(n_out, n_in)
            flat = jax.lax.dot_general(x.reshape(-1, n_in), kernel, (((1,), (1,)), ((), ())))
        else:
            kernel = param(self, "kernel", init, (*in_shape, *self.out_shape), self.axes, cfg.params_dtype)
            flat = x.reshape(-1, n_in) @ kernel.astype(cfg.compute_dtype).reshape(n_in, n_out)
        y = flat.reshape(*x.shape[: x.ndim - self.n_in], *self.out_shape)
        if self.use_bias:
            bias = param(self, "bias", self.bias_init, self.out_shape, self.axes[self.n_in :], cfg.params_dtype)
            y = y + bias.astype(cfg.compute_dtype)
        return y


class MLP(nn.Module):
    """Position-wise MLP: GELU / ReLU (fc_in -> act -> fc_out) or SwiGLU (silu(gate) * up)."""

    cfg: ModelConfig
    name_prefix: str  # "blocks.{l}.mlp"

    @nn.compact
    def __call__(self, x, hooks=None, layer_index=None):
        cfg = self.cfg
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)  # GPT-2: scale residual writes
        up = Dense(cfg, (cfg.mlp_dim,), ("embed", "mlp"), cfg.init_std, cfg.use_bias, name="fc_in")
        pre = hook(self, hooks, f"{self.name_prefix}.hook_pre", up(x), layer_index)
        if cfg.mlp == "swiglu":
            gate = Dense(cfg, (cfg.mlp_dim,), ("embed", "mlp"), cfg.init_std, cfg.use_bias, name="fc_gate")
            gate = hook(self, hooks, f"{self.name_prefix}.hook_pre_gate", gate(x), layer_index)
            post = nn.silu(gate) * pre
        elif cfg.mlp == "relu":
            post = nn.relu(pre)
        else:
            post = nn.gelu(pre, approximate=cfg.mlp == "gelu_tanh")
        post = hook(self, hooks, f"{self.name_prefix}.hook_post", post, layer_index)
        return Dense(cfg, (cfg.d_model,), ("mlp", "embed"), out_std, cfg.use_bias, name="fc_out")(post)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, halves convention (as Llama in Hugging Face).

    x: [batch, pos, heads, d_head]; positions: [batch, pos].
    """
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
