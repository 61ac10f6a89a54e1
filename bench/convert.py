"""Import time and peak host memory of lmjax's Hugging Face import (lmjax.hf), GPT-2 medium shape.

    python bench/convert.py [--dir DIR] [--keep] [--skip_torch] [--repeats 2]

Saves a random-weight `GPT2LMHeadModel` of GPT-2 medium's shape (24 layers, d_model 1024,
16 heads, vocab 50257, context 1024; 355M parameters, 1.42 GB in float32) with
`save_pretrained` (to a temporary dir, or `--dir`, reused when it already holds one), then
measures, each in a fresh subprocess so that peak memory means this one job:

- `lmjax_1_device`: `lmjax.hf.load_params` onto one CPU device;
- `lmjax_fsdp_8`: the same onto 8 simulated CPU devices, parameters split 8 ways (FSDP):
  each device's callback reads only its slice of each tensor;
- `export`: `lmjax.hf.export_hf` of the imported parameters (single device) back to a
  Hugging Face directory;
- `transformers`: `AutoModelForCausalLM.from_pretrained` of the same directory (baseline);
  transformers 5 maps safetensors lazily, so it is also timed with every weight read once
  (`seconds_with_every_weight_read`), which is when its pages become resident.

For each: wall seconds (best of `--repeats`, file already in the page cache), peak RSS
(VmHWM) and the RSS before the timed work began (after imports), so `peak - before`
is what the job added; for lmjax also the peak of NumPy/Python allocations seen by
`tracemalloc` during a separate (untimed) import. On a CPU the "device" is host memory,
so the imported parameters themselves count once (1.42 GB); anything much above that
would be a second host copy. Prints one JSON object on stdout, progress on stderr.
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

GPT2_MEDIUM = dict(vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rss_mib() -> float:
    """Current resident set size, MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    """Peak resident set size of this process, MiB: VmHWM, which starts afresh at exec (unlike
    ru_maxrss, which a child inherits from the process that forked it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_checkpoint(directory: str) -> None:
    if os.path.isfile(os.path.join(directory, "config.json")):
        log(f"reusing {directory}")
        return
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    log(f"saving a random GPT-2 medium to {directory} ...")
    torch.manual_seed(0)
    t = time.perf_counter()
    GPT2LMHeadModel(GPT2Config(**GPT2_MEDIUM)).save_pretrained(directory)
    log(f"  {time.perf_counter() - t:.1f} s")


# -- children: one measurement each, JSON on stdout -----------------------------------------


def child_lmjax(directory: str, mesh_kind: str, repeats: int) -> dict:
    import tracemalloc

    import jax

    from lmjax import sharding
    from lmjax.hf import load_params

    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}) if mesh_kind == "fsdp" else None
    before = rss_mib()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        cfg, params = load_params(directory, mesh=mesh)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t)
        peak = peak_mib()
        n_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
        shard_bytes = max(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)
        del params
    tracemalloc.start()
    _, params = load_params(directory, mesh=mesh)
    jax.block_until_ready(params)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": min(times), "all_seconds": times, "devices": len(jax.devices()),
            "param_bytes": n_bytes, "largest_device_shard_bytes": shard_bytes,
            "rss_before_mib": before, "peak_rss_mib": peak, "added_peak_mib": peak - before,
            "tracemalloc_peak_mib": traced_peak / 2**20, "n_layer": cfg.n_layer}


def child_export(directory: str, repeats: int) -> dict:
    import shutil

    import jax

    from lmjax.hf import export_hf, load_params

    cfg, params = load_params(directory)
    jax.block_until_ready(params)
    before = rss_mib()
    times = []
    for i in range(repeats):
        out = tempfile.mkdtemp(prefix="lmjax_export_")
        os.rmdir(out)
        t = time.perf_counter()
        export_hf(out, cfg, params)
        times.append(time.perf_counter() - t)
        shutil.rmtree(out)
    return {"seconds": min(times), "all_seconds": times, "rss_before_mib": before, "peak_rss_mib": peak_mib(),
            "added_peak_mib": peak_mib() - before}


def child_transformers(directory: str, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    before = rss_mib()
    times, touched = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(directory)
        times.append(time.perf_counter() - t)
        if not times[1:]:  # VmHWM only grows: after the first load it says how lazy the load was
            lazy_peak = peak_mib()
        with torch.no_grad():  # read every weight once: transformers may map the file lazily
            for p in model.parameters():
                p.sum()
        touched.append(time.perf_counter() - t)
        peak = peak_mib()
        del model
    return {"seconds": min(times), "all_seconds": times, "seconds_with_every_weight_read": min(touched),
            "all_seconds_with_every_weight_read": touched, "rss_before_mib": before,
            "peak_rss_mib_after_first_load": lazy_peak, "peak_rss_mib": peak, "added_peak_mib": peak - before,
            "torch": torch.__version__}


def run_child(kind: str, directory: str, repeats: int, devices: int = 1) -> dict:
    env = dict(os.environ)
    if devices > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    log(f"{kind} ...")
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--dir", directory, "--repeats", str(repeats)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"  {result['seconds']:.2f} s, peak RSS {result['peak_rss_mib']:.0f} MiB "
        f"(+{result['added_peak_mib']:.0f} MiB over {result['rss_before_mib']:.0f})")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="where the checkpoint is saved (default: a temporary dir, deleted after)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip_torch", action="store_true", help="no transformers baseline")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.child == "make":
            make_checkpoint(args.dir)
            return
        if args.child.startswith("lmjax"):
            result = child_lmjax(args.dir, "fsdp" if args.child.endswith("fsdp_8") else "one", args.repeats)
        elif args.child == "export":
            result = child_export(args.dir, args.repeats)
        else:
            result = child_transformers(args.dir, args.repeats)
        print(json.dumps(result))
        return

    tmp = None
    directory = args.dir
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="lmjax_bench_convert_")
        directory = tmp.name
    try:
        # in a child, so that torch's 1.4 GB model never lives in this process
        subprocess.run([sys.executable, __file__, "--child", "make", "--dir", directory], check=True)
        files = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
        file_bytes = sum(os.path.getsize(os.path.join(directory, f)) for f in files)
        results = {
            "lmjax_1_device": run_child("lmjax_1_device", directory, args.repeats),
            "lmjax_fsdp_8": run_child("lmjax_fsdp_8", directory, args.repeats, devices=8),
            "export": run_child("export", directory, args.repeats),
        }
        if not args.skip_torch:
            results["transformers"] = run_child("transformers", directory, args.repeats)
        print(json.dumps({
            "benchmark": "hf_import", "shape": GPT2_MEDIUM, "dtype": "float32", "safetensors_bytes": file_bytes,
            "cpu_count": os.cpu_count(), "note": "checkpoint file in the page cache (written just before)",
            **results,
        }, indent=2))
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
