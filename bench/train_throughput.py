"""Training throughput on this machine: lmjax vs. two PyTorch baselines, in one run.

Prints ONE JSON object on stdout (progress goes to stderr):

- `matmul_peak_flops`: the best float32 jitted-matmul FLOP/s of JAX over a few square
  sizes (lmjax.train.mfu.matmul_peak_probe); this is the MFU denominator of every row.
  `torch_matmul_peak_flops` is the same probe run with torch, for reference.
- For each model size (GPT-2-shaped: LayerNorm, GELU(tanh), biases, learned positions,
  tied embeddings, dropout 0), steady-state tokens/s of a full training step (forward,
  backward, clipped AdamW update) of
    * lmjax: the real training code (init_state / make_train_step / make_optimizer);
    * transformers.GPT2LMHeadModel (PyTorch, loss via labels=);
    * nanogpt_torch: a minimal nanoGPT-style PyTorch model written below (fused qkv,
      F.scaled_dot_product_attention(is_causal=True), tied head), AdamW fused/foreach.
  MFU uses one FLOP formula for all three (lmjax.scaling.accounting.flops_per_token:
  6 N + 12 L d T, the PaLM / nanoGPT convention).

Vocabulary: 65 by default, nanoGPT's shakespeare_char character vocabulary, which is what
the reference figures this benchmark is compared to were measured with. With GPT-2's BPE
vocabulary (`--vocab 50257`) the output head (d_model x 50257, plus the softmax over 50257
logits) dominates the step at these small widths and the comparison becomes mostly one of
a single large matmul and a cross-entropy.

    python bench/train_throughput.py                       # 6x384 and 12x768, B=8, T=256
    python bench/train_throughput.py --sizes 6x384 --steps 20 --skip_torch
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_sizes(text: str):
    """'6x384,12x768' -> [(6, 384, 6), (12, 768, 12)]; heads = d_model // 64 unless 'LxDxH'."""
    out = []
    for item in text.split(","):
        parts = [int(p) for p in item.strip().lower().split("x")]
        if len(parts) == 2:
            n_layer, d_model = parts
            n_head = max(d_model // 64, 1)
        elif len(parts) == 3:
            n_layer, d_model, n_head = parts
        else:
            raise ValueError(f"bad size {item!r}: want LAYERSxD_MODEL or LAYERSxD_MODELxHEADS")
        out.append((n_layer, d_model, n_head))
    return out


def parse_steps(text: str, n_sizes: int):
    """'20,5' -> [20, 5]; a single number applies to every size; the last repeats."""
    steps = [int(s) for s in str(text).split(",")]
    return [steps[min(i, len(steps) - 1)] for i in range(n_sizes)]


def summarise(step_times, tokens_per_step):
    """Steady-state tokens/s from per-step wall times: median step (robust to noise)."""
    med = statistics.median(step_times)
    return {
        "tokens_per_s": tokens_per_step / med,
        "tokens_per_s_mean": tokens_per_step * len(step_times) / sum(step_times),
        "step_s_median": med,
        "step_s_min": min(step_times),
        "step_s_max": max(step_times),
        "timed_steps": len(step_times),
    }


# --------------------------------------------------------------------------- peaks


def jax_matmul_peak(sizes, reps):
    from lmjax.train.mfu import matmul_peak_probe

    return {n: matmul_peak_probe(n, reps=reps) for n in sizes}


def torch_matmul_peak(sizes, reps):
    import torch

    out = {}
    with torch.no_grad():
        for n in sizes:
            g = torch.Generator().manual_seed(0)
            a = torch.randn(n, n, generator=g, dtype=torch.float32)
            b = torch.randn(n, n, generator=g, dtype=torch.float32)
            torch.mm(a, b)
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                torch.mm(a, b)
                best = min(best, time.perf_counter() - t0)
            out[n] = 2 * n**3 / best
    return out


# --------------------------------------------------------------------------- data


def make_batches(n, batch, seq, vocab, seed=0):
    """n random token batches (numpy int32), inputs and next-token targets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
        out.append((toks[:, :-1].copy(), toks[:, 1:].copy()))
    return out


# --------------------------------------------------------------------------- lmjax


def bench_lmjax(n_layer, d_model, n_head, args, steps, batches):
    import jax
    import ml_collections

    from lmjax import sharding
    from lmjax.model import ModelConfig, Transformer
    from lmjax.scaling.accounting import count_params, flops_per_token
    from lmjax.train.optimizer import make_optimizer
    from lmjax.train.steps import init_state, make_train_step

    cfg = ModelConfig(
        vocab_size=args.vocab,
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        max_len=args.seq,
        mlp="gelu_tanh",
        dropout=0.0,
        use_bias=True,
        tie_embeddings=True,
        pos_embedding="learned",
        norm="layernorm",
    )
    model = Transformer(cfg)
    opt_cfg = ml_collections.ConfigDict(
        dict(lr=1e-3, end_lr=1e-4, schedule="cosine", warmup_steps=10, b1=0.9, b2=0.95, eps=1e-8,
             weight_decay=0.1, clip_norm=1.0)
    )
    total = args.warmup + steps
    optimizer = make_optimizer(opt_cfg, total)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    bsh = sharding.batch_sharding(mesh)
    dev_batches = [jax.device_put({"inputs": x, "targets": y}, bsh) for x, y in batches]

    state = init_state(model, optimizer, mesh, seed=0)
    n_params = count_params(state["params"])
    train_step = make_train_step(model, optimizer)

    t0 = time.perf_counter()
    compiled = train_step.lower(state, dev_batches[0]).compile()
    compile_s = time.perf_counter() - t0

    losses = []
    for i in range(args.warmup):
        state, metrics = compiled(state, dev_batches[i % len(dev_batches)])
        losses.append(float(metrics["loss"].block_until_ready()))
    times = []
    for i in range(steps):
        batch = dev_batches[(args.warmup + i) % len(dev_batches)]
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        metrics["loss"].block_until_ready()
        times.append(time.perf_counter() - t0)
        losses.append(float(metrics["loss"]))
    res = summarise(times, args.batch * args.seq)
    res.update(compile_s=compile_s, n_params=n_params, first_loss=losses[0], last_loss=losses[-1])
    return res, flops_per_token(cfg, args.seq)


# --------------------------------------------------------------------------- torch


def torch_adamw(torch, params, **kw):
    """AdamW, fused on CPU when this torch has it, else foreach; -> (optimizer, which)."""
    for variant in ("fused", "foreach"):
        try:
            opt = torch.optim.AdamW(params, **kw, **{variant: True})
            return opt, variant
        except (RuntimeError, TypeError, ValueError):
            continue
    return torch.optim.AdamW(params, **kw), "for-loop"


def _nanogpt_module(torch):
    """A minimal nanoGPT-style GPT in PyTorch (our own code): the "nanoGPT" baseline."""
    nn = torch.nn
    F = torch.nn.functional

    class SelfAttention(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.h = h
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(x).split(d, dim=2)
            q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(b, t, d))

    class Block(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = SelfAttention(d, h)
            self.ln2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.fc_out = nn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self, vocab, seq, n_layer, d, h):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.wpe = nn.Embedding(seq, d)
            self.blocks = nn.ModuleList([Block(d, h) for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab, bias=False)
            self.head.weight = self.wte.weight  # tied
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif name.endswith("bias") and "ln" not in name:
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    return GPT


def _torch_loop(torch, step, params, batches, args, steps):
    losses = []
    for i in range(args.warmup):
        losses.append(step(*batches[i % len(batches)]))
    times = []
    for i in range(steps):
        x, y = batches[(args.warmup + i) % len(batches)]
        t0 = time.perf_counter()
        losses.append(step(x, y))  # .item() inside: CPU work is done
        times.append(time.perf_counter() - t0)
    res = summarise(times, args.batch * args.seq)
    res.update(n_params=sum(p.numel() for p in params), first_loss=losses[0], last_loss=losses[-1])
    return res


def bench_gpt2lmhead(n_layer, d_model, n_head, args, steps, batches):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=args.vocab, n_positions=args.seq, n_embd=d_model, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None,
    )
    model = GPT2LMHeadModel(cfg)
    model.train()
    params = list(model.parameters())
    opt, variant = torch_adamw(torch, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tb = [(torch.from_numpy(x).long(), torch.from_numpy(y).long()) for x, y in batches]

    def step(x, y):
        # labels= shifts inside the model (T-1 predicted positions of the same T-token
        # forward): the cost is the same as T targets.
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    res = _torch_loop(torch, step, params, tb, args, steps)
    res.update(optimizer=variant, attn_implementation=getattr(model.config, "_attn_implementation", None))
    return res


def bench_nanogpt_torch(n_layer, d_model, n_head, args, steps, batches):
    import torch

    torch.manual_seed(0)
    model = _nanogpt_module(torch)(args.vocab, args.seq, n_layer, d_model, n_head)
    model.train()
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt, variant = torch_adamw(torch, groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    tb = [(torch.from_numpy(x).long(), torch.from_numpy(y).long()) for x, y in batches]

    def step(x, y):
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    res = _torch_loop(torch, step, params, tb, args, steps)
    res.update(optimizer=variant)
    return res


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="6x384,12x768", help="LAYERSxD_MODEL[xHEADS],...; heads default d/64")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", default="20,5", help="timed steps per size (one value, or one per size)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--vocab", type=int, default=65, help="65 = shakespeare_char; 50257 = GPT-2 BPE")
    p.add_argument("--peak_sizes", default="1024,2048")
    p.add_argument("--peak_reps", type=int, default=10)
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0 = leave default)")
    p.add_argument("--skip_torch", action="store_true")
    args = p.parse_args(argv)

    sizes = parse_sizes(args.sizes)
    steps = parse_steps(args.steps, len(sizes))
    peak_sizes = [int(n) for n in args.peak_sizes.split(",")]

    import jax

    torch = None
    if not args.skip_torch:
        import torch
        import transformers

        if args.torch_threads > 0:
            torch.set_num_threads(args.torch_threads)

    log(f"jax {jax.__version__} on {jax.devices()}; matmul peak probe at n={peak_sizes}")
    jpeak = jax_matmul_peak(peak_sizes, args.peak_reps)
    peak = max(jpeak.values())
    out = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "torch": None if torch is None else torch.__version__,
            "transformers": None if torch is None else transformers.__version__,
            "torch_num_threads": None if torch is None else torch.get_num_threads(),
        },
        "settings": {
            "batch": args.batch, "seq": args.seq, "vocab": args.vocab, "warmup_steps": args.warmup,
            "timed_steps": dict(zip([f"{l}x{d}" for l, d, _ in sizes], steps)),
            "dtype": "float32", "dropout": 0.0,
            "tokens_per_s": "batch*seq / median wall time of one timed step (after compile + warmup)",
        },
        "matmul_peak_flops": peak,
        "matmul_peak_flops_by_n": {str(n): v for n, v in jpeak.items()},
        "mfu_denominator": "matmul_peak_flops: best JAX f32 jitted square matmul (lmjax.train.mfu.matmul_peak_probe)",
        "flops_formula": "lmjax.scaling.accounting.flops_per_token: 6*N_matmul + 12*n_layer*d_model*seq",
    }
    log(f"  jax peak {peak / 1e9:.1f} GFLOP/s {dict((n, round(v / 1e9, 1)) for n, v in jpeak.items())}")
    if torch is not None:
        tpeak = torch_matmul_peak(peak_sizes, args.peak_reps)
        out["torch_matmul_peak_flops"] = max(tpeak.values())
        out["torch_matmul_peak_flops_by_n"] = {str(n): v for n, v in tpeak.items()}
        log(f"  torch peak {max(tpeak.values()) / 1e9:.1f} GFLOP/s")

    results = {}
    for (n_layer, d_model, n_head), n_steps in zip(sizes, steps):
        name = f"{n_layer}x{d_model}"
        batches = make_batches(max(args.warmup + n_steps, 1), args.batch, args.seq, args.vocab)
        row = {"n_layer": n_layer, "d_model": d_model, "n_head": n_head}
        log(f"[{name}] lmjax: compiling + {args.warmup} warmup + {n_steps} timed steps")
        lm, fpt = bench_lmjax(n_layer, d_model, n_head, args, n_steps, batches)
        row["flops_per_token"] = fpt
        row["lmjax"] = lm
        log(f"[{name}] lmjax {lm['tokens_per_s']:.0f} tok/s (compile {lm['compile_s']:.1f}s)")
        if torch is not None:
            for key, fn in (("gpt2lmheadmodel", bench_gpt2lmhead), ("nanogpt_torch", bench_nanogpt_torch)):
                log(f"[{name}] {key}: {args.warmup} warmup + {n_steps} timed steps")
                row[key] = fn(n_layer, d_model, n_head, args, n_steps, batches)
                log(f"[{name}] {key} {row[key]['tokens_per_s']:.0f} tok/s")
        for key in ("lmjax", "gpt2lmheadmodel", "nanogpt_torch"):
            if key in row:
                row[key]["mfu"] = row[key]["tokens_per_s"] * fpt / peak
        if torch is not None:
            row["lmjax_vs_gpt2lmheadmodel"] = lm["tokens_per_s"] / row["gpt2lmheadmodel"]["tokens_per_s"]
            row["lmjax_vs_nanogpt_torch"] = lm["tokens_per_s"] / row["nanogpt_torch"]["tokens_per_s"]
        results[name] = row
    out["results"] = results
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
