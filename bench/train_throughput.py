"""Training throughput on this machine: lmjax vs. two PyTorch baselines, in one run.

Prints ONE JSON object on stdout (progress goes to stderr):

- `matmul_peak_flops`: the best float32 jitted-matmul FLOP/s of JAX over a few square
  sizes (lmjax.train.mfu.matmul_peak_probe); this is the MFU denominator of every row.
  `torch_matmul_peak_flops` is the same probe run with torch, for reference.
- For each model size (GPT-2-shaped: LayerNorm, GELU(tanh), biases, learned positions,
  tied embeddings, dropout 0), steady-state tokens/s of a full training step (forward,
  backward, clipped AdamW update) of
    * lmjax: the real training code (init_state / make_train_step / make_optimizer), with
      lmjax's default micro-batching (train.grad_accum = 0, auto: on CPU the batch runs as
      micro-batches of <= 512 tokens, here 4 of 2 rows; one optimizer step on the whole
      batch), and again as one pass over the batch (`lmjax_grad_accum1`);
    * transformers.GPT2LMHeadModel (PyTorch, loss via labels=);
    * nanogpt_torch: a minimal nanoGPT-style PyTorch model (bench/_torch_gpt.py: fused qkv,
      F.scaled_dot_product_attention(is_causal=True), tied head), AdamW fused/foreach.
  MFU uses one FLOP formula for all three (lmjax.model.accounting.flops_per_token:
  6 N + 12 L d T, the PaLM / nanoGPT convention). `mlp_matmul_flops` times the model's
  own [batch*seq, d] @ [d, 4d] matmul, to check that the square probe is a fair peak.

Timing: the three implementations are interleaved in rounds (round-robin; in each round
one untimed step after the switch, then --block timed steps) so that load from other
processes on a shared machine falls on all of them alike; before each timed step the
script waits up to --quiet_wait seconds for no other runnable task. tokens/s is
batch*seq over the median step time. See bench/README.md.

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
import statistics
import sys
import time

from _machine import machine, wait_quiet  # bench/, on sys.path when run as a script
from _torch_gpt import torch_gpt  # bench/, on sys.path when run as a script


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


# --------------------------------------------------------------------------- contention


# --------------------------------------------------------------------------- peaks


def jax_matmul_peak(sizes, reps, quiet_s=0.0):
    from lmjax.train.mfu import matmul_peak_probe

    out = {}
    for n in sizes:
        wait_quiet(quiet_s)
        out[n] = matmul_peak_probe(n, reps=reps)
    return out


def jax_matmul_flops(m, k, n, reps, quiet_s=0.0):
    """Best-of-`reps` FLOP/s of one jitted float32 [m, k] @ [k, n] (probe-style, any shape)."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (m, k), jnp.float32)
    b = jax.random.normal(kb, (k, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    wait_quiet(quiet_s)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best


def torch_matmul_peak(sizes, reps, quiet_s=0.0):
    import torch

    out = {}
    with torch.no_grad():
        for n in sizes:
            wait_quiet(quiet_s)
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


# --------------------------------------------------------------------------- runners
#
# Each setup_* builds one implementation and returns a Runner: `step(i)` runs training
# step i to completion (loss on the host) and returns the loss. The driver interleaves
# the implementations step by step, so that contention from other processes on this
# machine falls on all of them alike instead of on whichever happened to run then.


class Runner:
    def __init__(self, name, step, info):
        self.name, self.step, self.info = name, step, info
        self.times: list[float] = []
        self.losses: list[float] = []
        self.quiet_starts = 0


def setup_lmjax(n_layer, d_model, n_head, args, total_steps, batches, grad_accum="auto"):
    import jax
    import ml_collections

    from lmjax import sharding
    from lmjax.model import ModelConfig, Transformer
    from lmjax.model.accounting import count_params, flops_per_token
    from lmjax.train.optimizer import make_optimizer
    from lmjax.train.steps import auto_grad_accum, init_state, make_train_step

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
    optimizer = make_optimizer(opt_cfg, total_steps)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    bsh = sharding.batch_sharding(mesh)
    dev_batches = [jax.device_put({"inputs": x, "targets": y}, bsh) for x, y in batches]

    holder = {"state": init_state(model, optimizer, mesh, seed=0)}
    n_params = count_params(holder["state"]["params"])
    # "auto" is what `lmjax train` does by default (train.grad_accum = 0)
    name = "lmjax" if grad_accum == "auto" else f"lmjax_grad_accum{grad_accum}"
    grad_accum = auto_grad_accum(args.batch, args.seq) if grad_accum == "auto" else int(grad_accum)
    train_step = make_train_step(model, optimizer, grad_accum=grad_accum)

    t0 = time.perf_counter()
    compiled = train_step.lower(holder["state"], dev_batches[0]).compile()
    compile_s = time.perf_counter() - t0

    def step(i):
        # train_step donates the state: always rebind it.
        holder["state"], metrics = compiled(holder["state"], dev_batches[i % len(dev_batches)])
        return float(metrics["loss"].block_until_ready())

    info = {"compile_s": compile_s, "n_params": n_params, "grad_accum": grad_accum}
    return Runner(name, step, info), flops_per_token(cfg, args.seq)


def torch_adamw(torch, params, **kw):
    """AdamW, fused on CPU when this torch has it, else foreach; -> (optimizer, which)."""
    for variant in ("fused", "foreach"):
        try:
            return torch.optim.AdamW(params, **kw, **{variant: True}), variant
        except (RuntimeError, TypeError, ValueError):
            continue
    return torch.optim.AdamW(params, **kw), "for-loop"


def _torch_batches(torch, batches):
    return [(torch.from_numpy(x).long(), torch.from_numpy(y).long()) for x, y in batches]


def setup_gpt2lmhead(n_layer, d_model, n_head, args, total_steps, batches):
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
    tb = _torch_batches(torch, batches)

    def step(i):
        x, _ = tb[i % len(tb)]
        # labels= shifts inside the model (T-1 predicted positions of the same T-token
        # forward): the cost is that of T targets.
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    info = {
        "n_params": sum(p.numel() for p in params),
        "optimizer": f"torch.optim.AdamW ({variant})",
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }
    return Runner("gpt2lmheadmodel", step, info)


def setup_nanogpt_torch(n_layer, d_model, n_head, args, total_steps, batches):
    import torch

    torch.manual_seed(0)
    model = torch_gpt(torch)(args.vocab, args.seq, n_layer, d_model, n_head)
    model.train()
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt, variant = torch_adamw(torch, groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    tb = _torch_batches(torch, batches)

    def step(i):
        x, y = tb[i % len(tb)]
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    info = {"n_params": sum(p.numel() for p in params), "optimizer": f"torch.optim.AdamW ({variant})"}
    return Runner("nanogpt_torch", step, info)


def run_interleaved(runners, warmup, steps, block, pause_s, quiet_s):
    """Warm every runner up, then time `steps` steps of each, in rounds of `block` steps.

    Each round gives every runner (in rotating order) one untimed step and then `block`
    timed ones: the first step after another runtime has run pays for the switch (with
    three 12x768 models alive, lmjax's first step after a torch step measured ~40% slower
    than the next), which is not steady-state throughput.
    """
    for r in runners:
        for i in range(warmup):
            r.losses.append(r.step(i))
    step = warmup
    rounds = -(-steps // block)
    for k in range(rounds):
        n = min(block, steps - k * block)
        order = runners[k % len(runners):] + runners[: k % len(runners)]  # rotate who goes first
        for r in order:
            time.sleep(pause_s)  # let the previous runtime's worker threads go idle
            if len(runners) > 1:
                r.losses.append(r.step(step))  # untimed: absorbs the switch from the other runtime
            for j in range(n):
                r.quiet_starts += wait_quiet(quiet_s)
                t0 = time.perf_counter()
                r.losses.append(r.step(step + 1 + j))
                r.times.append(time.perf_counter() - t0)
        step += n + 1


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="6x384,12x768", help="LAYERSxD_MODEL[xHEADS],...; heads default d/64")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", default="20,8", help="timed steps per size (one value, or one per size)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--block", type=int, default=4,
                   help="timed steps per implementation per round (each round starts with one untimed step)")
    p.add_argument("--vocab", type=int, default=65, help="65 = shakespeare_char (default); 50257 = GPT-2 BPE")
    p.add_argument("--peak_sizes", default="1024,2048", help="square matmul sizes of the peak probe")
    p.add_argument("--peak_reps", type=int, default=10)
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0 = leave default)")
    p.add_argument("--pause", type=float, default=0.05, help="seconds of idle before each timed step")
    p.add_argument("--quiet_wait", type=float, default=2.0,
                   help="before each timed step / probe, wait up to this many seconds for other processes "
                        "to go idle (0 = don't wait)")
    p.add_argument("--grad_accum", default="auto,1",
                   help="lmjax micro-batches per step to time, one runner each: 'auto' (runner 'lmjax') is "
                        "lmjax's default, micro-batches of <= 512 tokens on CPU; N (runner 'lmjax_grad_accumN') "
                        "forces N. Same batch and optimizer step either way")
    p.add_argument("--skip_torch", action="store_true", help="time lmjax only")
    args = p.parse_args(argv)

    sizes = parse_sizes(args.sizes)
    steps = parse_steps(args.steps, len(sizes))
    peak_sizes = [int(n) for n in args.peak_sizes.split(",")]
    accums = args.grad_accum.split(",")
    bad = [a for a in accums if a != "auto" and not (a.isdigit() and int(a) >= 1 and args.batch % int(a) == 0)]
    if bad:
        p.error(f"--grad_accum {bad}: each must be 'auto' or an integer >= 1 that divides --batch={args.batch}")

    import jax

    torch = None
    if not args.skip_torch:
        import torch

        if args.torch_threads > 0:
            torch.set_num_threads(args.torch_threads)

    def probe(label):
        log(f"matmul peak probe ({label}) at n={peak_sizes}, best of {args.peak_reps}")
        j = jax_matmul_peak(peak_sizes, args.peak_reps, args.quiet_wait)
        t = torch_matmul_peak(peak_sizes, args.peak_reps, args.quiet_wait) if torch is not None else {}
        log("  jax " + ", ".join(f"{n}: {v / 1e9:.1f}" for n, v in j.items()) + " GFLOP/s"
            + ("; torch " + ", ".join(f"{n}: {v / 1e9:.1f}" for n, v in t.items()) if t else ""))
        return j, t

    jpeak, tpeak = probe("start")
    peak = max(jpeak.values())
    out = {
        "machine": machine(backend=jax.default_backend(),
                           torch_num_threads=None if torch is None else torch.get_num_threads()),
        "settings": {
            "batch": args.batch, "seq": args.seq, "vocab": args.vocab, "warmup_steps": args.warmup,
            "timed_steps": {f"{l}x{d}": n for (l, d, _), n in zip(sizes, steps)},
            "dtype": "float32", "dropout": 0.0,
            "timing": f"implementations interleaved in rounds (each: 1 untimed step after the switch, then "
                      f"{args.block} timed steps); tokens_per_s = batch*seq / median step wall time; "
                      "tokens_per_s_best uses the fastest step",
            "block": args.block,
            "quiet_wait_s": args.quiet_wait,
        },
        "matmul_peak_flops": peak,
        "matmul_peak_flops_by_n": {},
        "mfu_denominator": "matmul_peak_flops: best JAX float32 jitted square matmul "
                           "(lmjax.train.mfu.matmul_peak_probe; best of the probes at the start and "
                           "the end of the run), used for every implementation",
        "flops_formula": "lmjax.model.accounting.flops_per_token: 6*N_matmul + 12*n_layer*d_model*seq",
    }
    results = {}
    tokens_per_step = args.batch * args.seq
    for (n_layer, d_model, n_head), n_steps in zip(sizes, steps):
        name = f"{n_layer}x{d_model}"
        total = args.warmup + n_steps + -(-n_steps // args.block)
        batches = make_batches(total, args.batch, args.seq, args.vocab)
        runners = []
        for accum in accums:
            log(f"[{name}] lmjax, grad_accum={accum}: init + compile")
            lm, fpt = setup_lmjax(n_layer, d_model, n_head, args, total, batches, accum)
            log(f"[{name}]   compiled in {lm.info['compile_s']:.1f}s")
            runners.append(lm)
        lmjax_names = [r.name for r in runners]
        if torch is not None:
            runners += [setup_gpt2lmhead(n_layer, d_model, n_head, args, total, batches),
                        setup_nanogpt_torch(n_layer, d_model, n_head, args, total, batches)]
        log(f"[{name}] {args.warmup} warmup + {n_steps} timed steps of each of "
            f"{[r.name for r in runners]}, interleaved in rounds of 1 untimed + {args.block} timed")
        run_interleaved(runners, args.warmup, n_steps, args.block, args.pause, args.quiet_wait)
        row = {"n_layer": n_layer, "d_model": d_model, "n_head": n_head, "seq": args.seq,
               "batch": args.batch, "vocab": args.vocab, "flops_per_token": fpt}
        for r in runners:
            med = statistics.median(r.times)
            row[r.name] = {
                "tokens_per_s": tokens_per_step / med,
                "mfu": None,  # filled in below, once the peak is final
                "tokens_per_s_best": tokens_per_step / min(r.times),
                "mfu_best": None,
                "step_s_median": med,
                "step_s": [round(t, 4) for t in r.times],
                "steps_started_quiet": r.quiet_starts,
                **r.info,
                "loss_first": r.losses[0],
                "loss_last": r.losses[-1],
            }
            log(f"[{name}]   {r.name:16s} {row[r.name]['tokens_per_s']:8.0f} tok/s  "
                f"MFU ~{row[r.name]['tokens_per_s'] * fpt / peak:.1%}  "
                f"(best step {row[r.name]['tokens_per_s_best']:.0f} tok/s)")
        if torch is not None:
            for mine in lmjax_names:
                for other in ("gpt2lmheadmodel", "nanogpt_torch"):
                    row[f"{mine}_vs_{other}"] = row[mine]["tokens_per_s"] / row[other]["tokens_per_s"]
                    row[f"{mine}_vs_{other}_best"] = row[mine]["tokens_per_s_best"] / row[other]["tokens_per_s_best"]
        # Is the square probe a fair peak for this model? The MLP's first matmul at this
        # batch: [batch*seq, d_model] @ [d_model, 4*d_model].
        m, k, n = args.batch * args.seq, d_model, 4 * d_model
        row["mlp_matmul_flops"] = jax_matmul_flops(m, k, n, args.peak_reps, args.quiet_wait)
        row["mlp_matmul_shape"] = f"[{m}x{k}] @ [{k}x{n}]"
        log(f"[{name}]   MLP-shaped matmul {row['mlp_matmul_shape']}: {row['mlp_matmul_flops'] / 1e9:.1f} GFLOP/s")
        results[name] = row
        del runners, lm
    out["results"] = results

    # Probe again at the end and keep the best of both: contention from other processes
    # during one probe must not deflate the peak (and inflate every MFU).
    jpeak2, tpeak2 = probe("end")
    for n, v in jpeak2.items():
        jpeak[n] = max(jpeak[n], v)
    out["matmul_peak_flops"] = peak = max(jpeak.values())
    out["matmul_peak_flops_by_n"] = {str(n): v for n, v in jpeak.items()}
    if torch is not None:
        for n, v in tpeak2.items():
            tpeak[n] = max(tpeak[n], v)
        out["torch_matmul_peak_flops"] = max(tpeak.values())
        out["torch_matmul_peak_flops_by_n"] = {str(n): v for n, v in tpeak.items()}
    for row in results.values():
        for key, entry in row.items():
            if isinstance(entry, dict) and "tokens_per_s" in entry:
                row[key]["mfu"] = row[key]["tokens_per_s"] * row["flops_per_token"] / peak
                row[key]["mfu_best"] = row[key]["tokens_per_s_best"] * row["flops_per_token"] / peak
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
