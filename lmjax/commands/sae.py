"""`lmjax sae train | eval | dashboard`: sparse dictionaries on a trained model's hook points.

    lmjax sae train --workdir MODEL --hook blocks.2.hook_resid_post --arch topk --k 32 --width 4096 --out DIR
                    [--hook_out H] [--steps N] [--config configs/sae.py:VARIANT] [--config.KEY=VALUE ...]
    lmjax sae train --workdir MODEL --transcoders mlp|clt --arch relu --width 512 --out DIR
    lmjax sae eval --workdir MODEL --dictionary DIR [--tokens N]
    lmjax sae dashboard --workdir MODEL --dictionary DIR --out features.html [--features 32]

`train` streams activations from the model (or caches them first: --config.cache=DIR),
trains with checkpoints in DIR (run it again to resume), then prints and writes
DIR/eval.json: FVU, explained variance, L0, dead latents, shrinkage and CE loss recovered
on the model's val split. Bad input (a hook the model lacks, k > width, a dictionary of
another model) is a one-line error before anything compiles.

`--transcoders` trains the transcoder set of an attribution graph (`lmjax explain --graph
--dictionary DIR`) instead of one dictionary on --hook: `mlp`, one transcoder per MLP from
blocks.l.ln2.hook_normalized to blocks.l.hook_mlp_out (with a linear skip under
--config.skip=True), all layers in one vmapped run, each with its own scales
(DIR/dictionaries/<l>/ is layer l's); `clt`, one cross-layer transcoder
reading every layer's ln2.hook_normalized and writing every later hook_mlp_out
(DIR/dictionaries/0/).
"""
from __future__ import annotations

import dataclasses
import json
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "sae.py")
FLAG_KEYS = ("hook", "hook_out", "arch", "k", "width", "steps", "transcoders")


def add_parser(sub):
    s = sub.add_parser("sae", help="sparse dictionaries (SAEs, transcoders) on a model's hook points")
    ssub = s.add_subparsers(dest="sae_command", required=True)
    t = ssub.add_parser("train", help="train a dictionary on a workdir's model")
    t.add_argument("--workdir", required=True, help="the trained model (a training workdir)")
    t.add_argument("--out", required=True, help="the run directory: checkpoints, metrics, the dictionary")
    t.add_argument("--config", default=DEFAULT_CONFIG, help="a config file[:variant] (default configs/sae.py)")
    t.add_argument("--hook", help="the hook point to read, e.g. blocks.2.hook_resid_post")
    t.add_argument("--hook_out", help="a transcoder's target hook point, e.g. blocks.2.hook_mlp_out")
    t.add_argument("--arch", help="relu, topk, batchtopk, jumprelu or matryoshka")
    t.add_argument("--k", type=int, help="latents kept per token (topk family)")
    t.add_argument("--width", type=int, help="the number of latents")
    t.add_argument("--steps", type=int, help="training steps")
    t.add_argument("--transcoders", choices=("mlp", "clt"),
                   help="an attribution graph's transcoder set instead of --hook: one per MLP, or a cross-layer one")
    t.add_argument("--no_progress", action="store_true")
    t.set_defaults(run=run_train)
    e = ssub.add_parser("eval", help="a dictionary's FVU, L0, dead latents and CE loss recovered")
    e.add_argument("--workdir", required=True)
    e.add_argument("--dictionary", required=True, help="a dictionary or run directory")
    e.add_argument("--tokens", type=int, default=65536, help="eval tokens from the model's val split")
    e.set_defaults(run=run_eval)
    d = ssub.add_parser("dashboard", help="feature dashboards: a self-contained HTML page and JSON")
    d.add_argument("--workdir", required=True)
    d.add_argument("--dictionary", required=True)
    d.add_argument("--out", default="features.html", help="the HTML file (the JSON goes beside it)")
    d.add_argument("--features", type=int, default=32, help="how many features (the most frequent first)")
    d.add_argument("--tokens", type=int, default=32768, help="val tokens the contexts come from")
    d.set_defaults(run=run_dashboard)
    return s


def _model_identity(config) -> dict:
    return {"model": config.model.to_dict(), "tokenizer": config.data.tokenizer}


def _corpus(workdir, config, tokenizer):
    from lmjax.data import corpus
    from lmjax.data.shards import default_cache_dir
    from lmjax.errors import LmjaxError

    if config.data.mixture:
        raise LmjaxError(f"{workdir} trains on a data.mixture; lmjax sae reads activations from a workdir "
                         "with one data.source")
    return corpus.token_data(config.data, tokenizer, config.data.cache_dir or default_cache_dir(), progress=False)


