"""`lmjax scaling size | sweep | run | fit | emergence | chinchilla`: accounting, sweeps and fits.

    lmjax scaling size --config configs/quickstart.py [--config.model.n_layer=8]
    lmjax scaling sweep --config configs/quickstart.py --isoflop 1e13,3e13,1e14 --out sweep.json
    lmjax scaling run sweep.json --workdir runs/sweep [--emit]
    lmjax scaling fit runs.csv --approach 3 --out fit.json [--n N --d D --loss loss --plots DIR]
    lmjax scaling emergence runs.csv --out emergence.png
    lmjax scaling chinchilla [--data $LMJAX_DATA/chinchilla_epoch/svg_extracted_data.csv] --out runs/chinchilla

--out: a subcommand that writes one file takes --out FILE (fit, sweep, emergence); one that
writes several takes --out DIR (chinchilla; fit's figures go to --plots DIR).
"""
from __future__ import annotations

import json
import os

import numpy as np

from lmjax.errors import LmjaxError, MissingFileError

APPROACHES = ("1", "2", "3", "kaplan_n", "kaplan_d")
CHINCHILLA_DATA = "$LMJAX_DATA/chinchilla_epoch/svg_extracted_data.csv"


def add_parser(sub):
    p = sub.add_parser("scaling", help="parameter/FLOP accounting and scaling-law fits",
                       description=__doc__.split("\n\n")[-1].strip())
    ssub = p.add_subparsers(dest="scaling_command", required=True)
    s = ssub.add_parser("size", help="parameter counts and FLOPs per token of a config")
    s.add_argument("--config", required=True)
    f = ssub.add_parser("fit", help="fit a scaling law to a CSV of runs")
    f.add_argument("csv", help="one row per run (or per evaluation); columns named by --n/--d/--loss/--c")
    f.add_argument("--approach", default="3", choices=APPROACHES,
                   help="1: loss envelope, 2: IsoFLOP parabolas, 3: L = E + A/N^a + B/D^b, kaplan_n/_d: L(N), L(D)")
    f.add_argument("--n", default="N", help="column of model sizes")
    f.add_argument("--d", default="D", help="column of training tokens")
    f.add_argument("--loss", default="loss", help="column of losses")
    f.add_argument("--c", default="", help="column of compute (default 6 N D)")
    f.add_argument("--window", type=int, default=0,
                   help="approach 2: fit each parabola to this many runs around the budget's best (0: all)")
    f.add_argument("--bootstrap", type=int, default=100, help="approach 3: bootstrap resamples for intervals")
    f.add_argument("--out", default="fit.json", metavar="FILE", help="the JSON file to write (default fit.json)")
    f.add_argument("--plots", default="", metavar="DIR", help="a directory for PNG figures")
    w = ssub.add_parser("sweep", help="plan a sweep (JSON) from a base config")
    w.add_argument("--config", required=True, help="the base config; its batch_size x seq_len sets tokens per step")
    w.add_argument("--isoflop", default="", help="compute budgets (FLOPs), comma-separated: an IsoFLOP plan")
    w.add_argument("--sizes_per_budget", type=int, default=4)
    w.add_argument("--tokens_per_param", type=float, default=20.0,
                   help="IsoFLOP: the sizes are centred where a run sees this many tokens per parameter")
    w.add_argument("--spread", type=float, default=4.0, help="IsoFLOP: largest / smallest size per budget")
    w.add_argument("--flops", default="6N", choices=("6N", "palm"),
                   help="IsoFLOP: FLOPs per token that set D = C / FLOPs: 6N (N = block matrices), or PaLM's "
                        "6 N_matmul (with the head) + 12 n_layer d_model seq_len, as lmjax train reports")
    w.add_argument("--widths", default="",
                   help="IsoFLOP: explicit d_model values per budget instead of the centring rule, "
                        "comma-separated, budgets separated by '/': e.g. 8,16,24/16,24,32/24,32,48")
    w.add_argument("--grid_sizes", default="", help="target parameter counts, comma-separated: a grid plan")
    w.add_argument("--grid_tokens", default="", help="token budgets for the grid, comma-separated")
    w.add_argument("--out", default="sweep.json", metavar="FILE", help="the plan (JSON) to write (default sweep.json)")
    r = ssub.add_parser("run", help="run a planned sweep with resume; results in WORKDIR/runs.csv")
    r.add_argument("plan", help="a sweep.json from `lmjax scaling sweep`")
    r.add_argument("--workdir", required=True)
    r.add_argument("--emit", action="store_true", help="print one `lmjax train` command per run instead")
    r.add_argument("--launcher", default="", help="with --emit: a launcher prefix, e.g. "
                   "'python launch/tpu_pod.py run --name NAME --zone ZONE --accelerator_type TYPE'")
    e = ssub.add_parser("emergence", help="plot a sweep's emergence probes (ICL, induction, copy gain) against N")
    e.add_argument("csv", help="a sweep's runs.csv (from `lmjax scaling run`)")
    e.add_argument("--loss", default="final_val_loss")
    e.add_argument("--out", default="emergence.png", metavar="FILE", help="the figure to write (default emergence.png)")
    c = ssub.add_parser("chinchilla", help="reproduce approach 3 on Epoch AI's extraction of Chinchilla's data")
    c.add_argument("--data", default=CHINCHILLA_DATA, metavar="CSV",
                   help=f"Epoch AI's extracted points (default {CHINCHILLA_DATA}; LMJAX_DATA names the folder)")
    c.add_argument("--bootstrap", type=int, default=200)
    c.add_argument("--out", default="runs/chinchilla", metavar="DIR", help="a directory for fit.json and the figure")
    p.set_defaults(run=run)


