"""lmjax.sae.interchange against the real SAELens and circuit-tracer: dictionaries saved by
lmjax load in them and compute what lmjax computes, and theirs load in lmjax, both ways on
small random dictionaries (float32, atol 1e-5)."""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import yaml
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder as CtCLT
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet, load_transcoder_set
from circuit_tracer.utils.caching import load_transcoders_from_cache
from sae_lens import SAE, BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, MatryoshkaBatchTopKTrainingSAE
from sae_lens import MatryoshkaBatchTopKTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig

from lmjax.errors import LmjaxError, MissingFileError
from lmjax.sae import interchange as ic
from lmjax.sae.architectures import Dictionary
from lmjax.sae.crosslayer import CrossLayerTranscoder

CPU = torch.device("cpu")
TOL = dict(rtol=1e-5, atol=1e-5)


def _t(x):
    return torch.tensor(np.asarray(x, np.float32))


def _close(a, b, **kw):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    np.testing.assert_allclose(a, b, **{**TOL, **kw})


def _random(d: Dictionary, seed: int) -> dict:
    """Random parameters with nonzero biases, positive thresholds and decoder rows of mixed norm."""
    rng = np.random.default_rng(seed)
    p = {"W_enc": rng.normal(0, 1 / np.sqrt(d.d_in), (d.d_in, d.width)),
         "b_enc": rng.normal(-0.1, 0.3, d.width),
         "W_dec": rng.normal(0, 1 / np.sqrt(d.width), (d.width, d.d_out)) * rng.uniform(0.5, 2, (d.width, 1)),
         "b_dec": rng.normal(0, 0.5, d.d_out)}
    if d.arch == "jumprelu":
        p["threshold"] = rng.uniform(0.05, 0.5, d.width)
    if d.arch in ("batchtopk", "matryoshka"):
        p["threshold"] = np.full(d.width, 0.3)
    if d.skip:
        p["W_skip"] = rng.normal(0, 0.2, (d.d_in, d.d_out))
    return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


def _x(n, d, seed=0):
    return np.random.default_rng(100 + seed).normal(0, 2, (n, d)).astype(np.float32)


def _same(d1, p1, d2, p2, x):
    """Two lmjax dictionaries compute the same code and prediction on raw x."""
    _close(d1.encode(p1, x * d1.input_scale), d2.encode(p2, x * d2.input_scale))
    _close(d1.reconstruct(p1, x), d2.reconstruct(p2, x))


# -- SAELens: lmjax -> disk -> SAELens

SAE_CASES = [  # (arch, d_in, width, input_scale, output_scale)
    ("relu", 16, 64, 0.7, 0.7),
    ("relu", 24, 96, 0.7, 1.9),  # scales differ: b_dec folds into b_enc
    ("topk", 32, 128, 1.3, 1.3),
    ("jumprelu", 48, 64, 0.5, 0.5),
    ("batchtopk", 64, 128, 2.0, 2.0),
    ("matryoshka", 32, 128, 1.0, 1.0),
]


@pytest.mark.parametrize("arch,d_in,width,s_in,s_out", SAE_CASES)
def test_lmjax_sae_loads_in_saelens(tmp_path, arch, d_in, width, s_in, s_out):
    d = Dictionary(arch, d_in, width, k=8, hook_in="blocks.2.hook_resid_post", input_scale=s_in, output_scale=s_out)
    p = _random(d, seed=width + d_in)
    path = ic.save_saelens(d, p, str(tmp_path / "sae"), model_name="toy")
    cfg = json.load(open(tmp_path / "sae" / "cfg.json"))
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["apply_b_dec_to_input"] == (s_in == s_out)
    sae = SAE.load_from_disk(path)
    expected = {"relu": "StandardSAE", "topk": "TopKSAE"}.get(arch, "JumpReLUSAE")
    assert type(sae).__name__ == expected
    x = _x(40, d_in)
    with torch.no_grad():
        f = sae.encode(_t(x))
        _close(f, d.encode(p, x * s_in))
        _close(sae.decode(f), d.reconstruct(p, x))
        _close(sae(_t(x)), d.reconstruct(p, x))
    back, q = ic.load_saelens(path)  # and back: the same architecture, scales folded in
    assert (back.arch, back.input_scale, back.output_scale, back.hook_in) == (arch, 1.0, 1.0, d.hook_in)
    assert arch in ("relu", "jumprelu") or back.k == d.k
    assert back.matryoshka_widths == d.matryoshka_widths
    _close(back.reconstruct(q, x), d.reconstruct(p, x))