def _seq_len(model, requested: int) -> int:
    return requested or min(model.cfg.max_len, 128)


def run_train(args, overrides=()):
    from lmjax.config import load_config
    from lmjax.errors import LmjaxError
    from lmjax.sae.activations import CachedSource, ModelSource, cache_activations, check_hooks
    from lmjax.sae.architectures import Dictionary
    from lmjax.sae.training import fit
    from lmjax.train.workdir import open_workdir

    flags = [f"{k}={getattr(args, k)}" for k in FLAG_KEYS if getattr(args, k) is not None]
    c = load_config(args.config, list(overrides) + flags)
    if c.transcoders:
        return _train_transcoders(args, c)
    if not c.hook:
        raise LmjaxError("give the hook point to read: --hook NAME (e.g. blocks.0.hook_resid_post), or a config that sets it")
    wd = open_workdir(args.workdir)
    model, params, tokenizer = wd.load()
    check_hooks(model, [c.hook] + ([c.hook_out] if c.hook_out else []))
    # Checked now (k > width, ...), before anything compiles; its widths come from the source.
    dictionary = Dictionary(c.arch, 1, c.width, k=c.k, skip=c.skip, hook_in=c.hook, hook_out=c.hook_out or c.hook,
                            l1=c.l1, l0_coef=c.l0_coef, l0_penalty=c.l0_penalty, target_l0=c.target_l0 or None)
    config = wd.config()
    data = _corpus(wd, config, tokenizer)
    source = ModelSource(model, params, data.train, c.hook, c.hook_out or None, seq_len=_seq_len(model, c.seq_len),
                         seed=c.seed)
    dictionary = dataclasses.replace(dictionary, d_in=source.d_in, d_out=source.d_out)
    if c.cache:
        cache_activations(source, c.cache, n_tokens=c.cache_tokens, progress=not args.no_progress)
        source = CachedSource(c.cache, seed=c.seed)
    identity = _model_identity(config)
    result = fit(dictionary, source, steps=c.steps, batch_size=c.batch_size, lr=c.lr, seed=c.seed,
                 seeds=list(range(c.seed, c.seed + c.seeds)) if c.seeds > 1 else None,
                 dead_window=c.dead_window, warmup_steps=c.warmup_steps, decay_fraction=c.decay_fraction,
                 clip_norm=c.clip_norm or None, workdir=args.out, save_every=c.save_every, progress=not args.no_progress,
                 config={"trained_on": identity, "hook": c.hook, "hook_out": c.hook_out})
    from lmjax.sae.store import save_dictionaries
    save_dictionaries(args.out, result.dictionaries, result.params, trained_on=identity)
    report = _evaluate(model, params, data.val, result.dictionaries, result.params, c.eval_tokens,
                       _seq_len(model, c.seq_len))
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    for i, r in enumerate(report):
        print(_line(i, r))
    print(f"wrote {args.out}")


def mlp_hooks(model) -> tuple[list, list]:
    """(inputs, outputs) of every MLP: blocks.l.ln2.hook_normalized -> blocks.l.hook_mlp_out."""
    layers = [l for l, m in enumerate(model.cfg.layer_mixers) if model.cfg.has_mlp(m)]
    return [f"blocks.{l}.ln2.hook_normalized" for l in layers], [f"blocks.{l}.hook_mlp_out" for l in layers]


class _PerMemberScaled:
    """A member-axis source whose every member is multiplied by its own input and target
    scale (E||x s|| = sqrt(d) per layer), so one vmapped run trains each layer at its scale."""

    def __init__(self, source, s_in, s_out):
        import numpy as np

        self.source, self.member_axis, self.d_in, self.d_out = source, True, source.d_in, source.d_out
        self.s_in, self.s_out = (np.asarray(s, np.float32)[:, None, None] for s in (s_in, s_out))

    def _scaled(self, xy):
        return xy[0] * self.s_in, xy[1] * self.s_out

    def batch(self, step, batch_size):
        return self._scaled(self.source.batch(step, batch_size))

    def sample(self, n):
        return self._scaled(self.source.sample(n))


