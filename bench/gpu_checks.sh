#!/usr/bin/env bash
# The checks that need a GPU, in one script (run from the repo root on the GPU machine;
# writes JSON and logs under $OUT, default ./gpu_out). CHECKS picks which, in this order:
#   mfu        bench/accelerator_mfu.py: ~350M GPT-2-medium shape, bf16, single-GPU MFU
#              (MFU_ARGS overrides its arguments, e.g. for a CPU smoke run);
#   attention  cuDNN flash attention (the fast core on GPU) vs the explicit core, bf16;
#   shakespeare  configs/shakespeare_char.py (the GPU variant): val loss and wall time vs
#              nanoGPT's 1.47 (SHAKESPEARE=path/to/input.txt).
# Usage: CHECKS="mfu attention" bash bench/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # lmjax from this checkout
PY=${PY:-python3}
CHECKS=${CHECKS:-mfu attention shakespeare}
MFU_ARGS=${MFU_ARGS:---sizes 24x1024 --batch 32 --seq 1024}
nvidia-smi -L 2>/dev/null; $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

for check in $CHECKS; do
  start=$(date +%s)
  case $check in
  mfu)
    echo "== single-device training MFU: $MFU_ARGS"
    # SIGABRT + faulthandler: a hang (e.g. a slow compile) still shows where it was.
    timeout -s ABRT 300 $PY -X faulthandler bench/accelerator_mfu.py $MFU_ARGS > "$OUT/accelerator_mfu.json"
    echo "exit $?"
    $PY - "$OUT/accelerator_mfu.json" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['device']}: bf16 matmul probe {d['matmul_peak_flops'] / 1e12:.0f} TFLOP/s, table peak {d['peak_flops_table'] / 1e12:.0f}")
for name, r in d["results"].items():
    print(f"{name}: {r['n_params'] / 1e6:.0f}M params, {r['tokens_per_s']:,.0f} tokens/s, step {r['step_s'] * 1e3:.1f} ms, "
          f"MFU {r['mfu_table_peak']:.1%} of table ({r['mfu_matmul_peak']:.1%} of probe), compile {r['compile_s']:.0f} s, "
          f"init {r.get('init_s', float('nan')):.1f} s, memory {r['memory']}")
PYEOF
    ;;
  attention)
    echo "== cuDNN attention vs explicit core"
    timeout -s ABRT 120 $PY -X faulthandler - <<'PYEOF' 2>&1 | tee "$OUT/attention_check.txt"
import jax, jax.numpy as jnp
from lmjax.model.attention import attention_core, blocked_causal_attention
for (b, t, h, kvh, d) in [(2, 1024, 16, 16, 64), (2, 256, 8, 2, 64)]:
    ks = jax.random.split(jax.random.key(t), 3)
    q = jax.random.normal(ks[0], (b, t, h, d), jnp.bfloat16)
    k, v = (jax.random.normal(ks[i], (b, t, kvh, d), jnp.bfloat16) for i in (1, 2))
    fast = jax.jit(attention_core)(q, k, v).astype(jnp.float32)
    ref = jax.jit(blocked_causal_attention)(*(x.astype(jnp.float32) for x in (q, k, v)))
    rel = float(jnp.linalg.norm(fast - ref) / jnp.linalg.norm(ref))
    print(f"b={b} t={t} heads={h}/{kvh}: |fast - f32 reference| / |reference| = {rel:.2e}, "
          f"max abs diff {float(jnp.abs(fast - ref).max()):.4f}")
PYEOF
    ;;
  shakespeare)
    echo "== shakespeare_char (GPU variant)"
    timeout 270 $PY -m lmjax.train --config configs/shakespeare_char.py --workdir /tmp/shakespeare_gpu \
        --config.data.source="${SHAKESPEARE:-../shared/data/tinyshakespeare/input.txt}" --no_progress \
        > "$OUT/shakespeare_gpu.log" 2>&1
    echo "exit $?"
    tail -n 25 "$OUT/shakespeare_gpu.log"
    cp /tmp/shakespeare_gpu/metrics.jsonl "$OUT/shakespeare_gpu_metrics.jsonl" 2>/dev/null || true
    ;;
  *) echo "unknown check $check; allowed: mfu attention shakespeare"; exit 2 ;;
  esac
  echo "($check took $(( $(date +%s) - start )) s)"
done
