"""The local replacement model of one prompt: the model made linear in its node vectors.

For a prompt, every MLP output is replaced by what a transcoder (or a cross-layer
transcoder over all layers) writes there, plus an error vector (true output minus the
reconstruction) that makes the replacement reproduce the model. Attention patterns and
normalisation scales are then frozen at their values on this prompt: each hook_pattern
and hook_scale is replaced by its cached value. The other mixers are frozen the same way
(FROZEN_MIXER_POINTS): a Mamba block's SiLU ratio, step sizes delta, B, C and gate, which
leaves its scan linear in its input; an LSTM's or GRU's gate factors (its sigmoid gates and
tanh ratios, lmjax.model.recurrent), which leave its recurrence linear; a gated
convolution's gate. What remains between the residual stream's inputs and the logits
(embeddings, frozen mixers, frozen norms, residual additions, the unembedding) is affine,
so

    linear(u_embed, u_mlp) -> (the transcoders' inputs [P, L, d_in], logits [P, vocab])

with u_embed [P, d] = what enters at blocks.0.hook_resid_pre (token + position
embedding), u_mlp [L, P, d] = what each layer writes at hook_mlp_out besides a transcoder's
linear skip (features, decoder bias, error). A skip (x W_skip, x the transcoder's input) is
part of the replacement: `linear` adds it to the layer's output from the input of the same
forward pass, so effects through it are edges like any other linear path. At the prompt's
own u it reproduces the model; its vector-Jacobian products are the attribution graph's
edges.

The patterns are frozen by value (not by stop_gradient), so `linear` is affine for any u,
not only at the prompt: injecting a vector and running it forward is the exactness check.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.interp import compiling
from lmjax.model import hook_names
from lmjax.model.recurrent import GRU, LSTM
from lmjax.sae.architectures import Dictionary
from lmjax.sae.crosslayer import CrossLayerTranscoder

EMBED_HOOK = "blocks.0.hook_resid_pre"
# What makes each mixer nonlinear in its input on one prompt, frozen at its value there:
# attention's pattern; Mamba's SiLU ratio, step sizes, B, C and gate (the scan is then
# linear in its input x, and so is the block); the recurrent cells' gate factors; the
# convolution's gate before its sigmoid (value * sigmoid(frozen gate) is linear in value).
FROZEN_MIXER_POINTS = {
    "attention": ("attn.hook_pattern",),
    "mamba": ("mixer.hook_silu_ratio", "mixer.hook_delta", "mixer.hook_B", "mixer.hook_C", "mixer.hook_gate"),
    "lstm": tuple(f"mixer.{n}" for n in LSTM.factor_names),
    "gru": tuple(f"mixer.{n}" for n in GRU.factor_names),
    "conv": ("mixer.hook_gate",),
}


def _replace(_activation, frozen):
    return frozen


def _keep(seen, layer, x, _payload):
    seen[layer] = x
    return x


def _add_skip(seen, layer, _y, payload):
    u, w = payload
    return u + seen[layer] @ w


# -- The transcoders, one interface for per-layer transcoders and a cross-layer one -------------

@dataclasses.dataclass(frozen=True, eq=False)
class Transcoders:
    """The MLP replacement: L layers of features, each read at hooks_in[l] and written, in
    model units, to hooks_out[t] for t in writes(l) (a per-layer transcoder: t = l; a
    cross-layer transcoder: t = l..L-1).

    From per-layer transcoders: `Transcoders.of(dictionaries, params)`; from a CLT:
    `Transcoders.of(clt, params)`."""

    kind: str  # "per_layer" or "cross_layer"
    dictionaries: Any  # a tuple of Dictionary (per layer) or one CrossLayerTranscoder
    params: Any  # a tuple of their params, or the CLT's params
    n_layers: int
    width: int
    hooks_in: tuple
    hooks_out: tuple

    @classmethod
    def of(cls, dictionaries, params) -> "Transcoders":
        if isinstance(dictionaries, CrossLayerTranscoder):
            clt = dictionaries
            return cls("cross_layer", clt, params, clt.n_layers, clt.width, clt.hooks_in, clt.hooks_out)
        dictionaries, params = tuple(dictionaries), tuple(params)
        if not dictionaries or len(dictionaries) != len(params):
            raise LmjaxError(f"give one params per transcoder; got {len(dictionaries)} transcoders and "
                             f"{len(params)} params")
        for d in dictionaries:
            if not isinstance(d, Dictionary) or not d.is_transcoder:
                raise LmjaxError(f"an attribution graph needs transcoders (hook_in != hook_out); got "
                                 f"{getattr(d, 'hook_in', d)!r} -> {getattr(d, 'hook_out', '')!r}")
        widths = {d.width for d in dictionaries}
        if len(widths) != 1:
            raise LmjaxError(f"the transcoders have different widths {sorted(widths)}; the graph needs one width")
        return cls("per_layer", dictionaries, params, len(dictionaries), widths.pop(),
                   tuple(d.hook_in for d in dictionaries), tuple(d.hook_out for d in dictionaries))

    @property
    def structure(self) -> tuple:
        """Everything but the params, hashable by value: a compiled program keyed on it
        serves another Transcoders of the same dictionaries (the params are arguments)."""
        return self.kind, self.dictionaries, self.n_layers, self.width, self.hooks_in, self.hooks_out

    @classmethod
    def of_structure(cls, structure: tuple, params) -> "Transcoders":
        kind, dictionaries, n_layers, width, hooks_in, hooks_out = structure
        return cls(kind, dictionaries, params, n_layers, width, hooks_in, hooks_out)

    def check_model(self, model) -> None:
        """One-line errors for a model the transcoders do not replace completely."""
        cfg = model.cfg
        mlp_layers = [l for l, m in enumerate(cfg.layer_mixers) if cfg.has_mlp(m)]
        want = tuple(f"blocks.{l}.hook_mlp_out" for l in mlp_layers)
        if self.hooks_out != want:
            raise LmjaxError(f"the transcoders write to {list(self.hooks_out)}; the replacement model needs one "
                             f"per MLP, in order: {list(want)}")
        model.check_hook_names(self.hooks_in)

    def encode(self, x):
        """x [P, L, d_in] raw -> (pre-activations, activations) [P, L, width]."""
        if self.kind == "cross_layer":
            clt = self.dictionaries
            pre = clt.pre_acts(self.params, clt.scale_inputs(x))
            return pre, clt.activate(self.params, pre)[0]
        pres, acts = [], []
        for l, (d, p) in enumerate(zip(self.dictionaries, self.params)):
            pre = d.pre_acts(p, x[:, l] * d.input_scale)
            pres.append(pre)
            acts.append(d.activate(p, pre)[0])
        return jnp.stack(pres, 1), jnp.stack(acts, 1)

    def encoder_columns(self, layer, index):
        """[n, d_in]: d pre-activation / d raw input of features (layer[i], index[i])."""
        layer, index = np.asarray(layer), np.asarray(index)
        if self.kind == "cross_layer":
            clt = self.dictionaries
            w = np.asarray(self.params["W_enc"])[layer, :, index]  # [n, d_in]
            return w * np.asarray(clt.input_scales, np.float32)[layer][:, None]
        out = np.empty((len(layer), self.dictionaries[0].d_in), np.float32)
        for l in np.unique(layer):  # only the layers asked for
            rows = np.flatnonzero(layer == l)
            d, p = self.dictionaries[l], self.params[l]
            out[rows] = np.asarray(p["W_enc"])[:, index[rows]].T * d.input_scale
        return out

    def decoder_rows(self, layer, index):
        """[n, L, d_out]: what features (layer[i], index[i]) write per unit of activation to
        each layer's MLP output, in model units (zero where they do not write)."""
        layer, index = np.asarray(layer), np.asarray(index)
        n = len(layer)
        if self.kind == "cross_layer":
            clt = self.dictionaries
            out = np.zeros((n, self.n_layers, clt.d_out), np.float32)
            scales = np.asarray(clt.output_scales, np.float32)
            for l in np.unique(layer):
                rows = np.flatnonzero(layer == l)
                w = np.asarray(self.params["W_dec"][l])[index[rows]]  # [r, L - l, d]
                out[rows, l:] = w / scales[l:][None, :, None]
            return out
        out = np.zeros((n, self.n_layers, self.dictionaries[0].d_out), np.float32)
        out[np.arange(n), layer] = self.own_layer_rows(layer, index)
        return out

    def own_layer_rows(self, layer, index):
        """[n, d_out]: what per-layer transcoders' features (layer[i], index[i]) write per unit
        of activation to their own layer's MLP output, in model units."""
        layer, index = np.asarray(layer), np.asarray(index)
        out = np.empty((len(layer), self.dictionaries[0].d_out), np.float32)
        for l in np.unique(layer):
            rows = np.flatnonzero(layer == l)
            d, p = self.dictionaries[l], self.params[l]
            out[rows] = np.asarray(p["W_dec"])[index[rows]] / d.output_scale
        return out

    def skip_weights(self):
        """[L, d_in, d_out] per-layer skips in model units (raw input -> model output), or
        None when no transcoder has one."""
        if self.kind == "cross_layer" or not any(d.skip for d in self.dictionaries):
            return None
        return jnp.stack([p["W_skip"] * (d.input_scale / d.output_scale) if d.skip
                          else jnp.zeros((d.d_in, d.d_out), jnp.float32)
                          for d, p in zip(self.dictionaries, self.params)])

    def reconstruct(self, acts):
        """activations [P, L, width] -> what they write to each MLP output [P, L, d_out], and
        the decoder biases' part of it, both in model units (a skip's part is not in it:
        see skip_weights)."""
        if self.kind == "cross_layer":
            clt = self.dictionaries
            scales = jnp.asarray(clt.output_scales, jnp.float32)[:, None]
            return clt.decode(self.params, acts) / scales, self.params["b_dec"] / scales
        outs, biases = [], []
        for l, (d, p) in enumerate(zip(self.dictionaries, self.params)):
            outs.append((acts[:, l] @ p["W_dec"] + p["b_dec"]) / d.output_scale)
            biases.append(p["b_dec"] / d.output_scale)
        return jnp.stack(outs, 1), jnp.stack(biases)


