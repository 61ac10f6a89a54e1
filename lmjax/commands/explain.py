"""`lmjax explain`: why did the model pick this token? A self-contained HTML report.

    lmjax explain --workdir DIR --prompt "..." [--target T --contrast C --corrupt "..."] --out report.html
                  [--dictionary DICT_DIR [--feature_text FILE]]
                  [--graph --dictionary TRANSCODERS [--node_budget N] [--feature_text FILE]]

With --dictionary (an SAE or transcoder directory written by `lmjax sae train`) the page gains
a features section: the features most active at the prompt's last position and at each
position, with their top logits and a mini-dashboard each (top-activating contexts over
--feature_text when given).

With --graph, --dictionary is a transcoder set (one transcoder per MLP, `lmjax sae train
--transcoders mlp`; a cross-layer transcoder, `--transcoders clt`; or a circuit-tracer
transcoder directory) and the page gains the prompt's attribution graph (lmjax.graph,
pruned), interactive, with a mini-dashboard per feature; the graph is also written as
circuit-tracer's graph JSON, OUT_STEM.graph.json, and its features' JSON (circuit-tracer's
feature schema, named by the graph's feature numbers) in OUT_STEM.graph_features/.
"""
from __future__ import annotations

import os

MAX_CARDS = 128  # feature dashboards in a graph's section: each is a few kB of HTML


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
    x.add_argument("--graph", action="store_true",
                   help="add the attribution graph (--dictionary is then a transcoder set) and write its JSON")
    x.add_argument("--node_budget", type=int,
                   help="--graph: the features given rows (default 512; 0 = every active one)")
    x.set_defaults(run=run)
    return x


def run(args, overrides=()):
    from lmjax.errors import LmjaxError
    from lmjax.interp.report import write_report
    from lmjax.train.workdir import open_workdir

    if args.feature_text and not args.dictionary:
        raise LmjaxError("--feature_text needs --dictionary: the text is for the dictionary's feature dashboards")
    if args.graph and not args.dictionary:
        raise LmjaxError("--graph needs --dictionary DIR: a transcoder set (one transcoder per MLP or a cross-layer "
                         "transcoder, e.g. from `lmjax sae train --transcoders mlp`)")
    if args.node_budget is not None and not args.graph:
        raise LmjaxError("--node_budget is for --graph (the features of the attribution graph)")
    if args.node_budget is not None and args.node_budget < 0:
        raise LmjaxError(f"--node_budget must be >= 0 (0 = every active feature); got {args.node_budget}")
    wd = open_workdir(args.workdir)
    model, params, tokenizer = wd.load(overrides)
    written = {}
    if args.graph:
        sections = _graph(args, wd, model, params, tokenizer, written)
    else:
        sections = _features(args, model, params, tokenizer) if args.dictionary else None
    ex = write_report(args.out, model, params, tokenizer, args.prompt, sections=sections, target=args.target,
                      contrast=args.contrast, corrupt=args.corrupt, top_k=args.top_k)
    for line in ex.summary:
        print(line)
    for line in written.get("lines", []):
        print(line)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB, {ex.seconds:.1f} s)")


def _feature_tokens(args, model, tokenizer):
    """The --feature_text token set for dashboards (None without the flag)."""
    from lmjax.sae import dashboard

    if not args.feature_text:
        return None
    with open(args.feature_text, encoding="utf-8") as f:  # a missing file: one line (commands.main)
        text = f.read()
    return dashboard.text_tokens(tokenizer, text, min(model.cfg.max_len, 128), max_rows=256)