def _train_transcoders(args, c):
    """`sae train --transcoders mlp|clt`: the transcoder set of an attribution graph."""
    from lmjax.errors import LmjaxError
    from lmjax.sae.activations import ModelSource
    from lmjax.sae.architectures import Dictionary, scale_for
    from lmjax.sae.crosslayer import CLT_ARCHS, CrossLayerTranscoder
    from lmjax.sae.store import save_dictionaries
    from lmjax.sae.training import fit
    from lmjax.train.workdir import open_workdir

    if c.hook or c.hook_out:
        raise LmjaxError("--transcoders chooses the hook points itself (every MLP's input and output); drop --hook "
                         "and --hook_out")
    if c.skip and c.transcoders == "clt":
        raise LmjaxError("--transcoders clt: a cross-layer transcoder has no linear skip; drop --config.skip or "
                         "use --transcoders mlp")
    if c.transcoders == "clt" and c.arch not in CLT_ARCHS:
        raise LmjaxError(f"--transcoders clt: --arch {c.arch} is not one of {', '.join(CLT_ARCHS)}")
    if c.cache:
        raise LmjaxError("--transcoders streams activations from the model; --config.cache is for one dictionary")
    wd = open_workdir(args.workdir)
    model, params, tokenizer = wd.load()
    hooks_in, hooks_out = mlp_hooks(model)
    if not hooks_in:
        raise LmjaxError("this model has no MLP layers: there is nothing for transcoders to replace")
    n = len(hooks_in)
    if c.transcoders == "clt":  # checked now (arch, k), before anything compiles
        dictionary = CrossLayerTranscoder(c.arch, n, 1, c.width, k=c.k, hooks_in=hooks_in, hooks_out=hooks_out,
                                          l1=c.l1, l0_coef=c.l0_coef, l0_penalty=c.l0_penalty)
    else:
        dictionary = Dictionary(c.arch, 1, c.width, k=c.k, skip=c.skip, hook_in=hooks_in[0], hook_out=hooks_out[0],
                                l1=c.l1, l0_coef=c.l0_coef, l0_penalty=c.l0_penalty, target_l0=c.target_l0 or None)
    config = wd.config()
    data = _corpus(wd, config, tokenizer)
    seq_len = _seq_len(model, c.seq_len)
    source = ModelSource(model, params, data.train, hooks_in, hooks_out, seq_len=seq_len, seed=c.seed,
                         layer_axis=c.transcoders == "clt")
    dictionary = dataclasses.replace(dictionary, d_in=source.d_in, d_out=source.d_out)
    scale = c.transcoders == "clt"  # the CLT keeps per-layer scales itself
    if not scale:
        x0, y0 = source.sample(min(8192, 16 * c.batch_size))
        s_in, s_out = [scale_for(x0[l]) for l in range(n)], [scale_for(y0[l]) for l in range(n)]
        source = _PerMemberScaled(source, s_in, s_out)
    identity = _model_identity(config)
    result = fit(dictionary, source, steps=c.steps, batch_size=c.batch_size, lr=c.lr, seed=c.seed, scale=scale,
                 dead_window=c.dead_window, warmup_steps=c.warmup_steps, decay_fraction=c.decay_fraction,
                 clip_norm=c.clip_norm or None, workdir=args.out, save_every=c.save_every,
                 progress=not args.no_progress,
                 config={"trained_on": identity, "transcoders": c.transcoders, "hooks_in": hooks_in,
                         "hooks_out": hooks_out})
    dictionaries = result.dictionaries
    if not scale:  # each member: its layer's hooks and scales
        dictionaries = [dataclasses.replace(d, hook_in=hooks_in[l], hook_out=hooks_out[l], input_scale=s_in[l],
                                            output_scale=s_out[l]) for l, d in enumerate(dictionaries)]
    save_dictionaries(args.out, dictionaries, result.params, trained_on=identity)
    report = _evaluate(model, params, data.val, dictionaries, result.params, c.eval_tokens, seq_len)
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    for i, r in enumerate(report):
        print(_line(i, r))
    print(f"wrote {args.out}: {'a cross-layer transcoder' if scale else f'{n} transcoders'} for `lmjax explain "
          f"--graph --dictionary {args.out}`")