@pytest.mark.parametrize("arch,skip", [("relu", False), ("relu", True), ("jumprelu", True), ("batchtopk", False)])
def test_lmjax_transcoder_loads_in_saelens(tmp_path, arch, skip):
    d_in, d_out = (32, 32) if skip else (24, 40)
    d = Dictionary(arch, d_in, 96, d_out=d_out, k=6, skip=skip, hook_in="blocks.1.ln2.hook_normalized",
                   hook_out="blocks.1.hook_mlp_out", input_scale=0.8, output_scale=1.6)
    p = _random(d, seed=7)
    sae = SAE.load_from_disk(ic.save_saelens(d, p, str(tmp_path / "tc")))
    name = ("JumpReLU" if arch != "relu" else "") + ("SkipTranscoder" if skip else "Transcoder")
    assert type(sae).__name__ == name
    assert sae.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    x = _x(32, d_in)
    with torch.no_grad():
        _close(sae.encode(_t(x)), d.encode(p, x * 0.8))
        _close(sae(_t(x)), d.reconstruct(p, x))
    back, q = ic.load_saelens(str(tmp_path / "tc"))
    assert back.is_transcoder and back.skip == skip and back.hook_out == d.hook_out
    _close(back.reconstruct(q, x), d.reconstruct(p, x))


# -- SAELens: SAELens -> disk -> lmjax

def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            if name == "threshold" or name.endswith(".threshold"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.6 - 0.1)  # some negative: clamped on import
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.3 if t.ndim > 1 else 0.2))
    return module


SAELENS_CFGS = [
    {"architecture": "standard", "d_in": 16, "d_sae": 64},
    {"architecture": "standard", "d_in": 16, "d_sae": 64, "apply_b_dec_to_input": False},
    {"architecture": "topk", "d_in": 32, "d_sae": 96, "k": 5},
    {"architecture": "topk", "d_in": 32, "d_sae": 96, "k": 5, "rescale_acts_by_decoder_norm": True},
    {"architecture": "jumprelu", "d_in": 48, "d_sae": 128},
    {"architecture": "transcoder", "d_in": 24, "d_sae": 64, "d_out": 40, "apply_b_dec_to_input": False},
    {"architecture": "skip_transcoder", "d_in": 32, "d_sae": 64, "d_out": 32, "apply_b_dec_to_input": False},
    {"architecture": "jumprelu_skip_transcoder", "d_in": 32, "d_sae": 64, "d_out": 32, "apply_b_dec_to_input": False},
]


def _cfg_id(c):
    return (c["architecture"] + ("_rescale" if c.get("rescale_acts_by_decoder_norm") else "")
            + ("_no_b_dec_in" if c.get("apply_b_dec_to_input") is False else ""))


@pytest.mark.parametrize("cfg", SAELENS_CFGS, ids=_cfg_id)
def test_saelens_sae_loads_in_lmjax(tmp_path, cfg):
    cfg = {**cfg, "metadata": {"hook_name": "blocks.0.hook_resid_post", "hook_name_out": "blocks.0.hook_mlp_out"}}
    sae = _randomize(SAE.from_dict(cfg), seed=cfg["d_sae"])
    sae.save_model(str(tmp_path / "s"))
    d, p = ic.load_saelens(str(tmp_path / "s"))
    assert d.width == cfg["d_sae"] and d.hook_in == "blocks.0.hook_resid_post"
    x = _x(40, cfg["d_in"])
    with torch.no_grad():
        f = sae.encode(_t(x))
        _close(d.encode(p, x), f)
        y = sae(_t(x))
    _close(d.reconstruct(p, x), y)


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "matryoshka"])
def test_saelens_training_checkpoint_loads_in_lmjax(tmp_path, kind):
    """SAELens's training checkpoints (decoder-norm rescaling on, BatchTopK's EMA threshold)
    and the inference model SAELens makes of them agree with lmjax's import."""
    common = dict(d_in=32, d_sae=128, k=6, rescale_acts_by_decoder_norm=True)
    if kind == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common))
    elif kind == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    else:
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(**common, matryoshka_widths=[16, 64, 128])
        sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    _randomize(sae, seed=3)
    if kind != "topk":
        sae.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    sae.save_model(str(tmp_path / "train"))
    sae.save_inference_model(str(tmp_path / "infer"))
    d, p = ic.load_saelens(str(tmp_path / "train"))
    assert d.arch == kind and d.k == 6
    if kind == "matryoshka":
        assert d.matryoshka_widths == (16, 64, 128)
    d2, p2 = ic.load_saelens(str(tmp_path / "infer"))
    assert d2.arch == kind  # SAELens saved it as jumprelu; training_architecture tells
    inference = SAE.load_from_disk(str(tmp_path / "infer"))
    x = _x(48, 32)
    with torch.no_grad():
        y = inference(_t(x)) if kind != "topk" else sae(_t(x))
        f = inference.encode(_t(x)) if kind != "topk" else sae.encode(_t(x))
    _close(d.encode(p, x), f)
    _close(d.reconstruct(p, x), y)
    _same(d, p, d2, p2, x)


