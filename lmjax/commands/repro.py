"""`lmjax repro NAME [--out DIR] [--config.x=v ...]`: run one reproduction."""
from __future__ import annotations

import argparse
import importlib

from lmjax.repro import REPRODUCTIONS


def add_parser(sub):
    p = sub.add_parser("repro", help="reproduce a published result (figures + results.json)",
                       description="\n".join(f"  {k:12s} {v}" for k, v in REPRODUCTIONS.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(REPRODUCTIONS), help="which reproduction")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the reproduction's own flags, e.g. --out runs/repro/NAME")
    p.set_defaults(run=run)


def run(args, overrides):
    # by name: the command line loads only the reproduction it runs
    module = importlib.import_module(f"lmjax.repro.{args.name}")
    module.main(list(args.rest) + [f"--config.{o}" for o in overrides])
