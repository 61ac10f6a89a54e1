"""An lmjax GPT-2-shaped model and its transcoders, loaded into circuit-tracer with no network.

The model goes out through lmjax's Hugging Face export (lmjax.hf.export_hf, what `lmjax
convert --to_hf` writes), is read back by `transformers.GPT2LMHeadModel.from_pretrained`
from that directory, and converted to TransformerLens with its own GPT-2 weight map; the
transcoders go out through lmjax.sae.interchange.save_circuit_tracer and are read by
circuit-tracer's own loaders. Shared by tests/test_graph_parity.py and bench/graph.py.

    model = replacement_model(export_model(cfg, params, dir), save_transcoders(t, dir2))
    graph = trace(model, tokens, max_feature_nodes=None, batch_size=64)

circuit-tracer puts a BOS at position 0 when the prompt does not start with a special
token; the tokenizer here names token 0 the BOS, so give prompts that start with 0.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from circuit_tracer.attribution.attribute import attribute as ct_attribute
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformers import GPT2LMHeadModel

BOS = 0


class Tokenizer:
    """What circuit-tracer asks of a tokenizer for token-id prompts: special ids, decode."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.bos_token_id = self.pad_token_id = self.eos_token_id = BOS
        self.all_special_ids = [BOS]
        self.padding_side = "right"  # read by TransformerLens's forward

    def decode(self, ids) -> str:
        ids = [int(ids)] if np.ndim(ids) == 0 else [int(i) for i in np.asarray(ids).reshape(-1)]
        return " ".join(f"<{i}>" for i in ids)


def export_model(cfg, params, directory: str) -> str:
    """The lmjax model as a Hugging Face GPT-2 directory (float32)."""
    from lmjax.hf.export import export_hf  # local: circuit-tracer's side (the benchmark's child) needs no JAX

    export_hf(directory, cfg, params, dtype="float32")
    return directory


# lmjax's ln2.hook_normalized is the norm's output after its learned scale and bias (the
# MLP's input); TransformerLens's is before them. The MLP's input there is the hook that
# circuit-tracer's ReplacementMLP adds, mlp.hook_in.
MLP_INPUT_HOOK = "mlp.hook_in"


def save_transcoders(transcoders, directory: str) -> str:
    """lmjax Transcoders (per-layer or cross-layer, reading blocks.l.ln2.hook_normalized) in
    circuit-tracer's format, reading the same vector in TransformerLens."""
    if any(h != f"blocks.{l}.ln2.hook_normalized" for l, h in enumerate(transcoders.hooks_in)):
        raise ValueError(f"the transcoders read {transcoders.hooks_in}; this loader maps blocks.l.ln2.hook_normalized")
    from lmjax.sae.interchange import save_circuit_tracer  # local: as in export_model
    dictionaries = transcoders.dictionaries if transcoders.kind == "cross_layer" else list(transcoders.dictionaries)
    params = transcoders.params if transcoders.kind == "cross_layer" else list(transcoders.params)
    return save_circuit_tracer(dictionaries, params, directory, feature_input_hook=MLP_INPUT_HOOK, dtype="float32")


def load_transcoders(directory: str):
    """circuit-tracer's TranscoderSet or CrossLayerTranscoder from its directory (float32, CPU)."""
    import yaml  # circuit-tracer's own config format

    with open(os.path.join(directory, "config.yaml")) as f:
        config = yaml.safe_load(f)
    hooks = dict(feature_input_hook=config["feature_input_hook"], feature_output_hook=config["feature_output_hook"])
    if config["model_kind"] == "cross_layer_transcoder":
        return load_clt(directory, scan="lmjax", device=torch.device("cpu"), dtype=torch.float32,
                        lazy_decoder=False, lazy_encoder=False, **hooks)
    n = len([f for f in os.listdir(directory) if f.startswith("layer_") and f.endswith(".safetensors")])
    paths = {l: os.path.join(directory, f"layer_{l}.safetensors") for l in range(n)}
    return load_transcoder_set(paths, scan="lmjax", device=torch.device("cpu"), dtype=torch.float32,
                               lazy_encoder=False, lazy_decoder=False, **hooks)


def hooked_config(hf_dir: str) -> HookedTransformerConfig:
    """TransformerLens's config of a GPT-2 directory (what its from_pretrained would build)."""
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    d_model, n_head = hf["n_embd"], hf["n_head"]
    return HookedTransformerConfig(
        n_layers=hf["n_layer"], d_model=d_model, d_head=d_model // n_head, n_heads=n_head,
        d_mlp=hf.get("n_inner") or 4 * d_model, d_vocab=hf["vocab_size"], n_ctx=hf["n_positions"],
        act_fn=hf["activation_function"], eps=hf["layer_norm_epsilon"], normalization_type="LN",
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel", model_name="lmjax-gpt2",
        default_prepend_bos=False, device="cpu", dtype=torch.float32)


def replacement_model(hf_dir: str, transcoder_dir: str) -> TransformerLensReplacementModel:
    """circuit-tracer's ReplacementModel of the exported model and transcoders."""
    hf_model = GPT2LMHeadModel.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    cfg = hooked_config(hf_dir)
    weights = {k: v.detach().clone() for k, v in convert_gpt2_weights(hf_model, cfg).items()}
    model = TransformerLensReplacementModel.from_config(cfg, load_transcoders(transcoder_dir))
    # the replacement wraps each MLP and the unembedding: their weights sit one level down
    renamed = {}
    for name, value in weights.items():
        parts = name.split(".")
        if len(parts) > 2 and parts[2] == "mlp":
            name = ".".join(parts[:3] + ["old_mlp"] + parts[3:])
        elif parts[0] == "unembed":
            name = "unembed.old_unembed." + parts[1]
        renamed[name] = value
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    left = [k for k in missing if not k.endswith(("IGNORE", "mask", "b_U")) and not k.startswith("transcoders.")]
    if left or unexpected:
        raise RuntimeError(f"weights not loaded: missing {left}, unexpected {unexpected}")
    model.tokenizer = Tokenizer(cfg.d_vocab)
    return model.eval()


def trace(model: TransformerLensReplacementModel, tokens, *, max_feature_nodes=None, batch_size: int = 64,
          max_logits: int = 10, logit_probability: float = 0.95, update_interval: int = 4):
    """circuit-tracer's attribution graph of `tokens` (which start with BOS), float32."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    return ct_attribute(tokens, model, max_n_logits=max_logits, desired_logit_prob=logit_probability,
                        batch_size=batch_size, max_feature_nodes=max_feature_nodes, update_interval=update_interval)