def load_transcoders(path: str):
    """A transcoder set directory -> lmjax.graph.Transcoders: an `lmjax sae train --transcoders`
    run directory (one dictionary per MLP under dictionaries/<l>/, or one cross-layer
    transcoder), a single dictionary directory, or a circuit-tracer directory (config.yaml,
    layer_<l>.safetensors or W_enc_<l>.safetensors)."""
    from lmjax.errors import LmjaxError
    from lmjax.graph import Transcoders
    from lmjax.sae.interchange import load_circuit_tracer
    from lmjax.sae.store import dictionary_dirs, load_dictionary

    found = dictionary_dirs(path) if os.path.isdir(path) else []
    if not found:
        names = os.listdir(path) if os.path.isdir(path) else []
        if not any(n in names for n in ("config.yaml", "layer_0.safetensors", "W_enc_0.safetensors")):
            raise LmjaxError(f"--dictionary {path}: no transcoder set here (neither dictionaries/<l>/ from `lmjax sae "
                             "train --transcoders mlp|clt`, a dictionary directory, nor a circuit-tracer directory)")
        dictionaries, params = load_circuit_tracer(path)
        return Transcoders.of(dictionaries, params)
    loaded = [load_dictionary(d) for d in found]
    if len(loaded) == 1 and type(loaded[0][0]).__name__ == "CrossLayerTranscoder":
        return Transcoders.of(*loaded[0])
    return Transcoders.of([d for d, _ in loaded], [p for _, p in loaded])


def _graph(args, wd, model, params, tokenizer, written):
    """-> sections(ex) with the attribution graph; the transcoders and the text are read and
    checked against the model first, before anything compiles. `written` gets the lines to print."""
    from lmjax.commands.sae import check_same_model
    from lmjax.sae.store import dictionary_dirs
    from lmjax.graph import attribute
    from lmjax.graph import frontend, view
    import numpy as np

    from lmjax.graph.prune import prune, scores
    from lmjax.sae.dashboard import token_text

    if os.path.isdir(args.dictionary) and dictionary_dirs(args.dictionary):  # lmjax's own: trained on this model?
        check_same_model(args.dictionary, wd.config())
    transcoders = load_transcoders(args.dictionary)
    transcoders.check_model(model)
    tokens = _feature_tokens(args, model, tokenizer)
    budget = 512 if args.node_budget is None else (args.node_budget or None)
    stem = os.path.splitext(args.out)[0]
    scan = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(os.path.abspath(args.dictionary)))
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(stem)) or "graph"

    def sections(ex):
        graph = attribute(model, params, ex.tokens, transcoders, max_feature_nodes=budget)
        pruned = prune(graph)
        token_strs = [token_text(tokenizer, t) for t in ex.tokens]
        logit_strs = [token_text(tokenizer, t) for t in graph.logit_tokens.tolist()]
        # a card for each kept feature, the most influential MAX_CARDS when there are more
        nodes = np.flatnonzero(pruned.node_mask[:graph.n_features])
        nodes = nodes[np.argsort(-pruned.influence[nodes], kind="stable")]
        kept = list(dict.fromkeys(tuple(f) for f in graph.features[nodes][:, [0, 2]].tolist()))[:MAX_CARDS]
        cards, features_json = view.feature_cards(model, params, tokenizer, transcoders, kept, ex.tokens, tokens)
        data = frontend.graph_json(graph, token_strs, logit_strs, prompt=args.prompt, slug=slug, scan=scan,
                                   pruned=pruned)
        json_path = frontend.write_json(stem + ".graph.json", data)
        feature_dir = stem + ".graph_features"
        for rel, d in frontend.feature_files(features_json, scan).items():
            frontend.write_json(os.path.join(feature_dir, os.path.basename(rel)), d)
        written["lines"] = [f"graph: {len(data['nodes'])} nodes and {len(data['links'])} edges after pruning "
                            f"({graph.n_features} features computed); wrote {json_path} (circuit-tracer's graph JSON) "
                            f"and {feature_dir}/ (its features)"]
        return [view.graph_section(graph, pruned, token_strs, logit_strs, cards, scores(graph))]

    return sections


def _features(args, model, params, tokenizer):
    """-> sections(ex) for write_report; the dictionary and the text are read and checked
    against the model first, before anything compiles."""
    from lmjax.sae import dashboard, dashboard_html
    from lmjax.sae.store import load_dictionary

    dictionary, dparams = load_dictionary(args.dictionary)
    dashboard.check_dictionary(model, params, dictionary)
    tokens = _feature_tokens(args, model, tokenizer)

    def sections(ex):
        pf = dashboard.prompt_features(model, params, tokenizer, dictionary, dparams, ex.tokens, top=args.features,
                                       tokens=tokens)
        return [dashboard_html.features_section(pf)]

    return sections
