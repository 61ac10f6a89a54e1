"""`lmjax explain`: why did the model pick this token? A self-contained HTML report.

    lmjax explain --workdir DIR --prompt "..." [--target T --contrast C --corrupt "..."] --out report.html
                  [--dictionary DICT_DIR [--feature_text FILE]]

With --dictionary (an SAE or transcoder directory written by `lmjax sae train`) the page gains
a features section: the features most active at the prompt's last position and at each
position, with their top logits and a mini-dashboard each (top-activating contexts over
--feature_text when given).
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
    x.add_argument("--dictionary", help="a dictionary directory (SAE or transcoder): adds a features section")
    x.add_argument("--feature_text", help="a text file whose tokens the features' dashboards draw contexts from")
    x.add_argument("--features", type=int, default=8, help="features listed at the last position")
    x.set_defaults(run=run)
    return x


def run(args, overrides=()):
    from lmjax.errors import LmjaxError
    from lmjax.interp.report import write_report
    from lmjax.train.workdir import open_workdir

    if args.feature_text and not args.dictionary:
        raise LmjaxError("--feature_text needs --dictionary: the text is for the dictionary's feature dashboards")
    model, params, tokenizer = open_workdir(args.workdir).load(overrides)
    sections = _features(args, model, params, tokenizer) if args.dictionary else None
    ex = write_report(args.out, model, params, tokenizer, args.prompt, sections=sections, target=args.target,
                      contrast=args.contrast, corrupt=args.corrupt, top_k=args.top_k)
    for line in ex.summary:
        print(line)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB, {ex.seconds:.1f} s)")


def _features(args, model, params, tokenizer):
    """-> sections(ex) for write_report; the dictionary and the text are read and checked
    against the model first, before anything compiles."""
    from lmjax.sae import dashboard, dashboard_html
    from lmjax.sae.store import load_dictionary

    dictionary, dparams = load_dictionary(args.dictionary)
    dashboard.check_dictionary(model, params, dictionary)
    tokens = None
    if args.feature_text:
        with open(args.feature_text, encoding="utf-8") as f:  # a missing file: one line (commands.main)
            text = f.read()
        tokens = dashboard.text_tokens(tokenizer, text, min(model.cfg.max_len, 128), max_rows=256)

    def sections(ex):
        pf = dashboard.prompt_features(model, params, tokenizer, dictionary, dparams, ex.tokens, top=args.features,
                                       tokens=tokens)
        return [dashboard_html.features_section(pf)]

    return sections