def _evaluate(model, params, tokens, dictionaries, dparams, n_tokens: int, seq_len: int) -> list[dict]:
    import jax
    import numpy as np

    from lmjax.data.batches import eval_batches
    from lmjax.errors import LmjaxError
    from lmjax.sae.activations import ModelSource
    from lmjax.sae.metrics import ce_recovered, reconstruction_metrics

    rows = max(n_tokens // seq_len, 1)
    if len(tokens) < seq_len + 1:
        raise LmjaxError(f"the val split has {len(tokens)} tokens, fewer than one window of {seq_len}")
    windows = np.concatenate([b["inputs"] for b in eval_batches(tokens, batch_size=8, seq_len=seq_len)])[:rows]
    out = []
    for i, d in enumerate(dictionaries):
        p = dparams if len(dictionaries) == 1 else jax.tree.map(lambda a: a[i], dparams)
        clt = hasattr(d, "hooks_out")
        source = ModelSource(model, params, tokens, list(d.hooks_in) if clt else d.hook_in,
                             list(d.hooks_out) if clt else (d.hook_out if d.is_transcoder else None),
                             seq_len=seq_len, skip=1, layer_axis=clt)
        batches = [source.batch(10**6 + j, 4096) for j in range(max(n_tokens // 4096, 1))]
        m = _clt_metrics(d, p, batches) if clt else reconstruction_metrics(d, p, batches)
        m.pop("density")
        m.update(ce_recovered(model, params, windows[: min(len(windows), 64)], d, p))
        out.append(m)
    return out


def _clt_metrics(clt, params, batches) -> dict:
    """reconstruction_metrics of a cross-layer transcoder, over all its layers at once: FVU of
    the concatenated outputs, L0 summed over layers, dead fraction of all its latents."""
    import jax
    import numpy as np

    from lmjax.sae.metrics import ReconstructionStats

    stats = ReconstructionStats(clt.n_latents)
    scales = np.asarray(clt.output_scales, np.float32)[:, None]
    run = jax.jit(lambda p, x: (lambda f: (f, clt.decode(p, f) / scales))(clt.encode(p, clt.scale_inputs(x))))
    for x, y in batches:
        f, y_hat = run(jax.device_get(params), x)
        flat = lambda a: np.asarray(a).reshape(len(a), -1)  # noqa: E731
        stats.update(flat(y), flat(y_hat), flat(f))
    return stats.result()


def _line(i, r) -> str:
    return (f"dictionary {i}: explained variance {r['explained_variance']:.4f} (FVU {r['fvu']:.4f}), "
            f"L0 {r['l0']:.1f}, dead {r['dead_fraction']:.3f} of latents over {r['dead_window_tokens']} tokens, "
            f"shrinkage {r['shrinkage']:.3f}, CE recovered {r['ce_loss_recovered']:.3f} "
            f"(clean {r['ce_clean']:.3f}, spliced {r['ce_spliced']:.3f}, zero {r['ce_zero_ablated']:.3f}, "
            f"KL {r['kl']:.4f})")


def check_same_model(dictionary_dir, config) -> None:
    from lmjax.errors import LmjaxError
    from lmjax.sae.store import trained_on

    stored = trained_on(dictionary_dir)
    if stored and stored != json.loads(json.dumps(_model_identity(config))):
        raise LmjaxError(f"the dictionary {dictionary_dir} was trained on another model than this workdir's "
                         "(its model config or tokenizer differ); give the workdir it was trained on")


def _open(args):
    from lmjax.sae.activations import check_hooks
    from lmjax.sae.store import load_dictionary
    from lmjax.train.workdir import open_workdir

    wd = open_workdir(args.workdir)
    config = wd.config()
    check_same_model(args.dictionary, config)
    dictionary, dparams = load_dictionary(args.dictionary)
    model, params, tokenizer = wd.load()
    check_hooks(model, [dictionary.hook_in, dictionary.hook_out])
    return wd, config, model, params, tokenizer, dictionary, dparams


def run_eval(args, overrides=()):
    wd, config, model, params, tokenizer, dictionary, dparams = _open(args)
    data = _corpus(wd, config, tokenizer)
    report = _evaluate(model, params, data.val, [dictionary], dparams, args.tokens, _seq_len(model, 0))
    print(_line(0, report[0]))


def run_dashboard(args, overrides=()):
    import numpy as np

    from lmjax.data.batches import eval_batches
    from lmjax.sae import dashboard, dashboard_html

    wd, config, model, params, tokenizer, dictionary, dparams = _open(args)
    data = _corpus(wd, config, tokenizer)
    seq_len = _seq_len(model, 0)
    windows = np.concatenate([b["inputs"] for b in eval_batches(data.val, batch_size=8, seq_len=seq_len)])
    windows = windows[: max(args.tokens // seq_len, 1)]
    dash = dashboard.compute(model, params, tokenizer, dictionary, dparams, windows, features=_frequent(
        model, params, dictionary, dparams, windows, args.features))
    dashboard_html.write_html(dash, args.out)
    json_dir = os.path.splitext(args.out)[0] + "_features"
    dashboard.write_circuit_tracer(dash, json_dir)
    print(f"wrote {args.out} and {json_dir}/ (circuit-tracer's feature JSON)")


def _frequent(model, params, dictionary, dparams, windows, n: int):
    """The n most frequently firing features on the windows."""
    import numpy as np

    from lmjax.sae import dashboard

    acts = dashboard.feature_activations(model, params, dictionary, dparams, windows[:64])
    counts = (np.asarray(acts) != 0).reshape(-1, acts.shape[-1]).sum(0)
    return [int(i) for i in np.argsort(-counts, kind="stable")[:n]]
