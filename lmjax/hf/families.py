"""The Hugging Face model families lmjax reads and writes, each as data: a config mapping
and a table of tensor links.

A `Link` says how one lmjax parameter (of one layer) is stored in a Hugging Face
checkpoint: the tensor's name and shape, the block of it that belongs to this parameter
(GPT-2 fuses q, k and v in one `c_attn`), and how its axes are split and permuted into
lmjax's layout. Import and export read the same table in opposite directions, so the two
cannot drift apart, and an import can read any slice of a parameter without reading the
rest (`lmjax.hf.load`).

Families:
- GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, GELU (tanh approximation for
  `gelu_new`), biases everywhere, `Conv1D` weights stored [in, out]; tied by default.
- Llama (`LlamaForCausalLM`) and its near-copies `MistralForCausalLM` and
  `Qwen2ForCausalLM`: RoPE in the halves convention (the same as lmjax's `rotary`, so no
  permutation of q/k rows is needed), RMSNorm, SwiGLU, grouped-query attention. lmjax has
  one `use_bias` switch: a checkpoint with some biases (Qwen2: q, k, v only; Llama with
  only `attention_bias` or only `mlp_bias`) is imported with `use_bias=True` and the absent
  biases set to zero, which is exactly the same function. Mistral's (and Qwen2's) sliding
  window only matters beyond the window, so the imported context `max_len` stops there.
  They export as `LlamaForCausalLM` (with every bias when `use_bias`).
- Mamba (`MambaForCausalLM`): lmjax's Mamba mixer with no MLP per block; in_proj's [x | z]
  rows, the depthwise conv's [channels, 1, width] weight, x_proj, dt_proj, A_log and D.
"""
from __future__ import annotations

import dataclasses
import math

from lmjax.errors import LmjaxError
from lmjax.model import ModelConfig


class UnsupportedModel(LmjaxError):
    """The checkpoint (or lmjax config) uses something lmjax cannot represent exactly."""


