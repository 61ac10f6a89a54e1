"""`lmjax train | eval | sample | convert | explain | scaling | repro`: the command line.

    lmjax train --config configs/quickstart.py --workdir runs/qs [--config.train.steps=100 ...]
                [--coordinator HOST:PORT --num_processes N --process_id I]
    lmjax eval --workdir runs/qs
    lmjax sample --workdir runs/qs --prompt "def " [--num_samples 4 --max_new_tokens 100 --temperature 0.8
                 --top_k 40 --top_p 0.95 --seed 0 --prompt_file prompts.txt]
    lmjax convert --from-hf HF_DIR --workdir runs/imported   |   lmjax convert --workdir runs/qs --to-hf HF_OUT

Config overrides are `--config.SECTION.KEY=VALUE`. Problems with the config or the
input are reported in one line each, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Each command module imports the library inside its `run`: `lmjax --help` and a bad
# config answer at once, without loading JAX.
from lmjax.commands import convert, evaluate, explain, repro, sample, scaling, train  # noqa: E402
from lmjax.errors import LmjaxError  # noqa: E402

COMMANDS = (train, evaluate, sample, convert, explain, scaling, repro)


def split_overrides(argv):
    """Pull out `--config.a.b=v` (or `--config.a.b v`) from the rest of the arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body and i + 1 < len(argv):
                body, i = f"{body}={argv[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmjax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)  # each sets its parser's `run`
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    rest, overrides = split_overrides(argv)
    args = parser().parse_args(rest)
    try:
        args.run(args, overrides)
    except (LmjaxError, FileNotFoundError, ValueError) as e:  # bad input: one line, no traceback
        print(f"lmjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