# -- The prompt's frozen state ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Replacement:
    """One prompt's local replacement model (see the module docstring)."""

    model: Any
    params: Any
    tokens: jax.Array  # [P]
    transcoders: Transcoders
    frozen: dict  # hook name -> its value on this prompt (patterns, scales)
    u_embed: jax.Array  # [P, d]
    mlp_out: jax.Array  # [L, P, d]: the true MLP outputs
    reconstruction: jax.Array  # [L, P, d]: what the features write, decoder biases and skips included
    bias: jax.Array  # [L, d]: the decoder biases' part of the reconstruction
    skip: jax.Array  # [L, P, d]: the linear skips' part of it (zeros without skips)
    errors: jax.Array  # [L, P, d] = mlp_out - reconstruction
    pre: jax.Array  # [P, L, width]
    acts: jax.Array  # [P, L, width]
    logits: jax.Array  # [P, vocab]: the model's own

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    def linear(self, u_embed, u_mlp, *, with_inputs: bool = True):
        """The affine replacement: (u_embed [P, d], u_mlp [L, P, d]) -> (inputs [P, L, d_in]
        or None, logits [P, vocab])."""
        return linear(self.model, self.transcoders, self.params, self.tokens, self.frozen, u_embed, u_mlp,
                      with_inputs=with_inputs)

    def u(self):
        """The prompt's own (u_embed, u_mlp): reconstruction + error - skip (which `linear`
        adds back from the live input) = the true MLP outputs."""
        return self.u_embed, self.reconstruction - self.skip + self.errors


