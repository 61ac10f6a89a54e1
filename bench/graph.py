"""Attribution-graph build time and peak memory on this CPU: lmjax.graph vs circuit-tracer 0.5.

    python bench/graph.py > graph.json          # 64, 256, 1024 tokens both; 2048 lmjax alone (~15 min)
    python bench/graph.py --quick > graph.json  # smoke run: 32 and 64 tokens, budget 64 (~2 min)

Prints ONE JSON object on stdout (progress goes to stderr). What it does:

1. Model: a GPT-2-shaped lmjax model (`--layers` 4 x `--d_model` 128, 4 heads, MLP 4 x
   d_model, GELU tanh, learned positions, tied embeddings, vocabulary `--vocab` 512,
   context 2048) with O(1)-scale random weights (tests/_model_fixtures.random_params:
   attention patterns far from uniform), exported once through lmjax.hf.export_hf (what
   `lmjax convert --to_hf` writes) into `--workdir`.
2. Transcoders: one per layer (ln2.hook_normalized -> hook_mlp_out), ReLU, width
   `--width_mult` 8 x d_model, lmjax's random init, each feature's b_enc set to minus the
   quantile of its pre-activation on 4 x 512 random tokens that makes it fire on `--l0` /
   width of them (about `--l0` = 64 active features per token and layer), exported once
   through lmjax.sae.interchange.save_circuit_tracer.
3. Prompts: random tokens with the BOS (token 0) first, one per length (`--lengths`, both
   tools; `--lmjax_lengths`, lmjax alone), the same in both.
4. One graph per (tool, length), each in a fresh subprocess (its own heap: the peak RSS
   is this one graph's, `resource.getrusage` in the child, `ru_maxrss`), after a wait for
   a quiet machine: the same node budget (`--max_feature_nodes` 1024), batch size
   (`--batch_size` 64 rows per backward pass), update interval 4, float32.
   * `lmjax`: `lmjax.graph.attribute(..., zero_first_position=True,
     token_vectors="embedding")` (circuit-tracer's conventions), JAX on all cores; its time
     includes compiling its programs (a fresh process, the run's own compilation cache
     empty). `lmjax_warm` is the same graph in the next fresh process, which loads those
     programs from that cache, as a user's second `lmjax explain --graph` would.
     `seconds_again` is a second graph of the same prompt in the same process: lmjax.graph
     keeps its compiled programs across calls (keyed on the shapes), so it compiles nothing.
   * `circuit_tracer`: `circuit_tracer.attribute` on its TransformerLens ReplacementModel
     of the exported model and transcoders (tests/_circuit_tracer.py), torch on all cores.
   Each child also writes the graph's selected features and logit rows; the parent checks
   that both tools built the same graph (same visited features, logit rows to 1e-3).
5. Ratios: circuit-tracer seconds / lmjax seconds per length (wall time, the target; and
   CPU time of all threads, `time.process_time`, which a busy machine disturbs less);
   peak RSS against length, fitted by a line (MiB per token).

The targets this answers: lmjax at least 3x faster than circuit-tracer at equal node
budget; memory growing no faster than linearly in prompt length at a fixed budget; a
2,000+-token prompt traced on the 2-core machine within 24 GiB. Timings on a shared
machine are noisy: the load average before and after each child is in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
for path in (REPO, os.path.join(REPO, "tests"), BENCH):
    if path not in sys.path:
        sys.path.insert(0, path)
from _machine import machine, wait_quiet  # noqa: E402  (bench/, beside this script)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prompt(length: int, vocab: int) -> np.ndarray:
    tokens = np.random.RandomState(length).randint(1, vocab, length).astype(np.int32)
    tokens[0] = 0  # the BOS (tests/_circuit_tracer.BOS)
    return tokens


# -- the model and transcoders (deterministic: every child rebuilds the same ones) ------------

def build(args):
    """(model, params, Transcoders) of the benchmark."""
    import jax
    import jax.numpy as jnp

    from _model_fixtures import GPT2, random_params
    from lmjax.graph import Transcoders
    from lmjax.model import ModelConfig, Transformer
    from lmjax.sae.architectures import Dictionary

    gpt2 = dict(GPT2, mlp="gelu_tanh")
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layer=args.layers, n_head=args.heads,
                      max_len=args.context, dropout=0.0, **gpt2)
    model, params = Transformer(cfg), random_params(cfg)
    hooks_in = [f"blocks.{l}.ln2.hook_normalized" for l in range(args.layers)]
    calib = jnp.asarray(np.random.RandomState(7).randint(1, args.vocab, (4, 512)), jnp.int32)
    _, cache = jax.jit(lambda p, t: model.run_with_cache(p, t, hooks_in))(params, calib)
    width = args.width_mult * args.d_model
    ds, ps = [], []
    for l in range(args.layers):
        d = Dictionary("relu", args.d_model, width, hook_in=hooks_in[l], hook_out=f"blocks.{l}.hook_mlp_out")
        p = d.init(jax.random.key(100 + l))
        x = np.asarray(cache[hooks_in[l]], np.float32).reshape(-1, args.d_model)
        pre = x @ np.asarray(p["W_enc"])
        p["b_enc"] = jnp.asarray(-np.quantile(pre, 1 - args.l0 / width, axis=0), jnp.float32)
        ds.append(d)
        ps.append(p)
    return model, params, Transcoders.of(ds, ps)


def export(args) -> None:
    import _circuit_tracer as ct

    model, params, transcoders = build(args)
    ct.export_model(model.cfg, params, os.path.join(args.workdir, "hf"))
    ct.save_transcoders(transcoders, os.path.join(args.workdir, "transcoders"))


# -- one graph per child ----------------------------------------------------------------------

def child_lmjax(args, length: int) -> dict:
    import jax.numpy as jnp

    from lmjax.graph import attribute

    model, params, transcoders = build(args)
    tokens = jnp.asarray(prompt(length, args.vocab))
    base = peak_rss_mib()
    kw = dict(max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size, update_interval=4,
              zero_first_position=True, token_vectors="embedding")
    t0, c0 = time.perf_counter(), time.process_time()
    graph = attribute(model, params, tokens, transcoders, **kw)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_rss_mib()
    out = dict(seconds=seconds, cpu_seconds=cpu, peak_rss_mib=peak, rss_before_mib=base, n_active=len(graph.active_features),
               n_features=graph.n_features, n_nodes=graph.n_nodes)
    _save(args, "lmjax", length, graph.active_features[graph.selected], graph.rows[graph.n_features:])
    if args.again:
        del graph
        t0 = time.perf_counter()
        attribute(model, params, tokens, transcoders, **kw)
        out["seconds_again"] = time.perf_counter() - t0
    return out


def child_circuit_tracer(args, length: int) -> dict:
    import torch

    import _circuit_tracer as ct

    torch.set_grad_enabled(True)
    model = ct.replacement_model(os.path.join(args.workdir, "hf"), os.path.join(args.workdir, "transcoders"))
    tokens = prompt(length, args.vocab)
    base = peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    graph = ct.trace(model, tokens, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size,
                     update_interval=4)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_rss_mib()
    n_features, n_logits = len(graph.selected_features), len(graph.logit_targets)
    adjacency = graph.adjacency_matrix
    _save(args, "circuit_tracer", length, graph.active_features[graph.selected_features].numpy(),
          adjacency[adjacency.shape[0] - n_logits:].numpy())
    return dict(seconds=seconds, cpu_seconds=cpu, peak_rss_mib=peak, rss_before_mib=base,
                n_active=len(graph.active_features), n_features=n_features, n_nodes=adjacency.shape[0], torch_threads=torch.get_num_threads())


def _save(args, tool: str, length: int, features, logit_rows) -> None:
    np.savez(os.path.join(args.workdir, f"{tool}_{length}.npz"), features=np.asarray(features),
             logit_rows=np.asarray(logit_rows, np.float32))


def same_graph(args, length: int) -> dict:
    a, b = (np.load(os.path.join(args.workdir, f"{t}_{length}.npz")) for t in ("lmjax", "circuit_tracer"))
    same = a["features"].shape == b["features"].shape and bool((a["features"] == b["features"]).all())
    diff = float(np.abs(a["logit_rows"] - b["logit_rows"]).max()) if a["logit_rows"].shape == b["logit_rows"].shape \
        else float("inf")
    return dict(same_visited_features=same, logit_rows_max_abs_diff=diff,
                same_graph=same and diff < 1e-3)


def run_child(args, tool: str, length: int) -> dict:
    """One graph in a fresh process. lmjax's children share this run's own compilation
    cache, empty at the start: "lmjax" compiles (and fills it), "lmjax_warm" is the next
    process of a user, which loads those programs."""
    quiet = wait_quiet(args.quiet_wait)
    before = loadavg()
    env = dict(os.environ, LMJAX_COMPILE_CACHE=args.compile_cache)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if tool == "circuit_tracer":  # transformers would import JAX too: keep the torch side's heap its own
        env.update(USE_FLAX="0", USE_TF="0")
    cmd = [sys.executable, __file__, "--child", f"{tool.removesuffix('_warm')}:{length}"] + args.passthrough
    log(f"{tool} at {length} tokens ...")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return dict(error=f"exit status {proc.returncode}", wall_s=time.perf_counter() - t0)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(wall_s=time.perf_counter() - t0, load_before=before, load_after=loadavg(), quiet_at_start=quiet)
    log(f"  {out['seconds']:.1f} s, peak {out['peak_rss_mib']:.0f} MiB, {out['n_active']} active features")
    return out


def linear_fit(lengths, values) -> dict:
    """Peak RSS = a + b * length by least squares, and the worst relative residual."""
    x, y = np.asarray(lengths, np.float64), np.asarray(values, np.float64)
    b, a = np.polyfit(x, y, 1)
    return dict(intercept_mib=a, mib_per_token=b, max_relative_residual=float(np.max(np.abs(a + b * x - y) / y)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="64,256,1024", help="prompt lengths traced by both tools")
    p.add_argument("--lmjax_lengths", default="2048", help="prompt lengths traced by lmjax alone")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--width_mult", type=int, default=8)
    p.add_argument("--l0", type=float, default=64, help="active features per token and layer (calibrated)")
    p.add_argument("--max_feature_nodes", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--quiet_wait", type=float, default=30.0, help="seconds to wait for a quiet machine per child")
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "bench_graph"))
    p.add_argument("--no_again", dest="again", action="store_false", help="skip lmjax's second (compiled) graph")
    p.add_argument("--quick", action="store_true", help="smoke run: small lengths and budget")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.lengths, args.lmjax_lengths, args.max_feature_nodes = "32,64", "128", 64
    args.passthrough = [a for a in sys.argv[1:] if a != "--quick"] + (
        ["--lengths", args.lengths, "--lmjax_lengths", args.lmjax_lengths, "--max_feature_nodes",
         str(args.max_feature_nodes)] if args.quick else [])
    if args.child:
        tool, length = args.child.split(":")
        result = (child_lmjax if tool == "lmjax" else child_circuit_tracer)(args, int(length))
        print(json.dumps(result))
        return

    import jax
    import torch

    os.makedirs(args.workdir, exist_ok=True)
    t_start = time.perf_counter()
    log("exporting the model and transcoders ...")
    export_dir = os.path.join(args.workdir, "hf")
    if os.path.isdir(export_dir):  # a previous run's: rebuilt, the settings may differ
        import shutil
        shutil.rmtree(export_dir)
    export(args)
    both = [int(n) for n in args.lengths.split(",") if n]
    alone = [int(n) for n in args.lmjax_lengths.split(",") if n]
    args.compile_cache = tempfile.mkdtemp(prefix="lmjax-bench-graph-compiled-")
    runs = {"lmjax": {}, "lmjax_warm": {}, "circuit_tracer": {}}
    comparison = {}
    for length in both:
        for tool in ("lmjax", "lmjax_warm", "circuit_tracer"):
            runs[tool][str(length)] = run_child(args, tool, length)
        ok = all("error" not in runs[t][str(length)] for t in ("lmjax", "circuit_tracer"))
        ratio = runs["circuit_tracer"][str(length)]["seconds"] / runs["lmjax"][str(length)]["seconds"] if ok else None
        comparison[str(length)] = dict(speedup_vs_circuit_tracer=ratio, **(same_graph(args, length) if ok else {}))
        if ok:
            comparison[str(length)]["cpu_time_ratio"] = (runs["circuit_tracer"][str(length)]["cpu_seconds"]
                                                         / runs["lmjax"][str(length)]["cpu_seconds"])
            if "error" not in runs["lmjax_warm"][str(length)]:
                comparison[str(length)]["speedup_warm_compilation_cache"] = (
                    runs["circuit_tracer"][str(length)]["seconds"] / runs["lmjax_warm"][str(length)]["seconds"])
            comparison[str(length)]["memory_ratio"] = (runs["circuit_tracer"][str(length)]["peak_rss_mib"]
                                                       / runs["lmjax"][str(length)]["peak_rss_mib"])
    for length in alone:
        runs["lmjax"][str(length)] = run_child(args, "lmjax", length)

    lmjax_ok = {int(n): r for n, r in runs["lmjax"].items() if "error" not in r}
    ct_ok = {int(n): r for n, r in runs["circuit_tracer"].items() if "error" not in r}
    memory = {}
    if len(lmjax_ok) >= 2:
        memory["lmjax_peak_rss_vs_length"] = linear_fit(sorted(lmjax_ok), [lmjax_ok[n]["peak_rss_mib"] for n in sorted(lmjax_ok)])
    if len(ct_ok) >= 2:
        memory["circuit_tracer_peak_rss_vs_length"] = linear_fit(sorted(ct_ok), [ct_ok[n]["peak_rss_mib"] for n in sorted(ct_ok)])
    longest = max(lmjax_ok) if lmjax_ok else None
    result = {
        "benchmark": "attribution graph build: lmjax.graph.attribute vs circuit_tracer.attribute",
        "machine": machine(backend=jax.default_backend(), torch_num_threads=torch.get_num_threads()),
        "settings": {k: getattr(args, k) for k in ("layers", "d_model", "heads", "vocab", "context", "width_mult", "l0",
                                                   "max_feature_nodes", "batch_size", "quick")},
        "runs": runs,
        "comparison": comparison,
        "memory": memory,
        "targets": {
            "min_speedup_vs_circuit_tracer": min((c["speedup_vs_circuit_tracer"] for c in comparison.values()
                                                  if c.get("speedup_vs_circuit_tracer")), default=None),
            "speedup_target": 3.0,
            "longest_lmjax_prompt": longest,
            "longest_lmjax_peak_rss_gib": lmjax_ok[longest]["peak_rss_mib"] / 1024 if longest else None,
            "memory_target_gib": 24,
        },
        "wall_s": time.perf_counter() - t_start,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
