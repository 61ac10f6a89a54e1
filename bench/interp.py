"""lmjax.interp vs TransformerLens on the same random GPT-2-small weights, on this machine.

    python bench/interp.py > interp.json        # needs torch, transformers, transformer_lens

1. run_with_cache throughput, 5 hook names, batch 8 x 128 tokens: lmjax's jitted
   `run_with_cache` vs TransformerLens's `run_with_cache(names_filter=...)`.
2. A residual-stream activation-patching heatmap, 12 layers x 20 positions (denoising,
   raw logit-difference metric): lmjax's one compiled call (`activation_patching`) vs
   `transformer_lens.patching.get_act_patch_resid_pre` (a loop of 240 hooked forwards).
   Both heatmaps are compared (max abs difference, and relative to the metric's range).

TransformerLens 4 has no HookedTransformer: its `TransformerBridge` wraps a
`transformers.GPT2LMHeadModel` holding lmjax's weights (exported with lmjax.hf), booted from
a local directory (no network) with `enable_compatibility_mode()`. lmjax times are medians
of `--reps` runs after a compile run (the compile run is reported separately).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# A compilation cache of this run's own, so that "first call" means compiled here, not
# loaded from an earlier run; the warm-cache figure then comes from a second process.
os.environ.setdefault("LMJAX_COMPILE_CACHE", tempfile.mkdtemp(prefix="lmjax-bench-interp-compiled-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _machine import machine  # noqa: E402  (bench/, beside this script)
from lmjax.interp import activation_patching  # noqa: E402
from lmjax.interp.metrics import LogitDiff  # noqa: E402
from lmjax.model import ModelConfig, Transformer  # noqa: E402

TARGET, CONTRAST = 11, 12  # the heatmap's logit difference
NAMES = ["blocks.0.hook_resid_post", "blocks.3.attn.hook_z", "blocks.5.attn.hook_pattern",
         "blocks.11.hook_mlp_out", "ln_final.hook_normalized"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def timed(fn, reps):
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, float(np.median(times)), times


def lmjax_inputs(args):
    """The model (random GPT-2-small weights), the cached batch and the heatmap's prompts and
    metric: the same in the parent and in the --heatmap_child process."""
    cfg = ModelConfig(vocab_size=50257, n_layer=12, d_model=768, n_head=12, max_len=1024, mlp="gelu_tanh")
    model = Transformer(cfg)
    params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32)))(jax.random.key(0))["params"]
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, 50257, (8, 128)).astype(np.int32)
    t = args.positions
    clean = rng.randint(0, 50257, (1, t)).astype(np.int32)
    corrupt = clean.copy()
    corrupt[0, t // 2:] = rng.randint(0, 50257, t - t // 2)
    metric = LogitDiff(jnp.asarray(TARGET), jnp.asarray(CONTRAST))

    def heatmap():
        return activation_patching(model, params, clean, corrupt, metric, "resid_pre", normalize=False,
                                   batch_size=args.batch_size).values

    return cfg, model, params, tokens, clean, corrupt, heatmap


def first_call_in_new_process(args) -> float:
    """Seconds of the heatmap's first call in a fresh process that shares this one's
    compilation cache (what a user's second `lmjax explain` waits for)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--heatmap_child",
                          f"--positions={args.positions}", f"--batch_size={args.batch_size}"],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tl_reps", type=int, default=1, help="TransformerLens heatmap runs (each is minutes on 2 cores)")
    ap.add_argument("--positions", type=int, default=20)
    ap.add_argument("--batch_size", type=int, default=20, help="lmjax heatmap cells vmapped at a time")
    ap.add_argument("--heatmap_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.heatmap_child:
        heatmap = lmjax_inputs(args)[-1]
        t0 = time.perf_counter()
        jax.block_until_ready(heatmap())
        print(time.perf_counter() - t0)
        return

    import torch
    import transformers
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    from lmjax.hf.export import hf_tensors

    cfg, model, params, tokens, clean, corrupt, lmjax_heatmap = lmjax_inputs(args)

    hf_cfg = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                                     activation_function="gelu_new", layer_norm_epsilon=1e-5)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    entries, produce = hf_tensors(cfg, jax.tree.map(np.asarray, params))
    state = {name: torch.from_numpy(np.ascontiguousarray(produce(name))) for name, _, _ in entries}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("attn.bias" in m or "lm_head" in m for m in missing), (missing, unexpected)
    tmp = tempfile.mkdtemp()
    hf.save_pretrained(tmp)
    bridge = TransformerBridge.boot_transformers(tmp, hf_model=hf)
    bridge.enable_compatibility_mode()
    bridge.eval()
    torch.set_grad_enabled(False)

    # compatibility mode centres the unembedding (logits shift by a per-position constant),
    # so compare logits minus their mean over the vocabulary
    a = bridge(torch.from_numpy(tokens[:1, :16]).long()).numpy()
    b = np.asarray(model.apply({"params": params}, jnp.asarray(tokens[:1, :16])))
    check = np.abs((a - a.mean(-1, keepdims=True)) - (b - b.mean(-1, keepdims=True))).max()
    log(f"centred logits agree to {check:.2e}")

    # 1. caching
    cache_fn = jax.jit(lambda p, t: model.run_with_cache(p, t, NAMES))
    toks_j, toks_t = jnp.asarray(tokens), torch.from_numpy(tokens).long()
    t0 = time.perf_counter()
    jax.block_until_ready(cache_fn(params, toks_j))
    lmjax_cache_compile = time.perf_counter() - t0
    _, lm_cache_s, _ = timed(lambda: jax.block_until_ready(cache_fn(params, toks_j)), args.reps)
    bridge.run_with_cache(toks_t, names_filter=NAMES)  # warm-up
    _, tl_cache_s, _ = timed(lambda: bridge.run_with_cache(toks_t, names_filter=NAMES), args.reps)
    n_tok = tokens.size
    log(f"cache: lmjax {n_tok / lm_cache_s:.0f} tok/s, TL {n_tok / tl_cache_s:.0f} tok/s")

    # 2. patching heatmap
    t0 = time.perf_counter()
    lm_heat = jax.block_until_ready(lmjax_heatmap())
    lmjax_heat_first = time.perf_counter() - t0
    lm_heat, lm_heat_s, lm_heat_times = timed(lambda: jax.block_until_ready(lmjax_heatmap()), args.reps)
    lmjax_heat_warm = first_call_in_new_process(args)

    _, clean_cache = bridge.run_with_cache(torch.from_numpy(clean).long())

    def tl_metric(logits):
        return logits[0, -1, TARGET] - logits[0, -1, CONTRAST]

    def tl_heatmap():
        return patching.get_act_patch_resid_pre(bridge, torch.from_numpy(corrupt).long(), clean_cache, tl_metric)

    tl_heat, tl_heat_s, tl_heat_times = timed(tl_heatmap, args.tl_reps)
    tl_heat = tl_heat.numpy()
    diff = float(np.abs(tl_heat - lm_heat).max())
    scale = float(np.abs(tl_heat).max())
    log(f"heatmap: lmjax {lm_heat_s:.2f} s (first call {lmjax_heat_first:.1f} s, {lmjax_heat_warm:.1f} s in a new "
        f"process with the compilation cache), TL {tl_heat_s:.1f} s; max diff {diff:.2e}")

    print(json.dumps({
        "machine": machine(backend=jax.default_backend(), torch_num_threads=torch.get_num_threads()),
        "model": "GPT-2 small shape (12x768, vocab 50257), random weights, float32",
        "centred_logits_max_abs_diff": float(check),
        "cache": {"hooks": NAMES, "batch": list(tokens.shape),
                  "lmjax_tokens_per_s": n_tok / lm_cache_s, "transformer_lens_tokens_per_s": n_tok / tl_cache_s,
                  "speedup": tl_cache_s / lm_cache_s, "lmjax_compile_s": lmjax_cache_compile},
        "heatmap": {"shape": list(lm_heat.shape), "lmjax_s": lm_heat_s, "lmjax_first_call_s": lmjax_heat_first,
                    "lmjax_times": lm_heat_times, "transformer_lens_s": tl_heat_s, "transformer_lens_times": tl_heat_times,
                    "speedup": tl_heat_s / lm_heat_s, "speedup_incl_compile": tl_heat_s / lmjax_heat_first,
                    "lmjax_first_call_new_process_warm_cache_s": lmjax_heat_warm,
                    "speedup_incl_first_call_warm_cache": tl_heat_s / lmjax_heat_warm,
                    "max_abs_diff": diff, "max_abs_metric": scale, "agree_within_1e-3_relative": diff <= 1e-3 * scale},
    }, indent=1))


if __name__ == "__main__":
    main()
