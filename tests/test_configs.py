"""Every shipped config (configs/*.py, configs/repro/*.py, configs/scaling/*.py) loads and
validates with each of its variants; a training config's model builds (its parameter tree,
traced without compiling, has the parameters accounting counts); an unknown variant is an
error; and the `:tiny` variant trains end to end on a CPU."""
from __future__ import annotations

import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from conftest import REPO
from lmjax.config import ConfigError, load_config, model_config
from lmjax.model import Transformer
from lmjax.model.accounting import param_count
from lmjax.scaling.sweeps import vocab_size_of

# Each file's variants ("" = get_config(None)); a new config file must be added here.
VARIANTS = {
    "configs/quickstart.py": [""],
    "configs/shakespeare_char.py": ["", "cpu"],
    "configs/mamba_cpu.py": [""],
    "configs/mamba_130m.py": ["", "tiny"],
    "configs/hybrid_cpu.py": ["", "jamba"],
    "configs/rnn_cpu.py": ["", "gru", "conv"],
    "configs/repro/grokking.py": ["", "small"],
    "configs/repro/induction.py": ["", "small", "text"],
    "configs/repro/recall.py": ["", "small"],
    "configs/repro/shakespeare.py": ["", "gpu", "small"],
    "configs/repro/upos.py": ["", "small"],
    "configs/repro/features.py": ["", "small"],
    "configs/sae.py": ["", "transcoder", "quick"],
    "configs/scaling/cpu_isoflop.py": [""],
    "configs/scaling/tpu_isoflop.py": [""],
}
CASES = [(path, variant) for path, variants in VARIANTS.items() for variant in variants]


def _spec(path, variant):
    return os.path.join(REPO, path) + (f":{variant}" if variant else "")


def test_every_shipped_config_is_listed():
    shipped = {os.path.relpath(p, REPO) for pattern in ("configs/*.py", "configs/repro/*.py", "configs/scaling/*.py")
               for p in glob.glob(os.path.join(REPO, pattern))}
    assert shipped == set(VARIANTS)


def _is_training_config(path):
    return not path.startswith("configs/repro/") and path != "configs/sae.py"


@pytest.mark.parametrize("path, variant", CASES, ids=[f"{p[8:-3]}:{v}" if v else p[8:-3] for p, v in CASES])
def test_config_loads_validates_and_its_model_builds(path, variant):
    config = load_config(_spec(path, variant))
    if not _is_training_config(path):
        return  # a reproduction's own schema and checks (load_config ran them)
    cfg = model_config(config, vocab_size_of(config))
    tokens = jnp.zeros((1, min(cfg.max_len, 8)), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(Transformer(cfg).init, jax.random.key(0), tokens)["params"])
    assert sum(x.size for x in jax.tree.leaves(shapes)) == param_count(cfg)


@pytest.mark.parametrize("path", [p for p, v in VARIANTS.items() if len(v) > 1])
def test_an_unknown_variant_is_an_error(path):
    with pytest.raises(ConfigError, match="allowed"):
        load_config(_spec(path, "no_such_variant"))


def test_mamba_130m_tiny_trains(tmp_path):
    """`lmjax train --config configs/mamba_130m.py:tiny`, a few steps of it, on a small text
    (the variant's own data is the standard-library corpus: tokenizing it takes a minute)."""
    from _one_device import run_lmjax

    text = tmp_path / "text.txt"
    text.write_text("".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(600)))
    workdir = tmp_path / "w"
    codes, stdout, stderr = run_lmjax(
        ["train", "--config", _spec("configs/mamba_130m.py", "tiny"), "--workdir", str(workdir), "--no_progress",
         f"--config.data.source={text}", "--config.train.steps=4", "--config.train.eval_every=4",
         "--config.train.log_every=1", "--config.train.sample_tokens=0", "--config.checkpoint.every=4"])
    assert codes == [0], stderr[-3000:]
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]