@dataclasses.dataclass(frozen=True)
class Link:
    """How one lmjax parameter of one layer is stored in a Hugging Face checkpoint.

    The lmjax array is `transpose(reshape(block, split), perm)` (split axes of size 1 that
    `perm` leaves out are dropped), where `block` is the whole
    tensor `hf` of shape `hf_shape`, or (with `part=(axis, index, count)`) its index-th of
    `count` equal blocks along `axis`. `hf=None`: the tensor does not exist in this
    architecture and the parameter is zero (a bias lmjax needs and the checkpoint lacks).
    """

    hf: str | None
    hf_shape: tuple[int, ...]
    split: tuple[int, ...]
    perm: tuple[int, ...]
    part: tuple[int, int, int] | None = None

    @property
    def block_shape(self) -> tuple[int, ...]:
        shape = list(self.hf_shape)
        if self.part is not None:
            axis, _, count = self.part
            shape[axis] //= count
        return tuple(shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """The lmjax parameter's shape."""
        return tuple(self.split[p] for p in self.perm)

    @property
    def full_perm(self) -> tuple[int, ...]:
        """`perm` followed by the split axes it leaves out (size 1: squeezed away, e.g. the
        [channels, 1, width] of a depthwise Conv1d weight)."""
        rest = tuple(a for a in range(len(self.split)) if a not in self.perm)
        assert all(self.split[a] == 1 for a in rest), self
        return self.perm + rest

    def groups(self) -> list[list[int]]:
        """For each axis of the block, the split axes it is reshaped into (in order)."""
        out, j = [], 0
        for dim in self.block_shape:
            group, size = [j], self.split[j]
            j += 1
            while size < dim:
                group.append(j)
                size *= self.split[j]
                j += 1
            out.append(group)
        out[-1] += list(range(j, len(self.split)))  # trailing size-1 axes
        if any(math.prod(self.split[k] for k in g) != d for g, d in zip(out, self.block_shape)):
            raise AssertionError(f"link {self}: split {self.split} does not refine {self.block_shape}")
        return out


def _matrix(name, rows, cols):
    """An nn.Linear weight [out, in] -> an lmjax [in, out] kernel."""
    return Link(name, (rows, cols), (rows, cols), (1, 0))


def _vector(name, n):
    return Link(name, (n,), (n,), (0,))


def _same(name, shape):
    return Link(name, tuple(shape), tuple(shape), tuple(range(len(shape))))


def _mismatches(cfg: ModelConfig, family: str, **wants) -> list[str]:
    """One line per config field that differs from what `family`'s checkpoints need."""
    return [f"{field}={getattr(cfg, field)!r} ({family} needs {want!r})"
            for field, want in wants.items() if getattr(cfg, field) != want]


def _attention_only(cfg: ModelConfig) -> list[str]:
    mixers = set(getattr(cfg, "layer_mixers", ("attention",)))
    return [] if mixers == {"attention"} else [f"layers are {sorted(mixers)} (needs attention in every layer)"]


# ---------------------------------------------------------------------------------------
# GPT-2

_GPT2_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GPT2_ACTS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


class GPT2:
    name = "gpt2"
    architectures = ("GPT2LMHeadModel",)
    prefixes = ("transformer.", "")  # saved from GPT2LMHeadModel, or from GPT2Model (the original hub files)
    # Buffers some checkpoints carry (the causal mask), not parameters.
    ignorable = (".attn.bias", ".attn.masked_bias")

    @staticmethod
    def config_from_hf(hf: dict) -> ModelConfig:
        problems = []
        act = hf.get("activation_function", "gelu_new")
        if act not in _GPT2_ACTS:
            problems.append(f"activation_function={act!r} (lmjax has {sorted(_GPT2_ACTS)})")
        if not hf.get("scale_attn_weights", True):
            problems.append("scale_attn_weights=false")
        if hf.get("scale_attn_by_inverse_layer_idx", False):
            problems.append("scale_attn_by_inverse_layer_idx=true")
        if hf.get("add_cross_attention", False):
            problems.append("add_cross_attention=true")
        if problems:
            raise UnsupportedModel("GPT-2 checkpoint uses what lmjax does not implement: " + ", ".join(problems))
        d = hf["n_embd"]
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], d_model=d, n_head=hf["n_head"],
            d_mlp=hf.get("n_inner") or 4 * d, max_len=hf.get("n_positions", 1024), pos_embedding="learned",
            norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp=_GPT2_ACTS[act], use_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True), dropout=0.0,
        )

    @staticmethod
    def problems(cfg: ModelConfig) -> list[str]:
        """Why `cfg` cannot be written as GPT-2 (empty: it can)."""
        out = _attention_only(cfg)
        out += _mismatches(cfg, "GPT-2", pos_embedding="learned", norm="layernorm", use_bias=True)
        if cfg.mlp not in _GPT2_ACTS_OUT:
            out.append(f"mlp={cfg.mlp!r} (GPT-2 needs one of {sorted(_GPT2_ACTS_OUT)})")
        if cfg.kv_heads != cfg.n_head:
            out.append(f"n_kv_head={cfg.kv_heads} (GPT-2 has no grouped-query attention)")
        if cfg.head_dim * cfg.n_head != cfg.d_model:
            out.append(f"d_head={cfg.head_dim} (GPT-2 needs n_head * d_head = d_model)")
        return out

    @staticmethod
    def config_to_hf(cfg: ModelConfig) -> dict:
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_len, "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": cfg.mlp_dim, "activation_function": _GPT2_ACTS_OUT[cfg.mlp],
            "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout, "initializer_range": cfg.init_std, "scale_attn_weights": True,
            "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True,
        }

    @staticmethod
    def links(cfg: ModelConfig, hf: dict | None = None) -> dict[str, Link]:
        """lmjax parameter path (unscanned layout) -> Link, for a GPT-2 shaped `cfg`."""
        d, h, dh, f, v = cfg.d_model, cfg.n_head, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
        out = {"embed": _same("transformer.wte.weight", (v, d)),
               "pos_embed": _same("transformer.wpe.weight", (cfg.max_len, d)),
               "ln_final/scale": _vector("transformer.ln_f.weight", d),
               "ln_final/bias": _vector("transformer.ln_f.bias", d)}
        if not cfg.tie_embeddings:
            out["unembed"] = _matrix("lm_head.weight", v, d)
        for l in range(cfg.n_layer):
            p, b = f"transformer.h.{l}.", f"blocks_{l}/"
            for ln, hf_ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
                out[f"{b}{ln}/scale"] = _vector(f"{p}{hf_ln}.weight", d)
                out[f"{b}{ln}/bias"] = _vector(f"{p}{hf_ln}.bias", d)
            for i, name in enumerate("qkv"):  # c_attn is Conv1D [in, out] with out = [q | k | v]
                out[f"{b}attn/{name}/kernel"] = Link(f"{p}attn.c_attn.weight", (d, 3 * d), (d, h, dh), (0, 1, 2), (1, i, 3))
                out[f"{b}attn/{name}/bias"] = Link(f"{p}attn.c_attn.bias", (3 * d,), (h, dh), (0, 1), (0, i, 3))
            out[f"{b}attn/o/kernel"] = Link(f"{p}attn.c_proj.weight", (d, d), (h, dh, d), (0, 1, 2))
            out[f"{b}attn/o/bias"] = _vector(f"{p}attn.c_proj.bias", d)
            out[f"{b}mlp/fc_in/kernel"] = _same(f"{p}mlp.c_fc.weight", (d, f))
            out[f"{b}mlp/fc_in/bias"] = _vector(f"{p}mlp.c_fc.bias", f)
            out[f"{b}mlp/fc_out/kernel"] = _same(f"{p}mlp.c_proj.weight", (f, d))
            out[f"{b}mlp/fc_out/bias"] = _vector(f"{p}mlp.c_proj.bias", d)
        return out


