"""`lmjax eval`: the val loss, perplexity and bits per byte of a workdir's latest checkpoint."""
from __future__ import annotations


def add_parser(sub):
    e = sub.add_parser("eval", help="evaluate the workdir's latest checkpoint on its val split")
    e.add_argument("--workdir", required=True)
    e.add_argument("--batches", type=int, default=0, help="val batches (0 = the config's train.eval_batches)")
    e.set_defaults(run=run)


def run(args, overrides):
    from lmjax.train.loop import evaluate, setup
    from lmjax.train.steps import make_eval_step
    from lmjax.train.workdir import open_workdir

    workdir = open_workdir(args.workdir)
    config = workdir.config(overrides)  # the run's own config; overrides validated like training's
    if args.batches:
        config.train.eval_batches = args.batches
    run = setup(config, workdir)
    metrics = evaluate(run, make_eval_step(run.model), run.state["params"])
    print(f"step {int(run.state['step'])}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
