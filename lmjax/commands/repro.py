"""`lmjax repro NAME[:variant] [--out DIR] [--config.x=v ...]`: run one reproduction.

It writes several files (figures and results.json), so --out is a directory.
"""
from __future__ import annotations

import argparse

from lmjax.repro import REPRODUCTIONS


def add_parser(sub):
    p = sub.add_parser("repro", help="reproduce a published result (figures + results.json in --out DIR)",
                       description="\n".join(f"  {k:12s} {v}" for k, v in REPRODUCTIONS.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME[:variant]",
                   help=f"which reproduction ({', '.join(sorted(REPRODUCTIONS))}), e.g. induction:small")
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="the reproduction's own flags: --out DIR (a directory, default runs/repro/NAME)")
    p.set_defaults(run=run)


def run(args, overrides):
    from lmjax import repro

    repro.run(args.name, list(args.rest) + [f"--config.{o}" for o in overrides])