def test_saelens_errors(tmp_path):
    d = Dictionary("topk", 16, 64, k=4)
    p = _random(d, 0)
    with pytest.raises(MissingFileError, match="cfg.json"):
        ic.load_saelens(str(tmp_path / "nothing"))
    path = ic.save_saelens(d, p, str(tmp_path / "a"))
    assert sorted(os.listdir(path)) == ["cfg.json", "sae_weights.safetensors"]  # no temporary files left
    cfg = json.load(open(os.path.join(path, "cfg.json")))
    json.dump({**cfg, "architecture": "gated"}, open(os.path.join(path, "cfg.json"), "w"))
    with pytest.raises(LmjaxError, match="architecture 'gated'.*lmjax reads"):
        ic.load_saelens(path)
    json.dump({**cfg, "d_sae": 65}, open(os.path.join(path, "cfg.json"), "w"))
    with pytest.raises(LmjaxError, match=r"safetensors: tensor 'W_enc' has shape \[16, 64\], expected \[16, 65\]"):
        ic.load_saelens(path)
    json.dump({**cfg, "normalize_activations": "layer_norm"}, open(os.path.join(path, "cfg.json"), "w"))
    with pytest.raises(LmjaxError, match="layer_norm"):
        ic.load_saelens(path)
    json.dump({**cfg, "normalize_activations": "expected_average_only_in"}, open(os.path.join(path, "cfg.json"), "w"))
    with pytest.raises(LmjaxError, match="scale="):
        ic.load_saelens(path)
    d3, _ = ic.load_saelens(path, scale=2.5)
    assert d3.input_scale == d3.output_scale == 2.5
    json.dump(cfg, open(os.path.join(path, "cfg.json"), "w"))
    with open(os.path.join(path, "sae_weights.safetensors"), "r+b") as f:
        f.truncate(200)
    with pytest.raises(LmjaxError, match="sae_weights.safetensors"):
        ic.load_saelens(path)
    with pytest.raises(LmjaxError, match="no top-k transcoder"):
        ic.save_saelens(Dictionary("topk", 16, 64, d_out=8, k=4), _random(Dictionary("topk", 16, 64, d_out=8, k=4), 0),
                        str(tmp_path / "b"))
    with pytest.raises(LmjaxError, match="shape"):
        ic.save_saelens(d, {**p, "W_dec": p["W_dec"][:, :8]}, str(tmp_path / "c"))


# -- circuit-tracer: per-layer transcoders

def _set(archs, d=32, width=64, skip=False, seed=0):
    dicts = [Dictionary(a, d, width, d_out=d, k=5, skip=skip, hook_in=f"blocks.{l}.ln2.hook_normalized",
                        hook_out=f"blocks.{l}.hook_mlp_out", input_scale=0.6 + 0.2 * l, output_scale=1.5 - 0.3 * l)
             for l, a in enumerate(archs)]
    return dicts, [_random(t, seed + l) for l, t in enumerate(dicts)]


