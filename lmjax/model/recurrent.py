"""LSTM and GRU mixers: the classical recurrent networks, as a block's sequence mixer.

    LSTM (Hochreiter & Schmidhuber 1997):    i, f, g, o = W x_t + b + U h_{t-1}
        c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g);  h_t = sigmoid(o) tanh(c_t)
    GRU (Cho et al. 2014; PyTorch's form):   r, z, n_x = W x_t + b;  r_h, z_h, n_h = U h_{t-1} + b_h
        r = sigmoid(r + r_h);  z = sigmoid(z + z_h);  n = tanh(n_x + r n_h)
        h_t = (1 - z) n + z h_{t-1}
    out = out_proj(h)                        rnn_hidden -> d_model

Training: the input projections W x_t of all positions are one matmul; only the small
recurrent product U h_{t-1} runs step by step, in a `lax.scan` over positions (there is no
parallel form: the gates depend on h_{t-1} nonlinearly). Decoding runs the same cell once
per token, carrying (h, c) or h: O(1) per token. The recurrence runs in float32. In packed
rows (segment_ids) the carry restarts from zeros at each document's first token.

Init as PyTorch's nn.LSTM / nn.GRU: every weight and bias U(-1/sqrt(H), 1/sqrt(H)), H the
state width; the LSTM's forget-gate bias is set to 1 (Jozefowicz et al. 2015).

Hook points (under blocks.{l}.mixer.): hook_h [b, t, H] (the outputs h_t; a patch there
changes what reaches out_proj, not the recurrence), and for the LSTM hook_c [b, t, H].

The gate factors are hook points too, each [b, t, H]: the LSTM's hook_input_gate sigmoid(i),
hook_forget_gate sigmoid(f), hook_output_gate sigmoid(o), hook_candidate_ratio tanh(g) / g and
hook_cell_ratio tanh(c) / c; the GRU's hook_reset_gate r, hook_update_gate z and
hook_candidate_ratio tanh(a) / a (a = n_x + r n_h). Written with them the cell is
    LSTM: c_t = F c_{t-1} + I R_g g_t;  h_t = O R_c c_t      GRU: h_t = (1 - z) R a_t + z h_{t-1}
so with the factors held at fixed values the recurrence is affine in its input (what an
attribution graph freezes, lmjax.graph). Only when one of them is cached or changed does the
layer compute them (from the scan's states) and run the recurrence a second time in this
factored form, from the hooked factors; otherwise the plain cell runs alone.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import ModelConfig
from lmjax.model.hooks import hook
from lmjax.model.layers import Dense, param, uniform
from lmjax.model.mixer_parts import valid_mask
from lmjax.model.segments import segment_starts


def lstm_cell(carry, gates_x, u):
    """carry (h, c) [b, H]; gates_x [b, 4, H] (W x + b); u [H, 4, H] -> (h, c)."""
    h, c = carry
    g = gates_x + jnp.einsum("bh,hgk->bgk", h, u)
    c = nn.sigmoid(g[:, 1]) * c + nn.sigmoid(g[:, 0]) * jnp.tanh(g[:, 2])
    return nn.sigmoid(g[:, 3]) * jnp.tanh(c), c


def gru_cell(h, gates_x, u, b_h):
    """h [b, H]; gates_x [b, 3, H] (W x + b); u [H, 3, H]; b_h [3, H] -> h."""
    gh = jnp.einsum("bh,hgk->bgk", h, u) + b_h
    r = nn.sigmoid(gates_x[:, 0] + gh[:, 0])
    z = nn.sigmoid(gates_x[:, 1] + gh[:, 1])
    n = jnp.tanh(gates_x[:, 2] + r * gh[:, 2])
    return (1 - z) * n + z * h


def tanh_ratio(a):
    """tanh(a) / a, finite at 0 (where it is 1 - a^2 / 3 to float32 precision)."""
    small = jnp.abs(a) < 1e-4
    return jnp.where(small, 1.0 - a * a / 3.0, jnp.tanh(a) / jnp.where(small, 1.0, a))


def previous(first, seq, reset=None):
    """The carries before each position: [b, t, ...] from the initial carry and the scan's;
    zeros where `reset` [b, t] is True (a document's first token)."""
    prev = jnp.concatenate([first[:, None], seq[:, :-1]], 1)
    return prev if reset is None else jnp.where(reset[:, :, None], 0.0, prev)


def lstm_factors(carry, gates_x, u, seq, reset=None):
    """The gate factors at every position (see the module docstring), from the scan's states."""
    h_prev = previous(carry[0], seq[0], reset)
    g = gates_x + jnp.einsum("bth,hgk->btgk", h_prev, u)
    return {"hook_input_gate": nn.sigmoid(g[:, :, 0]), "hook_forget_gate": nn.sigmoid(g[:, :, 1]),
            "hook_output_gate": nn.sigmoid(g[:, :, 3]), "hook_candidate_ratio": tanh_ratio(g[:, :, 2]),
            "hook_cell_ratio": tanh_ratio(seq[1])}


def lstm_factored_cell(carry, gates_x, u, factors):
    """The LSTM cell from given factors [b, 5, H] (input, forget, output, candidate, cell)."""
    h, c = carry
    i, f, o, r_g, r_c = (factors[:, j] for j in range(5))
    g = gates_x[:, 2] + h @ u[:, 2]
    c = f * c + i * r_g * g
    return o * r_c * c, c


def gru_factors(carry, gates_x, u, b_h, seq, reset=None):
    h_prev = previous(carry, seq, reset)
    gh = jnp.einsum("bth,hgk->btgk", h_prev, u) + b_h
    r = nn.sigmoid(gates_x[:, :, 0] + gh[:, :, 0])
    return {"hook_reset_gate": r, "hook_update_gate": nn.sigmoid(gates_x[:, :, 1] + gh[:, :, 1]),
            "hook_candidate_ratio": tanh_ratio(gates_x[:, :, 2] + r * gh[:, :, 2])}


def gru_factored_cell(h, gates_x, u, b_h, factors):
    """The GRU cell from given factors [b, 3, H] (reset, update, candidate ratio)."""
    r, z, ratio = factors[:, 0], factors[:, 1], factors[:, 2]
    a = gates_x[:, 2] + r * (h @ u[:, 2] + b_h[2])
    return (1 - z) * ratio * a + z * h


def run_cells(step, carry, gates_x, valid=None, unroll: int = 8, reset=None):
    """Scan `step(carry, gates_x_t) -> carry` over positions; gates_x [b, t, ...].
    Positions where `valid` [b, t] is False (padding) leave the carry unchanged; where
    `reset` [b, t] is True (a document's first token) the step starts from a zero carry.
    -> (last carry, carries at every position, each [b, t, ...])."""

    def body(carry, xs):
        g, v, r = xs
        if r is not None:
            carry = jax.tree.map(lambda a: jnp.where(r[:, None], 0.0, a), carry)
        new = step(carry, g)
        if v is not None:
            new = jax.tree.map(lambda a, b: jnp.where(v[:, None], a, b), new, carry)
        return new, new

    xs = (gates_x.swapaxes(0, 1), None if valid is None else valid.T, None if reset is None else reset.T)
    last, seq = jax.lax.scan(body, carry, xs, unroll=min(unroll, gates_x.shape[1]))
    return last, jax.tree.map(lambda a: a.swapaxes(0, 1), seq)


class _Recurrent(nn.Module):
    """The shared frame: input projection, the scan or one step, hooks, out_proj."""

    cfg: ModelConfig
    name_prefix: str  # "blocks.{l}.mixer"
    n_gates = 0
    factor_names = ()

    @staticmethod
    def hook_suffixes(cfg: ModelConfig) -> list[str]:
        return ["hook_h"]

    def cell(self, carry, gates_x, u, extra):
        raise NotImplementedError

    def initial(self, batch: int):
        raise NotImplementedError

    @nn.compact
    def __call__(self, x, hooks=None, layer_index=None, cache=None, lengths=None, segment_ids=None):
        cfg = self.cfg
        H, d = cfg.rnn_width, cfg.d_model
        bound = H ** -0.5
        proj = Dense(cfg, (self.n_gates, H), ("embed", None, "mlp"), 0.0, True, init=uniform(bound),
                     bias_init=self.gate_bias_init, name="input")
        gates_x = proj(x).astype(jnp.float32)
        u = param(self, "recurrent", uniform(bound), (H, self.n_gates, H), (None, None, "mlp"), cfg.params_dtype)
        extra = self.extra_params(bound)
        step = lambda carry, g: self.cell(carry, g, u.astype(jnp.float32), extra)
        carry = self.initial(x.shape[0]) if cache is None else self.from_cache(cache)
        valid = valid_mask(lengths, x.shape[1])
        reset = None if segment_ids is None else segment_starts(segment_ids)
        last, seq = run_cells(step, carry, gates_x, valid, reset=reset)
        if hooks is not None and any(hooks.touches(f"{self.name_prefix}.{n}") for n in self.factor_names):
            u32 = u.astype(jnp.float32)
            factors = self.factors(carry, gates_x, u32, extra, seq, reset)
            factors = jnp.stack([self.point(hooks, layer_index, n, factors[n]) for n in self.factor_names], 2)
            factored = lambda c, g: self.factored_cell(c, g[:, :self.n_gates], u32, extra, g[:, self.n_gates:])
            last, seq = run_cells(factored, carry, jnp.concatenate([gates_x, factors], 2), valid, reset=reset)
        h = self.hook_sequence(seq, hooks, layer_index)
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        out = Dense(cfg, (d,), ("mlp", "embed"), out_std, cfg.use_bias, name="out_proj")(h.astype(cfg.compute_dtype))
        return out if cache is None else (out, self.to_cache(last))

    def point(self, hooks, layer_index, name, value):
        return hook(self, hooks, f"{self.name_prefix}.{name}", value, layer_index)


class LSTM(_Recurrent):
    n_gates = 4
    factor_names = ("hook_input_gate", "hook_forget_gate", "hook_output_gate", "hook_candidate_ratio",
                    "hook_cell_ratio")

    @staticmethod
    def hook_suffixes(cfg: ModelConfig) -> list[str]:
        return list(LSTM.factor_names) + ["hook_c", "hook_h"]

    @staticmethod
    def init_state(cfg: ModelConfig, batch: int, dtype) -> dict:
        zeros = jnp.zeros((batch, cfg.rnn_width), jnp.float32)
        return {"h": zeros, "c": zeros}

    @staticmethod
    def gate_bias_init(key, shape, dtype=jnp.float32):
        bias = uniform(shape[-1] ** -0.5)(key, shape, dtype)
        return bias.at[1].set(1.0)  # forget gate: remember by default

    def extra_params(self, bound):
        return None

    def cell(self, carry, gates_x, u, extra):
        return lstm_cell(carry, gates_x, u)

    def factors(self, carry, gates_x, u, extra, seq, reset):
        return lstm_factors(carry, gates_x, u, seq, reset)

    def factored_cell(self, carry, gates_x, u, extra, factors):
        return lstm_factored_cell(carry, gates_x, u, factors)

    def initial(self, batch):
        zeros = jnp.zeros((batch, self.cfg.rnn_width), jnp.float32)
        return zeros, zeros

    def from_cache(self, cache):
        return cache["h"], cache["c"]

    def to_cache(self, last):
        return {"h": last[0], "c": last[1]}

    def hook_sequence(self, seq, hooks, layer_index):
        h, c = seq
        self.point(hooks, layer_index, "hook_c", c)
        return self.point(hooks, layer_index, "hook_h", h)


class GRU(_Recurrent):
    n_gates = 3
    factor_names = ("hook_reset_gate", "hook_update_gate", "hook_candidate_ratio")

    @staticmethod
    def hook_suffixes(cfg: ModelConfig) -> list[str]:
        return list(GRU.factor_names) + ["hook_h"]

    @staticmethod
    def init_state(cfg: ModelConfig, batch: int, dtype) -> dict:
        return {"h": jnp.zeros((batch, cfg.rnn_width), jnp.float32)}

    @staticmethod
    def gate_bias_init(key, shape, dtype=jnp.float32):
        return uniform(shape[-1] ** -0.5)(key, shape, dtype)

    def extra_params(self, bound):
        H = self.cfg.rnn_width
        # A submodule, so the leaf is called "bias" (no weight decay, scanned or not).
        return HiddenBias((3, H), bound, self.cfg, name="hidden")().astype(jnp.float32)

    def cell(self, h, gates_x, u, b_h):
        return gru_cell(h, gates_x, u, b_h)

    def factors(self, carry, gates_x, u, b_h, seq, reset):
        return gru_factors(carry, gates_x, u, b_h, seq, reset)

    def factored_cell(self, h, gates_x, u, b_h, factors):
        return gru_factored_cell(h, gates_x, u, b_h, factors)

    def initial(self, batch):
        return jnp.zeros((batch, self.cfg.rnn_width), jnp.float32)

    def from_cache(self, cache):
        return cache["h"]

    def to_cache(self, last):
        return {"h": last}

    def hook_sequence(self, seq, hooks, layer_index):
        return self.point(hooks, layer_index, "hook_h", seq)


class HiddenBias(nn.Module):
    """The GRU's recurrent-side bias b_h (it sits inside r * (U h + b_h), so it is not
    the same as the input-side bias)."""

    shape: tuple[int, ...]
    bound: float
    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        return param(self, "bias", uniform(self.bound), self.shape, (None, "mlp"), self.cfg.params_dtype)
