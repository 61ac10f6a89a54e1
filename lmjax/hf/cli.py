"""`lmjax convert`: Hugging Face model directory <-> lmjax workdir.

    lmjax convert --from-hf DIR --workdir OUT [--dtype float32|bfloat16] [--scan_layers]
    lmjax convert --workdir DIR --to-hf OUT [--step N] [--dtype ...] [--max_shard_size 5GB]

Import writes a step-0 checkpoint (parameters, zero optimizer state, the config and the
tokenizer) into OUT, and OUT/config.py, so `lmjax sample --workdir OUT`, `lmjax eval` and
fine-tuning with `lmjax train --config OUT/config.py --workdir OUT` work on it unchanged. The whole checkpoint is written under a temporary name
and renamed into place at the end; everything is checked before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile


def add_parser(sub) -> None:
    """Register the `convert` subcommand on lmjax's argparse subparsers."""
    c = sub.add_parser("convert", help="import a Hugging Face model into a workdir, or export one",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("--workdir", required=True, help="the lmjax workdir (written by --from-hf, read by --to-hf)")
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", dest="from_hf", metavar="DIR", help="a local Hugging Face model directory")
    way.add_argument("--to-hf", dest="to_hf", metavar="OUT", help="a new directory for the Hugging Face model")
    c.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="import: parameter/compute dtype (default float32: exact parity); "
                        "export: stored dtype (default: the parameters')")
    c.add_argument("--scan_layers", action="store_true", help="import: stack the layers (model.scan_layers)")
    c.add_argument("--step", type=int, default=None, help="export: checkpoint step (default: the latest)")
    c.add_argument("--max_shard_size", default="5GB", help="export: largest safetensors file, e.g. 500MB, 5GB")


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"--max_shard_size {text!r}: expected a size such as 500MB or 5GB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def run(args, overrides=()) -> None:
    if args.from_hf:
        import_to_workdir(args.from_hf, args.workdir, dtype=args.dtype or "float32", scan_layers=args.scan_layers)
    else:
        export_from_workdir(args.workdir, args.to_hf, step=args.step, dtype=args.dtype,
                            max_shard_bytes=_bytes(args.max_shard_size))


def workdir_config(cfg):
    """A full, validated lmjax config whose model section is `cfg` (the rest: defaults)."""
    from lmjax.config import default_config, validate

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
    import jax
    import jax.numpy as jnp

    from lmjax import sharding
    from lmjax.hf import load_params, load_tokenizer, read_hf_config
    from lmjax.hf.load import plan
    from lmjax.scaling.accounting import count_params
    from lmjax.train.checkpoint import Checkpointer
    from lmjax.train.loop import config_json
    from lmjax.train.optimizer import make_optimizer
    from lmjax.train.steps import state_shardings
    from lmjax.model import Transformer

    workdir = os.path.abspath(os.path.expanduser(workdir))
    target = os.path.join(workdir, "checkpoints")
    if os.path.isdir(target) and os.listdir(target):
        raise ValueError(f"{workdir} already holds checkpoints: import into a new --workdir")
    hf = read_hf_config(hf_dir)
    tokenizer = load_tokenizer(hf_dir, hf)
    if tokenizer is None:
        raise FileNotFoundError(f"{hf_dir} has no tokenizer.json or tokenizer.model: lmjax keeps the tokenizer in "
                                "the checkpoint (for sample/eval); copy the model's tokenizer files there")
    cfg, ckpt, _ = plan(hf_dir, dtype=dtype, scan_layers=scan_layers)  # every check, before any data is read
    ckpt.close()
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
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
        with Checkpointer(os.path.join(tmp, "checkpoints"), async_save=False) as ckpt_out:
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
            os.rename(os.path.join(tmp, "checkpoints"), target)
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
    import jax

    from lmjax import sharding
    from lmjax.config import config_from_dict, model_config
    from lmjax.data.tokenizers import tokenizer_from_json
    from lmjax.hf import export_hf
    from lmjax.hf.export import DEFAULT_SHARD_BYTES
    from lmjax.hf.families import family_for_config
    from lmjax.model import Transformer
    from lmjax.train.checkpoint import Checkpointer
    from lmjax.train.optimizer import make_optimizer
    from lmjax.train.steps import init_state, state_shardings

    checkpoints = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")  # orbax wants absolute paths
    if not os.path.isdir(checkpoints):
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    out = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"{out} already exists and is not empty: choose a new directory")
    with Checkpointer(checkpoints) as ckpt:
        config_dict, tok_dict = ckpt.restore_meta(step)
        step = step if step is not None else ckpt.latest_step()
        config = config_from_dict(config_dict)
        tokenizer = tokenizer_from_json(tok_dict)
        cfg = model_config(config, tokenizer.vocab_size)
        family_for_config(cfg)  # a model with no Hugging Face equivalent fails before anything is read
        # Restore the train state as lmjax.train.loop.setup does (the checkpoint holds the whole state).
        mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.mesh)
        model, optimizer = Transformer(cfg), make_optimizer(config.optimizer, config.train.steps)
        abstract = jax.eval_shape(lambda: init_state(model, optimizer, mesh, config.train.seed, rules))
        shardings = state_shardings(model, optimizer, mesh, rules)
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        params = ckpt.restore(abstract, step)["params"]
    written = export_hf(out, cfg, params, tokenizer, dtype=dtype, max_shard_bytes=max_shard_bytes or DEFAULT_SHARD_BYTES)
    print(f"exported {workdir} (step {step}) to {out}: {', '.join(written)}")
    return written