def linear(model, transcoders: Transcoders, params, tokens, frozen: dict, u_embed, u_mlp, *,
           with_inputs: bool = True, input_layers: int | None = None):
    """Replacement.linear as a pure function of arrays (what a compiled program takes as
    arguments rather than as constants). input_layers: only the first that many layers'
    inputs (a backward pass from them then runs through those layers alone)."""
    interventions = {name: (_replace, value) for name, value in frozen.items()}
    interventions[EMBED_HOOK] = (_replace, u_embed[None])
    w_skip = transcoders.skip_weights()
    if w_skip is None:
        for l, name in enumerate(transcoders.hooks_out):
            interventions[name] = (_replace, u_mlp[l][None])
    else:
        # A skip reads the transcoder's input of this same forward pass: the input hook
        # keeps it (trace time; a layer's input hook runs before its output hook) for the
        # output hook to add x W_skip to u_mlp.
        seen = {}
        for l, (name_in, name_out) in enumerate(zip(transcoders.hooks_in, transcoders.hooks_out)):
            interventions[name_in] = (functools.partial(_keep, seen, l), ())
            interventions[name_out] = (functools.partial(_add_skip, seen, l), (u_mlp[l][None], w_skip[l]))
    names = transcoders.hooks_in[:input_layers] if with_inputs else ()
    # explicit positions select attention's explicit core, whose pattern is the hooked one
    positions = jnp.arange(tokens.shape[0])[None]
    logits, cache = model.run_with_cache(params, tokens[None], names, positions=positions,
                                         interventions=interventions)
    inputs = jnp.stack([cache[n][0] for n in names], 1) if with_inputs else None
    return inputs, logits[0]


