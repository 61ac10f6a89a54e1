"""`lmjax explain`: why did the model pick this token? A self-contained HTML report.

    lmjax explain --workdir DIR --prompt "..." [--target T --contrast C --corrupt "..."] --out report.html
"""
from __future__ import annotations

import os


def add_parser(sub):
    x = sub.add_parser("explain", help="why did the model pick this token? (a self-contained HTML report)")
    x.add_argument("--workdir", required=True, help="a training workdir (its latest checkpoint is explained)")
    x.add_argument("--prompt", required=True, help="the text whose next token is explained")
    x.add_argument("--target", help="the token to explain (its first token if several; default: the top prediction)")
    x.add_argument("--contrast", help="the alternative it is compared with (default: the next most likely token)")
    x.add_argument("--corrupt", help="a corrupted prompt of the same token length: adds activation patching")
    x.add_argument("--out", default="report.html", help="the HTML file to write")
    x.add_argument("--top_k", type=int, default=10, help="alternatives listed")
    x.set_defaults(run=run)
    return x


def run(args, overrides=()):
    from lmjax.interp.report import write_report
    from lmjax.train.workdir import open_workdir

    model, params, tokenizer = open_workdir(args.workdir).load(overrides)
    ex = write_report(args.out, model, params, tokenizer, args.prompt, target=args.target, contrast=args.contrast,
                      corrupt=args.corrupt, top_k=args.top_k)
    for line in ex.summary:
        print(line)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB, {ex.seconds:.1f} s)")
