"""`lmjax convert`: Hugging Face model directory <-> lmjax workdir (lmjax/hf/workdirs.py does the work).

    lmjax convert --from_hf DIR --workdir OUT [--dtype float32|bfloat16] [--scan_layers]
    lmjax convert --workdir DIR --to_hf OUT [--step N] [--dtype ...] [--max_shard_size 5GB]

Import writes a step-0 checkpoint (parameters, zero optimizer state, the config and the
tokenizer) into OUT, and OUT/config.py, so `lmjax sample --workdir OUT`, `lmjax eval` and
fine-tuning with `lmjax train --config OUT/config.py --workdir OUT` work on it unchanged.
The whole checkpoint is written under a temporary name and renamed into place at the end;
everything is checked before anything is written. (--from-hf and --to-hf are aliases.)
"""
from __future__ import annotations

import re

from lmjax.errors import LmjaxError


def add_parser(sub) -> None:
    """Register the `convert` subcommand on lmjax's argparse subparsers."""
    c = sub.add_parser("convert", help="import a Hugging Face model into a workdir, or export one",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("--workdir", required=True, help="the lmjax workdir (written by --from_hf, read by --to_hf)")
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument("--from_hf", "--from-hf", metavar="DIR", help="a local Hugging Face model directory")
    way.add_argument("--to_hf", "--to-hf", metavar="OUT", help="a new directory for the Hugging Face model")
    c.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="import: parameter/compute dtype (default float32: exact parity); "
                        "export: stored dtype (default: the parameters')")
    c.add_argument("--scan_layers", action="store_true", help="import: stack the layers (model.scan_layers)")
    c.add_argument("--step", type=int, default=None, help="export: checkpoint step (default: the latest)")
    c.add_argument("--max_shard_size", default="5GB", help="export: largest safetensors file, e.g. 500MB, 5GB")
    c.set_defaults(run=run)


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise LmjaxError(f"--max_shard_size {text!r}: expected a size such as 500MB or 5GB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def run(args, overrides=()) -> None:
    from lmjax.hf.workdirs import export_from_workdir, import_to_workdir

    if args.from_hf:
        import_to_workdir(args.from_hf, args.workdir, dtype=args.dtype or "float32", scan_layers=args.scan_layers)
    else:
        export_from_workdir(args.workdir, args.to_hf, step=args.step, dtype=args.dtype,
                            max_shard_bytes=_bytes(args.max_shard_size))