def run(args, overrides):
    commands = {"size": cmd_size, "fit": cmd_fit, "sweep": cmd_sweep, "run": cmd_run, "chinchilla": cmd_chinchilla,
                "emergence": cmd_emergence}
    commands[args.scaling_command](args, overrides)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LmjaxError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def cmd_sweep(args, overrides):
    from lmjax.config import load_config
    from lmjax.scaling import sweeps


    config = load_config(args.config, overrides)  # validates the base config and the overrides
    tokens_per_step = config.train.batch_size * (config.data.seq_len or config.model.max_len)
    if bool(args.isoflop) == bool(args.grid_sizes):
        raise LmjaxError("give either --isoflop BUDGETS or --grid_sizes SIZES --grid_tokens TOKENS")
    flops = sweeps.palm_flops(config) if args.flops == "palm" else sweeps.six_n
    if args.isoflop and args.widths:
        widths = [[int(w) for w in _floats(group, "--widths")] for group in args.widths.split("/")]
        runs = sweeps.isoflop_plan_widths(_floats(args.isoflop, "--isoflop"), widths, tokens_per_step,
                                          flops_per_token=flops)
    elif args.isoflop:
        runs = sweeps.isoflop_plan(_floats(args.isoflop, "--isoflop"), args.sizes_per_budget, tokens_per_step,
                                   spread=args.spread, tokens_per_param=args.tokens_per_param, flops_per_token=flops)
    else:
        tokens = _floats(args.grid_tokens, "--grid_tokens")
        if not tokens:
            raise LmjaxError("--grid_sizes needs --grid_tokens")
        runs = sweeps.grid_plan(_floats(args.grid_sizes, "--grid_sizes"), tokens, tokens_per_step)
    sweeps.write_plan(args.out, args.config, runs, overrides)
    for run in runs:
        print(f"{run['name']:28s} {run['n_layer']:3d} x {run['d_model']:5d}  N {run['N']:9.3g}  "
              f"D {run['D']:9.3g}  C {run['C']:9.3g}  {run['steps']} steps")
    print(f"{len(runs)} runs -> {args.out}")


def cmd_run(args, overrides):
    from lmjax.scaling import sweeps

    plan = sweeps.read_plan(_input(args.plan))
    if args.emit:
        print("\n".join(sweeps.launch_commands(plan, args.workdir, args.launcher)))
        return
    rows = sweeps.run_sweep(plan, args.workdir)
    print(f"{len(rows)}/{len(plan['runs'])} runs done -> {args.workdir}/runs.csv")


def cmd_size(args, overrides):
    from lmjax.config import load_config, model_config
    from lmjax.model import accounting
    from lmjax.scaling import sweeps

    config = load_config(args.config, overrides)
    vocab = sweeps.vocab_size_of(config)
    cfg = model_config(config, vocab)
    seq = config.data.seq_len or cfg.max_len
    print(json.dumps({"vocab_size": vocab, "seq_len": seq, **accounting.size_report(cfg, seq)}, indent=2))


