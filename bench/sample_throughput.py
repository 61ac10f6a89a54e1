"""Decoding throughput of lmjax's compiled sampler vs Hugging Face `generate`, on this CPU.

    python bench/sample_throughput.py [--new_tokens 128 --prompt_len 16 --batches 1,16 --skip_torch]

Model: GPT-2 small's shape (12 layers, d_model 768, 12 heads, vocab 50257, context 1024,
124M parameters), random weights, float32, greedy, KV cache on in both. Prints one JSON
object: new tokens/s at each batch size, compile time, and the same for
`transformers.GPT2LMHeadModel.generate` (PyTorch CPU) in the same run, with ratios.

Batch-1 decoding is memory-bound: every new token reads every parameter once, so the
ceiling is (measured read bandwidth) / (parameter bytes). The bandwidth is measured here
by summing a 0.5 GiB float32 array (jitted XLA reduction and numpy, the larger counts),
once per round right before the decodes it is compared with: on a shared machine the
bandwidth moves with other tenants' load, and a probe taken minutes apart would not
describe the same machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from _machine import machine  # bench/, beside this script
from lmjax.model import ModelConfig, Transformer
from lmjax.sample import generate
from lmjax.model.accounting import count_params
from lmjax.train.steps import init_params

GPT2_SMALL = dict(vocab_size=50257, n_layer=12, d_model=768, n_head=12, max_len=1024, mlp="gelu_tanh")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def read_bandwidth(gib: float = 1.0, reps: int = 5) -> dict:
    """Bytes/s of a streaming read (sum of a large float32 array), best of `reps`."""
    n = int(gib * 2**30 / 4)
    x = jnp.ones((n,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best_xla = min(_timed(lambda: f(x).block_until_ready()) for _ in range(reps))
    host = np.ones((n,), np.float32)
    best_np = min(_timed(lambda: host.sum()) for _ in range(reps))
    return {"xla_sum_GBps": 4 * n / best_xla / 1e9, "numpy_sum_GBps": 4 * n / best_np / 1e9}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def setup_lmjax(batch: int, prompt_len: int, new_tokens: int):
    """-> (run, info): run() decodes `new_tokens` greedily for `batch` prompts."""
    cfg = ModelConfig(**GPT2_SMALL)
    model = Transformer(cfg)
    params = init_params(model, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
    run = lambda: generate(model, params, prompts, max_new_tokens=new_tokens, temperature=0.0)
    return run, {"compile_plus_first_run_s": _timed(run), "params": count_params(params)}


def setup_hf(batch: int, prompt_len: int, new_tokens: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    model = GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len))
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=0)
        assert out.shape[1] == prompt_len + new_tokens

    run()  # warm-up
    return run, {"torch_threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3, help="rounds; each times every implementation once")
    p.add_argument("--skip_torch", action="store_true")
    args = p.parse_args()

    result = {"machine": machine(backend=jax.default_backend(), devices=jax.device_count()),
              "model": "GPT-2 small shape, random weights, float32, greedy",
              "timing": "rounds of (bandwidth probe, lmjax, transformers); tokens/s from each round's run; "
                        "the bandwidth fraction is taken per round (probe and decode under the same load), "
                        "its median reported",
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batches": {}}
    for batch in [int(b) for b in args.batches.split(",")]:
        log(f"batch {batch}: compiling lmjax ...")
        runners = {"lmjax": setup_lmjax(batch, args.prompt_len, args.new_tokens)}
        if not args.skip_torch:
            runners["hf_generate"] = setup_hf(batch, args.prompt_len, args.new_tokens)
        param_bytes = 4 * runners["lmjax"][1]["params"]
        speeds = {name: [] for name in runners}
        bandwidths, fractions = [], []
        for r in range(args.reps):
            bw = max(read_bandwidth(gib=0.5, reps=3).values()) * 1e9
            for name, (run, _) in runners.items():
                speeds[name].append(batch * args.new_tokens / _timed(run))
            bandwidths.append(bw)
            fractions.append(speeds["lmjax"][-1] / (bw / param_bytes))
            log(f"  round {r}: bandwidth {bw / 1e9:.1f} GB/s, "
                + ", ".join(f"{n} {v[-1]:.1f} tok/s" for n, v in speeds.items()))
        row = {name: {"tokens_per_s": statistics.median(speeds[name]), "tokens_per_s_rounds": speeds[name], **info}
               for name, (_, info) in runners.items()}
        if batch == 1:
            row["read_bandwidth_GBps_rounds"] = [b / 1e9 for b in bandwidths]
            row["bandwidth_limit_tokens_per_s"] = statistics.median(bandwidths) / param_bytes
            row["lmjax_fraction_of_bandwidth_limit"] = statistics.median(fractions)
            row["lmjax_fraction_of_bandwidth_limit_rounds"] = fractions
        if "hf_generate" in row:
            row["lmjax_vs_hf"] = row["lmjax"]["tokens_per_s"] / row["hf_generate"]["tokens_per_s"]
        result["batches"][str(batch)] = row
        log(json.dumps(row))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