@pytest.mark.parametrize("skip", [False, True])
def test_lmjax_transcoders_load_in_circuit_tracer(tmp_path, skip):
    dicts, params = _set(["relu", "jumprelu", "batchtopk"], skip=skip, seed=11)
    path = ic.save_circuit_tracer(dicts, params, str(tmp_path / "set"), model_name="toy")
    cfg = yaml.safe_load(open(tmp_path / "set" / "config.yaml"))
    assert (cfg["model_kind"], cfg["feature_input_hook"], cfg["feature_output_hook"]) == (
        "transcoder_set", "ln2.hook_normalized", "hook_mlp_out")
    cached, _ = load_transcoders_from_cache("set", cache_dir=str(tmp_path), device=CPU, lazy_decoder=False)
    direct = load_transcoder_set({l: os.path.join(path, f"layer_{l}.safetensors") for l in range(3)}, "toy",
                                 "ln2.hook_normalized", "hook_mlp_out", device=CPU, lazy_encoder=True,
                                 lazy_decoder=True)
    x = np.stack([_x(24, 32, l) for l in range(3)])  # [L, B, d]
    want_f = np.stack([t.encode(p, x[l] * t.input_scale) for l, (t, p) in enumerate(zip(dicts, params))])
    want_y = np.stack([t.reconstruct(p, x[l]) for l, (t, p) in enumerate(zip(dicts, params))])
    for ts in (cached, direct):
        assert isinstance(ts, TranscoderSet) and ts.skip_connection == skip
        with torch.no_grad():
            f = ts.encode(_t(x))
            _close(f, want_f)
            _close(ts.decode(f, _t(x)), want_y)
    back, q = ic.load_circuit_tracer(path)
    assert [t.arch for t in back] == ["relu", "jumprelu", "batchtopk"]
    assert back[1].hook_in == "blocks.1.ln2.hook_normalized" and back[2].hook_out == "blocks.2.hook_mlp_out"
    for l in range(3):
        _close(back[l].reconstruct(q[l], x[l]), want_y[l])


def test_circuit_tracer_transcoders_load_in_lmjax(tmp_path):
    torch.manual_seed(0)
    layers = {}
    for l in range(3):
        act = JumpReLU(torch.rand(64) * 0.4, 0.1) if l != 1 else torch.nn.functional.relu
        layers[l] = _randomize(SingleLayerTranscoder(16, 64, act, l, skip_connection=True, device=CPU,
                                                     dtype=torch.float32), seed=l)
    ts = TranscoderSet(layers, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="toy")
    ts.to_safetensors(str(tmp_path / "ct"))
    yaml.safe_dump({"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
                    "feature_output_hook": "mlp.hook_out", "scan": "toy"}, open(tmp_path / "ct" / "config.yaml", "w"))
    dicts, params = ic.load_circuit_tracer(str(tmp_path / "ct"))
    assert [d.arch for d in dicts] == ["jumprelu", "relu", "jumprelu"] and all(d.skip for d in dicts)
    assert dicts[2].hook_in == "blocks.2.mlp.hook_in"
    x = np.stack([_x(24, 16, l) for l in range(3)])
    with torch.no_grad():
        f = ts.encode(_t(x))
        y = ts.decode(f, _t(x))
    for l, (d, p) in enumerate(zip(dicts, params)):
        _close(d.encode(p, x[l]), f[l])
        _close(d.reconstruct(p, x[l]), y[l])


def test_circuit_tracer_errors(tmp_path):
    dicts, params = _set(["relu", "topk"])
    with pytest.raises(LmjaxError, match="top-k"):
        ic.save_circuit_tracer(dicts, params, str(tmp_path / "a"))
    dicts, params = _set(["relu", "relu"])
    bad = [Dictionary("relu", 32, 64, hook_in=f"blocks.{l}.{h}", hook_out=f"blocks.{l}.hook_mlp_out")
           for l, h in enumerate(["ln2.hook_normalized", "hook_resid_mid"])]
    with pytest.raises(LmjaxError, match="input hooks differ"):
        ic.save_circuit_tracer(bad, params, str(tmp_path / "b"))
    path = ic.save_circuit_tracer(dicts * 2, params * 2, str(tmp_path / "c"), feature_input_hook="hook_resid_mid",
                                  feature_output_hook="hook_mlp_out")
    ic.save_circuit_tracer(dicts, params, path)  # fewer layers: the stale layer_2/3 files go
    assert sorted(os.listdir(path)) == ["config.yaml", "layer_0.safetensors", "layer_1.safetensors"]
    os.remove(os.path.join(path, "layer_0.safetensors"))
    with pytest.raises(LmjaxError, match="numbered"):
        ic.load_circuit_tracer(path)
    with pytest.raises(MissingFileError):
        ic.load_circuit_tracer(str(tmp_path / "missing"))


