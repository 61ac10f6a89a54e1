"""The decoder-only language model: embeddings, pre-norm blocks, final norm, unembedding.

Each block's sequence mixer is attention or a recurrent / convolutional mixer
(cfg.layer_mixers: lmjax/model/mixers.py), so the same stack is a transformer, a Mamba
model, a hybrid, an LSTM or a gated CNN. The class keeps its name, Transformer."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.errors import LmjaxError
from lmjax.model.attention import Attention
from lmjax.model.config import ModelConfig
from lmjax.model.hooks import HOOK_COLLECTION, LAYER_WILDCARD, Hooks, collect_cache, hook
from lmjax.model.layers import MLP, Norm, normal, param
from lmjax.model.mixers import mixer_class
from lmjax.model.segments import segment_positions


class Block(nn.Module):
    """resid_mid = resid_pre + mixer(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

    The mixer is attention (hook point hook_attn_out) or one of lmjax/model/mixers.py
    (hook_mixer_out, insides under `mixer.`). A Mamba block without an MLP
    (cfg.mamba_mlp=False) is resid_post = resid_pre + mixer(ln1(resid_pre)).
    Each residual sum is constrained to the logical axes (batch, length, embed): a no-op
    without axis rules, and under a mesh it keeps the stream split over the batch only."""

    cfg: ModelConfig
    layer: int | None  # None inside a layer scan: the index is then traced
    mixer: str = "attention"

    @nn.compact
    def __call__(self, x, positions, hooks, deterministic, layer_index=None, cache=None, lengths=None,
                 segment_ids=None):
        """-> resid_post, or (resid_post, cache) when decoding with a cache.

        `lengths` [b] (with a cache only): each row's real tokens in x; the rest is right
        padding that recurrent states must not absorb. `segment_ids` [b, t] (without a
        cache): packed documents, which the mixer keeps apart."""
        cfg = self.cfg
        p = f"blocks.{LAYER_WILDCARD if self.layer is None else self.layer}"

        def point(name, value):
            return hook(self, hooks, f"{p}.{name}", value, layer_index)

        def dropout(y):
            return nn.Dropout(cfg.dropout)(y, deterministic=deterministic) if cfg.dropout > 0 else y

        def residual(y):
            return nn.with_logical_constraint(y, ("batch", "length", "embed"))

        x = point("hook_resid_pre", x)
        a = Norm(cfg, f"{p}.ln1", name="ln1")(x, hooks, layer_index)
        if self.mixer == "attention":
            a = Attention(cfg, f"{p}.attn", name="attn")(a, positions, hooks, layer_index, deterministic, cache,
                                                       segment_ids)
            out_name = "hook_attn_out"
        else:
            a = mixer_class(self.mixer)(cfg, f"{p}.mixer", name="mixer")(a, hooks, layer_index, cache, lengths,
                                                                       segment_ids)
            out_name = "hook_mixer_out"
        if cache is not None:
            a, cache = a
        x = residual(x + point(out_name, dropout(a)))
        if cfg.has_mlp(self.mixer):
            x = point("hook_resid_mid", x)
            m = Norm(cfg, f"{p}.ln2", name="ln2")(x, hooks, layer_index)
            m = MLP(cfg, f"{p}.mlp", name="mlp")(m, hooks, layer_index)
            x = residual(x + point("hook_mlp_out", dropout(m)))
        x = point("hook_resid_post", x)
        return x if cache is None else (x, cache)


class ScannedBlock(nn.Module):
    """Block in the (carry, xs) -> (carry, ys) form that nn.scan wants."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, xs, positions, hooks, deterministic, lengths=None, segment_ids=None):
        layer_index, cache = xs  # cache: this layer's slice of the stacked cache, or None
        block = Block(self.cfg, None, self.cfg.layer_mixers[0], name="block")
        out = block(x, positions, hooks, deterministic, layer_index, cache, lengths, segment_ids)
        return out if cache is not None else (out, None)


def _remat(module_cls, cfg: ModelConfig, static_argnums):
    if cfg.remat == "none":
        return module_cls
    policy = None if cfg.remat == "full" else jax.checkpoint_policies.checkpoint_dots
    return nn.remat(module_cls, policy=policy, static_argnums=static_argnums, prevent_cse=not cfg.scan_layers)


class Transformer(nn.Module):
    """tokens [batch, pos] (int) -> logits [batch, pos, vocab] (float32)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, positions=None, hooks: Hooks | None = None, deterministic: bool = True, cache=None,
                 lengths=None, segment_ids=None):
        """-> logits, or (logits, cache) when a decoding cache (lmjax.model.cache) is given.

        `positions` [batch, pos] defaults to 0..pos-1 in every row (None is passed down, so
        attention knows the mask is plain causal and may use its fast core). `lengths` [batch]
        (with a cache): the real tokens of each row, the rest being right padding, which
        recurrent mixers' states then skip (attention overwrites its slots later anyway).

        `segment_ids` [batch, pos] (no cache): documents packed into rows, one id per document
        (lmjax/model/segments.py). Attention masks across documents, positions (default)
        restart at each one, and recurrent and convolutional states restart at its start."""
        cfg = self.cfg
        if segment_ids is not None and cache is not None:
            raise LmjaxError("segment_ids are for training and evaluation on packed rows; decoding with a cache "
                             "takes one document per row (pass segment_ids=None)")
        embedding = param(
            self, "embed", normal(cfg.init_std), (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.params_dtype
        )
        x = hook(self, hooks, "hook_embed", jnp.take(embedding, tokens, axis=0).astype(cfg.compute_dtype))
        if cfg.pos_embedding == "learned":
            table = param(
                self, "pos_embed", normal(cfg.init_std), (cfg.max_len, cfg.d_model), ("length", "embed"), cfg.params_dtype
            )
            rows = positions
            if rows is None:
                rows = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape) if segment_ids is None \
                    else segment_positions(segment_ids)
            pos = hook(self, hooks, "hook_pos_embed", jnp.take(table, rows, axis=0).astype(cfg.compute_dtype))
            x = x + pos
        if cfg.dropout > 0:
            x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)

        if cfg.scan_layers:
            scan = nn.scan(
                _remat(ScannedBlock, cfg, static_argnums=(5,)),  # (self, x, idx, pos, hooks, deterministic)
                variable_axes={"params": 0, "hooks": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.n_layer,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, cache = scan(cfg, name="blocks")(x, (jnp.arange(cfg.n_layer), cache), positions, hooks, deterministic,
                                                lengths, segment_ids)
        else:
            block_cls = _remat(Block, cfg, static_argnums=(4,))  # (self, x, pos, hooks, deterministic)
            new_cache = []
            for layer, mixer in enumerate(cfg.layer_mixers):
                block = block_cls(cfg, layer, mixer, name=f"blocks_{layer}")
                if cache is None:
                    x = block(x, positions, hooks, deterministic, None, None, None, segment_ids)
                else:
                    x, layer_cache = block(x, positions, hooks, deterministic, None, cache[layer], lengths)
                    new_cache.append(layer_cache)
            cache = tuple(new_cache) if cache is not None else None

        x = Norm(cfg, "ln_final", name="ln_final")(x, hooks)
        if cfg.tie_embeddings:
            logits = jnp.einsum("btd,vd->btv", x, embedding.astype(cfg.compute_dtype))
        else:
            w_u = param(
                self, "unembed", normal(cfg.init_std), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.params_dtype
            )
            logits = x @ w_u.astype(cfg.compute_dtype)
        logits = logits.astype(jnp.float32)
        return logits if cache is None else (logits, cache)

    # -- The hook API. Pure functions of (params, tokens, ...): safe under jit, vmap and grad.

    def run_with_cache(self, params, tokens, names, positions=None, interventions=None, segment_ids=None):
        """-> (logits, {name: activation}) keeping only the requested hook points."""
        names = tuple(names)
        self.check_hook_names(names, interventions)
        hooks = Hooks(names, interventions)
        logits, state = self.apply({"params": params}, tokens, positions, hooks, segment_ids=segment_ids,
                                   mutable=[HOOK_COLLECTION])
        return logits, collect_cache(state.get(HOOK_COLLECTION, {}), names)

    def run_with_hooks(self, params, tokens, interventions, positions=None, segment_ids=None):
        """-> logits with each `name: (fn, payload)` intervention applied at its hook point."""
        self.check_hook_names((), interventions)
        return self.apply({"params": params}, tokens, positions, Hooks((), interventions), segment_ids=segment_ids)

    def check_hook_names(self, names, interventions=None):
        known = set(hook_names(self.cfg))
        unknown = sorted(set(names) - known) + sorted(set(interventions or {}) - known)
        if unknown:
            raise LmjaxError(
                f"unknown hook point(s) {unknown}; this model names {len(known)} points, "
                f"e.g. {hook_names(self.cfg)[:4]} ... (see lmjax.model.hook_names)"
            )


def hook_names(cfg: ModelConfig) -> list[str]:
    """Every hook point the model names, in forward order."""
    names = ["hook_embed"] + (["hook_pos_embed"] if cfg.pos_embedding == "learned" else [])
    attn = ["hook_q", "hook_k", "hook_v"]
    if cfg.pos_embedding == "rope":
        attn += ["hook_rot_q", "hook_rot_k"]
    attn += ["hook_attn_scores", "hook_pattern", "hook_z"]
    mlp = ["hook_pre"] + (["hook_pre_gate"] if cfg.mlp == "swiglu" else []) + ["hook_post"]
    for layer, mixer in enumerate(cfg.layer_mixers):
        p = f"blocks.{layer}"
        names += [f"{p}.hook_resid_pre", f"{p}.ln1.hook_scale", f"{p}.ln1.hook_normalized"]
        if mixer == "attention":
            names += [f"{p}.attn.{n}" for n in attn] + [f"{p}.hook_attn_out"]
        else:
            names += [f"{p}.mixer.{n}" for n in mixer_class(mixer).hook_suffixes(cfg)] + [f"{p}.hook_mixer_out"]
        if cfg.has_mlp(mixer):
            names += [f"{p}.hook_resid_mid", f"{p}.ln2.hook_scale", f"{p}.ln2.hook_normalized"]
            names += [f"{p}.mlp.{n}" for n in mlp] + [f"{p}.hook_mlp_out"]
        names += [f"{p}.hook_resid_post"]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]
