"""lmjax.compile_cache: interp programs compiled in one process are loaded by the next."""
import json
import os
import subprocess
import sys

# One process: import lmjax.interp (which turns the cache on), run a compiled
# run_with_cache of a tiny model, print where JAX cached and how many programs it loaded.
_RUN = r"""
import json, jax
from jax._src import monitoring
hits = []
monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("/cache_hits") else None)
import jax.numpy as jnp
from lmjax.interp.compiling import run_with_cache
from lmjax.model import ModelConfig, Transformer
cfg = ModelConfig(vocab_size=32, n_layer=1, d_model=16, n_head=2, max_len=8)
model = Transformer(cfg)
params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
logits, cache = run_with_cache(model, params, jnp.ones((1, 8), jnp.int32), ["blocks.0.hook_resid_post"])
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "hits": len(hits),
                  "resid": float(cache["blocks.0.hook_resid_post"].sum())}))
"""


# Only where the cache is: importing lmjax.interp decides it.
_WHERE = r"""
import json, jax
import lmjax.interp.compiling
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir}))
"""


def _run(env, code=_RUN):
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the tiny program compiles in well under a second
    env.update(extra)
    return env


def test_second_process_loads_what_the_first_compiled(tmp_path):
    env = _env(LMJAX_COMPILE_CACHE=str(tmp_path / "compiled"))
    first, second = _run(env), _run(env)
    assert first["dir"] == second["dir"] == str(tmp_path / "compiled")
    assert first["hits"] == 0 and second["hits"] >= 1
    assert first["resid"] == second["resid"]  # the loaded program computes the same


def test_off_and_a_users_own_cache_are_respected(tmp_path):
    assert _run(_env(LMJAX_COMPILE_CACHE="0"), _WHERE)["dir"] is None
    own = str(tmp_path / "own")
    assert _run(_env(LMJAX_COMPILE_CACHE=str(tmp_path / "ours"), JAX_COMPILATION_CACHE_DIR=own), _WHERE)["dir"] == own
    assert not (tmp_path / "ours").exists()