# -- circuit-tracer: cross-layer transcoders

def _clt_params(arch, n, d, width, seed):
    rng = np.random.default_rng(seed)
    p = {"W_enc": rng.normal(0, 1 / np.sqrt(d), (n, d, width)), "b_enc": rng.normal(-0.1, 0.3, (n, width)),
         "W_dec": tuple(rng.normal(0, 1 / np.sqrt(width), (width, n - l, d)) for l in range(n)),
         "b_dec": rng.normal(0, 0.5, (n, d))}
    if arch != "relu":
        p["threshold"] = rng.uniform(0.05, 0.5, (n, width))
    return jax_tree(p)


def jax_tree(p):
    return {k: tuple(jnp.asarray(w, jnp.float32) for w in v) if isinstance(v, tuple) else jnp.asarray(v, jnp.float32)
            for k, v in p.items()}


def _clt_forward(clt, p, x):
    """lmjax's CLT on raw x [B, L, d] -> (f, y_raw)."""
    return clt.encode(p, clt.scale_inputs(x)), clt.reconstruct(p, x)


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_lmjax_clt_loads_in_circuit_tracer(tmp_path, arch):
    n, d, width = 3, 16, 64
    clt = CrossLayerTranscoder(arch, n, d, width, hooks_in=tuple(f"blocks.{l}.ln2.hook_normalized" for l in range(n)),
                               hooks_out=tuple(f"blocks.{l}.hook_mlp_out" for l in range(n)),
                               input_scales=(0.8, 1.1, 0.6), output_scales=(1.7, 0.9, 1.3))
    p = _clt_params(arch, n, d, width, seed=5)
    path = ic.save_circuit_tracer(clt, p, str(tmp_path / "clt"))  # hooks: the suffix of hooks_in / hooks_out
    cfg = yaml.safe_load(open(os.path.join(path, "config.yaml")))
    assert (cfg["model_kind"], cfg["feature_input_hook"], cfg["feature_output_hook"]) == (
        "cross_layer_transcoder", "ln2.hook_normalized", "hook_mlp_out")
    x = np.stack([_x(20, d, l) for l in range(n)], 1)  # [B, L, d]
    want_f, want_y = _clt_forward(clt, p, x)
    cached, _ = load_transcoders_from_cache("clt", cache_dir=str(tmp_path), device=CPU, lazy_decoder=True)
    direct = load_clt(path, device=CPU, dtype=torch.float32, lazy_decoder=False)
    for ct in (cached, direct):
        assert isinstance(ct, CtCLT) and ct.n_layers == n
        with torch.no_grad():
            f = ct.encode(_t(x.transpose(1, 0, 2)))
            _close(f.permute(1, 0, 2), want_f)
            _close(ct.decode(f).permute(1, 0, 2), want_y)
    back, q = ic.load_circuit_tracer(path)
    assert (back.arch, back.n_layers, back.hooks_in, back.hooks_out) == (arch, n, clt.hooks_in, clt.hooks_out)
    assert back.input_scales == back.output_scales == (1.0,) * n
    _close(_clt_forward(back, q, x)[1], want_y)


def test_circuit_tracer_clt_loads_in_lmjax(tmp_path):
    n, d, width = 4, 16, 64
    ct = CtCLT(n, width, d, activation_function="jump_relu", lazy_decoder=False, device=CPU, dtype=torch.float32)
    _randomize(ct, seed=9)
    ct.to_safetensors(str(tmp_path / "ct"))
    yaml.safe_dump({"model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid",
                    "feature_output_hook": "hook_mlp_out"}, open(tmp_path / "ct" / "config.yaml", "w"))
    clt, p = ic.load_circuit_tracer(str(tmp_path / "ct"))
    assert clt.arch == "jumprelu" and [w.shape for w in p["W_dec"]] == [(width, n - l, d) for l in range(n)]
    assert clt.hooks_in[3] == "blocks.3.hook_resid_mid" and clt.hooks_out[0] == "blocks.0.hook_mlp_out"
    x = np.stack([_x(20, d, l) for l in range(n)], 1)
    with torch.no_grad():
        f = ct.encode(_t(x.transpose(1, 0, 2)))
        y = ct.decode(f)
    got_f, got_y = _clt_forward(clt, p, x)
    _close(got_f, f.permute(1, 0, 2))
    _close(got_y, y.permute(1, 0, 2))
