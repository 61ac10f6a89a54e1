#!/usr/bin/env bash
# The checks that need a GPU, in one script (run from the repo root on the GPU machine;
# writes JSON and logs under $OUT, default ./gpu_out):
#   1. cuDNN flash attention (the fast core on GPU) vs the explicit core, bf16;
#   2. bench/accelerator_mfu.py: ~350M GPT-2-medium shape, bf16, single-GPU MFU;
#   3. configs/shakespeare_char.py (the GPU variant): val loss and wall time vs nanoGPT's 1.47.
# Usage: SHAKESPEARE=path/to/input.txt bash bench/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
PY=${PY:-python3}
nvidia-smi -L; $PY -c "import jax; print(jax.__version__, jax.devices())"

echo "== 1. cuDNN attention vs explicit core"
$PY - <<'PYEOF' 2>&1 | tee "$OUT/attention_check.txt"
import jax, jax.numpy as jnp, numpy as np
from lmjax.model.attention import attention_core, blocked_causal_attention
for (b, t, h, kvh, d) in [(2, 1024, 16, 16, 64), (2, 256, 8, 2, 64)]:
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (b, t, h, d), jnp.bfloat16)
    k, v = (jax.random.normal(ks[i], (b, t, kvh, d), jnp.bfloat16) for i in (1, 2))
    fast = jax.jit(attention_core)(q, k, v).astype(jnp.float32)
    ref = jax.jit(blocked_causal_attention)(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
    print(f"b={b} t={t} heads={h}/{kvh}: max |cudnn - f32 reference| = {float(jnp.abs(fast - ref).max()):.4f}",
          f"(max |ref| {float(jnp.abs(ref).max()):.2f})")
PYEOF

echo "== 2. single-GPU MFU, ~350M, bf16"
timeout 200 $PY bench/accelerator_mfu.py --sizes 24x1024 --batch 16 --seq 1024 --steps 10 > "$OUT/accelerator_mfu.json"
tail -c 1500 "$OUT/accelerator_mfu.json"

echo "== 3. shakespeare_char (GPU variant)"
start=$(date +%s)
timeout 270 $PY -m lmjax.train --config configs/shakespeare_char.py --workdir /tmp/shakespeare_gpu \
    --config.data.source="${SHAKESPEARE:-../shared/data/tinyshakespeare/input.txt}" --no_progress \
    > "$OUT/shakespeare_gpu.log" 2>&1
echo "exit $? after $(( $(date +%s) - start )) s"
tail -n 25 "$OUT/shakespeare_gpu.log"
cp /tmp/shakespeare_gpu/metrics.jsonl "$OUT/shakespeare_gpu_metrics.jsonl" 2>/dev/null || true
