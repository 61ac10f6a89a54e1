"""Hugging Face model directories in and out of lmjax workdirs (what `lmjax convert` runs).

Import writes a step-0 checkpoint (parameters, zero optimizer state, the config and the
tokenizer) into a new workdir, and WORKDIR/config.py, so `lmjax sample`, `lmjax eval` and
fine-tuning with `lmjax train --config WORKDIR/config.py --workdir WORKDIR` work on it
unchanged. The whole checkpoint is written under a temporary name and renamed into place
at the end; everything is checked before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp

from lmjax import sharding
from lmjax.config import config_from_dict, default_config, model_config, validate
from lmjax.data.hf_tokenizer import load_tokenizer
from lmjax.data.tokenizer_json import tokenizer_from_json
from lmjax.errors import LmjaxError, MissingFileError, PathExistsError
from lmjax.hf.export import DEFAULT_SHARD_BYTES, export_hf
from lmjax.hf.families import family_for_config
from lmjax.hf.load import load_params, plan, read_hf_config
from lmjax.model import Transformer
from lmjax.model.accounting import count_params
from lmjax.train.checkpoint import Checkpointer
from lmjax.train.loop import config_json
from lmjax.train.optimizer import make_optimizer
from lmjax.train.steps import state_shardings
from lmjax.train.workdir import CHECKPOINTS, open_workdir


def workdir_config(cfg):
    """A full, validated lmjax config whose model section is `cfg` (the rest: defaults)."""
    config = default_config()
    for key, value in dataclasses.asdict(cfg).items():
        if key in config.model:
            config.model[key] = value
    # data.tokenizer only says which tokenizer to *build*; a checkpoint's own tokenizer
    # (here: the imported one) always takes precedence, so the default stays.
    validate(config)
    return config


CONFIG_FILE = "config.py"


def _config_file(config: dict, hf_dir: str, workdir: str) -> str:
    """A config file (configs/*.py style) that reproduces the imported checkpoint's config,
    so that fine-tuning is `lmjax train --config WORKDIR/config.py --workdir WORKDIR ...`."""
    body = json.dumps(config, indent=2, sort_keys=True)  # inside r"""...""": no escaping needed
    return f'''"""The config of the model `lmjax convert` imported from {hf_dir}.

Fine-tune it (the checkpoint's tokenizer is used, whatever data.tokenizer says):

    lmjax train --config {workdir}/config.py --workdir {workdir} \\
        --config.data.source=PATH --config.train.steps=N --config.optimizer.lr=3e-5
"""
import json

import ml_collections

CONFIG = json.loads(r"""
{body}
""")


def get_config(arg=None):
    return ml_collections.ConfigDict(CONFIG)
'''


def import_to_workdir(hf_dir: str, workdir: str, *, dtype: str = "float32", scan_layers: bool = False) -> str:
    """Import `hf_dir` as the step-0 checkpoint of a new `workdir`; returns a summary line."""

    wd = open_workdir(workdir)
    workdir, target = os.fspath(wd.path), os.fspath(wd.checkpoints)
    if os.path.isdir(target) and os.listdir(target):
        raise PathExistsError(f"{workdir} already holds checkpoints: import into a new --workdir")
    hf = read_hf_config(hf_dir)
    tokenizer = load_tokenizer(hf_dir, hf)
    if tokenizer is None:
        raise MissingFileError(f"{hf_dir} has no tokenizer.json or tokenizer.model: lmjax keeps the tokenizer in "
                               "the checkpoint (for sample/eval); copy the model's tokenizer files there")
    cfg, ckpt, _ = plan(hf_dir, dtype=dtype, scan_layers=scan_layers)  # every check, before any data is read
    ckpt.close()
    if tokenizer.vocab_size > cfg.vocab_size:
        raise LmjaxError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                         f"{cfg.vocab_size}: ids past the embedding cannot be used")
    config = workdir_config(cfg)
    mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.mesh)
    _, params = load_params(hf_dir, cfg, mesh=mesh, rules=rules)
    model = Transformer(cfg)
    optimizer = make_optimizer(config.optimizer, config.train.steps)
    shardings = state_shardings(model, optimizer, mesh, rules)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings["opt_state"])(params)
    state = {"step": jax.device_put(jnp.zeros((), jnp.int32), shardings["step"]), "params": params,
             "opt_state": opt_state}

    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.convert-", dir=os.path.dirname(workdir))
    config_file = os.path.join(workdir, CONFIG_FILE)
    try:
        with Checkpointer(os.path.join(tmp, CHECKPOINTS), async_save=False) as ckpt_out:
            ckpt_out.save(0, state, config=config_json(config), tokenizer=tokenizer.to_json(), force=True)
            ckpt_out.wait()
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(_config_file(config_json(config), hf_dir, workdir))
        if not os.path.isdir(workdir):
            os.chmod(tmp, 0o755)
            os.rename(tmp, workdir)
        else:
            if os.path.isdir(target):
                os.rmdir(target)  # empty (checked above)
            os.rename(os.path.join(tmp, CHECKPOINTS), target)
            if not os.path.exists(config_file):
                os.rename(os.path.join(tmp, CONFIG_FILE), config_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    arch = (hf.get("architectures") or [hf.get("model_type")])[0]
    line = (f"imported {arch} ({count_params(params):,} parameters, {cfg.n_layer} layers, vocab {cfg.vocab_size}) "
            f"from {hf_dir} into {workdir} (step 0); try: lmjax sample --workdir {workdir} --prompt ...")
    print(line)
    return line


def export_from_workdir(workdir: str, out_dir: str, *, step: int | None = None, dtype: str | None = None,
                        max_shard_bytes: int | None = None) -> list[str]:
    """Export a workdir's checkpoint (latest, or `step`) as a Hugging Face directory."""

    wd = open_workdir(workdir)
    out = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise PathExistsError(f"{out} already exists and is not empty: choose a new directory")
    _, config_dict, tok_dict = wd.meta(step)
    # a model with no Hugging Face equivalent fails before any array is read
    family_for_config(model_config(config_from_dict(config_dict), tokenizer_from_json(tok_dict).vocab_size))
    restored = wd.restore(step=step, params_only=True)
    step, cfg, params, tokenizer = restored.step, restored.model.cfg, restored.params, restored.tokenizer
    written = export_hf(out, cfg, params, tokenizer, dtype=dtype, max_shard_bytes=max_shard_bytes or DEFAULT_SHARD_BYTES)
    print(f"exported {workdir} (step {step}) to {out}: {', '.join(written)}")
    return written
