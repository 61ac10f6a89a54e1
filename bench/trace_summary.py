"""Where a GPU step's time goes: GPU kernel time from a jax.profiler perfetto trace.

    python bench/trace_summary.py TRACE.json.gz [--steps 3] [--hlo AFTER_OPTIMIZATIONS.txt]

The trace comes from `bench/accelerator_mfu.py --profile DIR` (DIR/<size>/plugins/profile/
*/perfetto_trace.json.gz). Kernels are grouped as matmul / attention / memset / other
(XLA's fusions: elementwise, reductions, the optimizer) and listed by total time per step.

With --hlo (XLA_FLAGS="--xla_dump_to=D --xla_dump_hlo_as_text
--xla_dump_hlo_module_re=jit_train_step", file D/*jit_train_step*after_optimizations.txt),
the "other" kernels are also grouped by the JAX operation they came from (the HLO op's
op_name, layer numbers folded). That needs the kernels named by their HLO ops: trace with
--xla_gpu_enable_command_buffer= (empty) as well, or every kernel is `command_buffer`.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re


def gpu_kernels(trace_path):
    """[(kernel name, HLO op name or '', microseconds)] of the trace's GPU streams."""
    with gzip.open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                and "GPU" in e["args"]["name"]}
    return [(e["name"], e.get("args", {}).get("hlo_op", ""), e["dur"]) for e in events
            if e.get("ph") == "X" and e["pid"] in gpu_pids]


def kind(kernel: str, hlo_op: str) -> str:
    name = kernel.lower()
    if "dot_product_attention" in hlo_op or any(s in name for s in ("sdpa", "fmha", "flash", "cudnn")):
        return "attention"
    if name.startswith("nvjet") or any(s in name for s in ("gemm", "cutlass", "xmma")):
        return "matmul"
    if name.startswith("memset") or name.startswith("memcpy"):
        return "memset/memcpy"
    return "other (XLA fusions)"


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its op_name metadata, with layer numbers folded to #."""
    names = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", hlo_text, re.M):
        found = re.search(r'op_name="([^"]*)"', m.group(2))
        if found:
            names.setdefault(m.group(1), re.sub(r"\d+", "#", found.group(1)))
    return names


def table(totals, steps, top):
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    whole = sum(t for _, t in totals.values())
    for name, (count, us) in rows:
        print(f"  {us / steps / 1e3:8.2f} ms {us / whole:6.1%} {count / steps:7.0f}x  {name[:120]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--steps", type=int, default=3, help="steps the trace holds (accelerator_mfu traces 3)")
    p.add_argument("--hlo", help="the step's after_optimizations.txt HLO dump")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)

    kernels = gpu_kernels(args.trace)
    if not kernels:
        raise SystemExit(f"{args.trace}: no GPU kernels in this trace (was it taken on a GPU?)")
    by_kind = collections.defaultdict(lambda: [0, 0.0])
    by_kernel = collections.defaultdict(lambda: [0, 0.0])
    for name, hlo_op, us in kernels:
        for totals, key in ((by_kind, kind(name, hlo_op)), (by_kernel, re.sub(r"[._]\d+$", "", name))):
            totals[key][0] += 1
            totals[key][1] += us
    print(f"GPU busy {sum(us for *_, us in kernels) / args.steps / 1e3:.2f} ms per step "
          f"({len(kernels) / args.steps:.0f} kernels)")
    print("by kind:")
    table(by_kind, args.steps, args.top)
    print("by kernel:")
    table(by_kernel, args.steps, args.top)
    if args.hlo:
        with open(args.hlo) as f:
            names = op_names(f.read())
        by_op = collections.defaultdict(lambda: [0, 0.0])
        for name, hlo_op, us in kernels:
            if kind(name, hlo_op) == "other (XLA fusions)":
                row = by_op[names.get(hlo_op, f"({hlo_op or name}: no op_name)")]
                row[0] += 1
                row[1] += us
        print("other kernels by the JAX operation they came from:")
        table(by_op, args.steps, args.top)


if __name__ == "__main__":
    main()