def frozen_hook_names(model) -> list[str]:
    """Every hook point whose value is frozen for the replacement: normalisation scales and
    each mixer's FROZEN_MIXER_POINTS."""
    frozen = {f"blocks.{l}.{suffix}" for l, mixer in enumerate(model.cfg.layer_mixers)
              for suffix in FROZEN_MIXER_POINTS.get(mixer, ())}
    return [n for n in hook_names(model.cfg) if n.endswith(".hook_scale") or n in frozen]


def build_replacement(model, params, tokens, transcoders: Transcoders) -> Replacement:
    """Run the model once on `tokens` [P] (one prompt) and freeze what the replacement needs."""
    tokens = check_prompt(model, tokens, transcoders)
    state = _prompt_state(model, transcoders.structure, params, transcoders.params, tokens)
    return Replacement(model, params, tokens, transcoders, **state)


def check_prompt(model, tokens, transcoders: Transcoders) -> jax.Array:
    """tokens as an array, after one-line errors for a prompt or transcoders the replacement cannot take."""
    transcoders.check_model(model)
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 1:
        raise LmjaxError(f"an attribution graph traces one prompt: tokens must be [positions]; got shape "
                         f"{tuple(tokens.shape)}")
    if tokens.shape[0] > model.cfg.max_len:
        raise LmjaxError(f"the prompt has {tokens.shape[0]} tokens; the model's context is {model.cfg.max_len}")
    return tokens


# LLVM at -O0: the programs' work is matrix products in XLA's runtime library, which the
# level does not touch (measured on the 2-core Xeon, 4x128 GPT-2 shape, 1,024 tokens: rows
# 15.4 s at -O0 vs 15.7 s; 256 tokens: the first graph 1.7 CPU-s less, 6.5 vs 8.2)
GRAPH_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def compiler_options() -> tuple:
    """The graph programs' XLA options, as sorted items: GRAPH_COMPILER_OPTIONS, overridden
    by lmjax.interp's COMPILER_OPTIONS."""
    return tuple(sorted({**GRAPH_COMPILER_OPTIONS, **compiling.COMPILER_OPTIONS}.items()))


def _prompt_state(model, structure: tuple, params, transcoder_params, tokens) -> dict:
    """One compiled program for the whole prompt state, kept across calls: keyed on the
    model, the transcoders' structure, the options and the shapes, so the same model on a
    prompt of the same length compiles nothing."""
    return _prompt_state_program(compiler_options())(model, structure, params, transcoder_params, tokens)


@functools.lru_cache(maxsize=None)
def _prompt_state_program(options: tuple):
    return jax.jit(_frozen_state, static_argnums=(0, 1), compiler_options=dict(options))


def _frozen_state(model, structure: tuple, params, transcoder_params, tokens) -> dict:
    transcoders = Transcoders.of_structure(structure, transcoder_params)
    frozen_names = frozen_hook_names(model)
    names = tuple(frozen_names) + (EMBED_HOOK,) + transcoders.hooks_in + transcoders.hooks_out
    positions = jnp.arange(tokens.shape[0])[None]  # the explicit attention core, as in `linear`
    logits, cache = model.run_with_cache(params, tokens[None], names, positions=positions)
    x = jnp.stack([cache[n][0] for n in transcoders.hooks_in], 1)
    pre, acts = transcoders.encode(x)
    recon, bias = transcoders.reconstruct(acts)
    recon = jnp.moveaxis(recon, 1, 0)
    w_skip = transcoders.skip_weights()
    skip = jnp.zeros_like(recon) if w_skip is None else jnp.einsum("pli,lio->lpo", x, w_skip)
    recon = recon + skip
    mlp_out = jnp.stack([cache[n][0] for n in transcoders.hooks_out])
    return dict(frozen={n: cache[n] for n in frozen_names}, u_embed=cache[EMBED_HOOK][0], mlp_out=mlp_out,
                reconstruction=recon, bias=bias, skip=skip, errors=mlp_out - recon, pre=pre, acts=acts,
                logits=logits[0])