# ---------------------------------------------------------------------------------------
# Llama, Mistral, Qwen2


def _rope(hf: dict) -> tuple[float, list[str]]:
    """(theta, problems) from a v5 `rope_parameters` or a v4 `rope_theta` / `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    problems = []
    if kind != "default":
        problems.append(f"rope_type={kind!r} (lmjax implements plain RoPE only)")
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        problems.append("partial_rotary_factor != 1")
    return float(theta), problems


class Llama:
    name = "llama"
    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
    prefixes = ("model.", "")
    ignorable = (".rotary_emb.inv_freq",)

    @staticmethod
    def _biases(hf: dict) -> set[str]:
        """Which groups of bias tensors the checkpoint has: 'qkv', 'o', 'mlp'."""
        if hf.get("model_type") == "qwen2":
            return {"qkv"}
        out = set()
        if hf.get("attention_bias", False):
            out |= {"qkv", "o"}
        if hf.get("mlp_bias", False):
            out.add("mlp")
        return out

    @staticmethod
    def config_from_hf(hf: dict) -> ModelConfig:
        theta, problems = _rope(hf)
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            problems.append(f"hidden_act={act!r} (lmjax's SwiGLU gates with silu)")
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        max_len = hf.get("max_position_embeddings", 2048)
        window = hf.get("sliding_window")
        uses_window = hf.get("use_sliding_window", False) if hf.get("model_type") == "qwen2" else True
        if window and uses_window and window < max_len:
            max_len = int(window)  # beyond the window Mistral attends differently; up to it, identically
        if problems:
            raise UnsupportedModel(f"{hf.get('model_type', 'llama')} checkpoint uses what lmjax does not "
                                   "implement: " + ", ".join(problems))
        head_dim = hf.get("head_dim") or d // h
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], d_model=d, n_head=h,
            n_kv_head=hf.get("num_key_value_heads") or h, d_head=head_dim if head_dim * h != d else None,
            d_mlp=hf["intermediate_size"], max_len=max_len, pos_embedding="rope", rope_theta=theta,
            norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu",
            use_bias=bool(Llama._biases(hf)), tie_embeddings=hf.get("tie_word_embeddings", False), dropout=0.0,
        )

    @staticmethod
    def problems(cfg: ModelConfig) -> list[str]:
        out = _attention_only(cfg)
        out += _mismatches(cfg, "Llama", pos_embedding="rope", norm="rmsnorm", mlp="swiglu")
        return out

    @staticmethod
    def config_to_hf(cfg: ModelConfig) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rope_theta": cfg.rope_theta,  # what transformers 4.x reads
            "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias, "attention_dropout": cfg.dropout,
            "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True,
        }

    @staticmethod
    def links(cfg: ModelConfig, hf: dict | None = None) -> dict[str, Link]:
        """`hf`: the checkpoint's config (which biases it has); None = every bias if use_bias."""
        d, h, kvh, dh, f, v = cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
        biases = Llama._biases(hf) if hf is not None else ({"qkv", "o", "mlp"} if cfg.use_bias else set())
        out = {"embed": _same("model.embed_tokens.weight", (v, d)), "ln_final/scale": _vector("model.norm.weight", d)}
        if not cfg.tie_embeddings:
            out["unembed"] = _matrix("lm_head.weight", v, d)

        def bias(group, name, split):
            return Link(name if group in biases else None, (math.prod(split),), split, tuple(range(len(split))))

        for l in range(cfg.n_layer):
            p, b = f"model.layers.{l}.", f"blocks_{l}/"
            out[f"{b}ln1/scale"] = _vector(f"{p}input_layernorm.weight", d)
            out[f"{b}ln2/scale"] = _vector(f"{p}post_attention_layernorm.weight", d)
            for name, heads in (("q", h), ("k", kvh), ("v", kvh)):
                hf_name = f"{p}self_attn.{name}_proj"
                out[f"{b}attn/{name}/kernel"] = Link(f"{hf_name}.weight", (heads * dh, d), (heads, dh, d), (2, 0, 1))
                if cfg.use_bias:
                    out[f"{b}attn/{name}/bias"] = bias("qkv", f"{hf_name}.bias", (heads, dh))
            out[f"{b}attn/o/kernel"] = Link(f"{p}self_attn.o_proj.weight", (d, h * dh), (d, h, dh), (1, 2, 0))
            mlp = {"fc_in": ("up_proj", f), "fc_gate": ("gate_proj", f), "fc_out": ("down_proj", d)}
            for lm, (hf_name, n_out) in mlp.items():
                n_in = d if lm != "fc_out" else f
                out[f"{b}mlp/{lm}/kernel"] = _matrix(f"{p}mlp.{hf_name}.weight", n_out, n_in)
                if cfg.use_bias:
                    out[f"{b}mlp/{lm}/bias"] = bias("mlp", f"{p}mlp.{hf_name}.bias", (n_out,))
            if cfg.use_bias:
                out[f"{b}attn/o/bias"] = bias("o", f"{p}self_attn.o_proj.bias", (d,))
        return out