def cmd_fit(args, overrides):
    from lmjax.scaling import fits, plots, tables

    _input(args.csv)
    names = {"N": args.n, "D": args.d, "loss": args.loss, **({"C": args.c} if args.c else {})}
    cols = tables.read_columns(args.csv, names)
    extra = {}
    N, D, L, C = cols["N"], cols["D"], cols["loss"], cols.get("C")
    if args.approach == "3":
        fit = fits.fit_parametric(N, D, L, bootstrap=args.bootstrap)
    elif args.approach == "2":
        fit = fits.fit_isoflop(N, D, L, C, window=args.window)
        extra = {"window": args.window, "leave_one_out": fits.isoflop_leave_one_out(N, D, L, C, window=args.window)}
    elif args.approach == "1":
        fit = fits.fit_envelope(N, D, L, C)
    else:
        fit = fits.fit_kaplan(N if args.approach == "kaplan_n" else D, L)
    result = {"approach": args.approach, "csv": args.csv, "columns": names, **fits.summarise(fit), **extra}
    _write_json(args.out, result)
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
        if args.approach == "3":
            plots.plot_loss_vs_compute(N, D, L, fit, os.path.join(args.plots, "loss_vs_compute.png"))
        elif args.approach in ("1", "2"):
            plots.plot_optimal_allocation(fit, os.path.join(args.plots, "optimal_allocation.png"))
            if args.approach == "2":
                plots.plot_isoflops(N, D, L, fit, path=os.path.join(args.plots, "isoflops.png"), C=C,
                                    window=args.window)
    print(json.dumps(result, indent=2))


PROBE_TITLES = {"icl_score": "ICL score (late - early loss)", "induction_score": "best induction score",
                "copy_gain": "copy gain on r + r (nats)"}


def cmd_emergence(args, overrides):
    from lmjax.scaling import plots, tables

    _input(args.csv)
    cols = tables.read_columns(args.csv, {"N": "N", "C": "C", "loss": args.loss, **{k: k for k in PROBE_TITLES}})
    path = plots.plot_emergence(cols["N"], cols["C"], cols["loss"], {t: cols[k] for k, t in PROBE_TITLES.items()},
                                path=args.out)
    order = np.lexsort((cols["N"], np.round(np.log10(cols["C"]), 1)))  # budget (to ~25%), then size
    print(f"{'C':>9s} {'N':>9s} {'loss':>7s} {'ICL':>7s} {'induct':>7s} {'copy':>7s}")
    for i in order:
        print(f"{cols['C'][i]:9.3g} {cols['N'][i]:9.3g} {cols['loss'][i]:7.4f} {cols['icl_score'][i]:+7.3f} "
              f"{cols['induction_score'][i]:7.3f} {cols['copy_gain'][i]:+7.3f}")
    print(f"wrote {path}")


def cmd_chinchilla(args, overrides):
    from lmjax.data import reference
    from lmjax.scaling import chinchilla, fits, plots

    N, D, L = chinchilla.epoch_points(_input(reference.resolve(args.data, "--data"), "--data"))
    fit = fits.fit_parametric(N, D, L, bootstrap=args.bootstrap)
    os.makedirs(args.out, exist_ok=True)
    result = {"points": len(L), "lmjax": fit.as_dict(), "epoch_ai": chinchilla.EPOCH, "hoffmann_et_al": chinchilla.HOFFMANN}
    _write_json(os.path.join(args.out, "fit.json"), result)
    plots.plot_loss_vs_compute(N, D, L, fit, os.path.join(args.out, "loss_vs_compute.png"))
    print(f"{'':8s} {'lmjax':>10s} {'Epoch AI':>10s} {'Hoffmann':>10s}")
    for name in fits.PARAMETRIC_NAMES:
        print(f"{name:8s} {getattr(fit, name):10.4g} {chinchilla.EPOCH[name]:10.4g} {chinchilla.HOFFMANN[name]:10.4g}")
    print(f"{len(L)} points, {fit.starts} L-BFGS starts + {args.bootstrap} bootstrap refits in {fit.wall_s:.1f} s; "
          f"wrote {args.out}/fit.json and loss_vs_compute.png")


def _input(path: str, flag: str = "") -> str:
    """An input file that must exist, checked before any work; `flag` names it ('' for a positional)."""
    where = f"{flag} {path}" if flag else path
    if os.path.isdir(path):
        raise LmjaxError(f"{where} is a directory; expected a file")
    if not os.path.isfile(path):
        raise MissingFileError(f"{where}: no such file")
    return path


def _write_json(path: str, obj) -> None:
    """Write atomically: a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