# ---------------------------------------------------------------------------------------
# Mamba


class Mamba:
    """`MambaForCausalLM`: embeddings, then per layer x + mixer(RMSNorm(x)) with no MLP
    (lmjax: mixer="mamba", mamba_mlp=False), a final RMSNorm, tied by default. Mamba has no
    context limit; the imported `max_len` (what lmjax's sampler plans for) is 2048."""

    name = "mamba"
    architectures = ("MambaForCausalLM",)
    prefixes = ("backbone.", "")
    ignorable = ()
    max_len = 2048

    @staticmethod
    def config_from_hf(hf: dict) -> ModelConfig:
        problems = []
        if hf.get("use_bias", False):
            problems.append("use_bias=true (biases on in_proj/out_proj)")
        if not hf.get("use_conv_bias", True):
            problems.append("use_conv_bias=false")
        if hf.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act={hf.get('hidden_act')!r}")
        d, expand = hf["hidden_size"], hf.get("expand", 2)
        if int(expand) != expand or hf.get("intermediate_size", expand * d) != expand * d:
            problems.append(f"intermediate_size={hf.get('intermediate_size')} is not an integer expand x hidden_size")
        if problems:
            raise UnsupportedModel("Mamba checkpoint uses what lmjax does not implement: " + ", ".join(problems))
        rank = hf.get("time_step_rank", "auto")
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], d_model=d, n_head=1, max_len=Mamba.max_len,
            pos_embedding="none", norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), use_bias=False,
            tie_embeddings=hf.get("tie_word_embeddings", True), dropout=0.0, mixer="mamba", mamba_mlp=False,
            d_state=hf.get("state_size", 16), d_conv=hf.get("conv_kernel", 4), expand=int(expand),
            dt_rank=None if rank == "auto" else int(rank),
        )

    @staticmethod
    def problems(cfg: ModelConfig) -> list[str]:
        out = []
        mixers = set(getattr(cfg, "layer_mixers", ("attention",)))
        if mixers != {"mamba"}:
            return [f"layers are {sorted(mixers)} (Mamba needs mamba in every layer)"]
        out += _mismatches(cfg, "Mamba", pos_embedding="none", norm="rmsnorm", mamba_mlp=False)
        return out

    @staticmethod
    def config_to_hf(cfg: ModelConfig) -> dict:
        return {
            "architectures": ["MambaForCausalLM"], "model_type": "mamba", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "state_size": cfg.d_state, "num_hidden_layers": cfg.n_layer,
            "layer_norm_epsilon": cfg.norm_eps, "expand": cfg.expand, "intermediate_size": cfg.d_inner,
            "conv_kernel": cfg.d_conv, "use_bias": False, "use_conv_bias": True, "hidden_act": "silu",
            "time_step_rank": cfg.mamba_dt_rank, "residual_in_fp32": True, "tie_word_embeddings": cfg.tie_embeddings,
            "use_cache": True,
        }

    @staticmethod
    def links(cfg: ModelConfig, hf: dict | None = None) -> dict[str, Link]:
        d, di, n, k, r, v = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.mamba_dt_rank, cfg.vocab_size
        out = {"embed": _same("backbone.embeddings.weight", (v, d)), "ln_final/scale": _vector("backbone.norm_f.weight", d)}
        if not cfg.tie_embeddings:
            out["unembed"] = _matrix("lm_head.weight", v, d)
        for l in range(cfg.n_layer):
            p, b = f"backbone.layers.{l}.", f"blocks_{l}/"
            m = f"{p}mixer."
            out[f"{b}ln1/scale"] = _vector(f"{p}norm.weight", d)
            # in_proj's output rows are [x | z]; lmjax's kernel is [d_model, 2, d_inner]
            out[f"{b}mixer/in_proj/kernel"] = Link(f"{m}in_proj.weight", (2 * di, d), (2, di, d), (2, 0, 1))
            # a depthwise Conv1d weight [d_inner, 1, width] -> lmjax [width, d_inner]
            out[f"{b}mixer/conv1d/kernel"] = Link(f"{m}conv1d.weight", (di, 1, k), (di, 1, k), (2, 0))
            out[f"{b}mixer/conv1d/bias"] = _vector(f"{m}conv1d.bias", di)
            out[f"{b}mixer/x_proj/kernel"] = _matrix(f"{m}x_proj.weight", r + 2 * n, di)
            out[f"{b}mixer/dt_proj/kernel"] = _matrix(f"{m}dt_proj.weight", di, r)
            out[f"{b}mixer/dt_proj/bias"] = _vector(f"{m}dt_proj.bias", di)
            out[f"{b}mixer/A_log"] = _same(f"{m}A_log", (di, n))
            out[f"{b}mixer/D"] = _vector(f"{m}D", di)
            out[f"{b}mixer/out_proj/kernel"] = _matrix(f"{m}out_proj.weight", d, di)
        return out


FAMILIES = (GPT2, Llama, Mamba)
ARCHITECTURES = {arch: fam for fam in FAMILIES for arch in fam.architectures}


def family_for_hf(hf: dict):
    """The family of a Hugging Face config.json (by `architectures`, else `model_type`)."""
    archs = hf.get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    by_type = {"gpt2": GPT2, "llama": Llama, "mistral": Llama, "qwen2": Llama, "mamba": Mamba}
    if not archs and hf.get("model_type") in by_type:
        return by_type[hf["model_type"]]
    raise UnsupportedModel(
        f"unsupported architecture {archs or hf.get('model_type')!r}; lmjax converts {sorted(ARCHITECTURES)}")


def family_for_config(cfg: ModelConfig):
    """The family an lmjax model exports as, or UnsupportedModel naming what does not fit."""
    reasons = []
    for fam in FAMILIES:
        problems = fam.problems(cfg)
        if not problems:
            return fam
        reasons.append(f"{fam.architectures[0]}: " + "; ".join(problems))
    raise UnsupportedModel("this lmjax model matches no Hugging Face architecture lmjax writes:\n  "
                           + "\n  ".join(reasons))
