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


def _split_overrides(argv):
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


def _parser():
    p = argparse.ArgumentParser(prog="lmjax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (resumes from the workdir's latest checkpoint)")
    t.add_argument("--config", required=True, help="configs/NAME.py[:variant]")
    t.add_argument("--workdir", required=True, help="where checkpoints, metrics and TensorBoard logs go")
    t.add_argument("--stop_at", type=int, default=None, help="stop (with a checkpoint) at this step")
    t.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")
    m = t.add_argument_group(
        "multi-process", "join a multi-process run (or set LMJAX_COORDINATOR, LMJAX_NUM_PROCESSES, "
        "LMJAX_PROCESS_ID); without them a multi-host TPU or a SLURM job with >1 task is detected")
    m.add_argument("--coordinator", help="HOST:PORT of process 0's coordinator service")
    m.add_argument("--num_processes", type=int, help="processes in the run")
    m.add_argument("--process_id", type=int, help="this process's index, 0 .. num_processes-1")
    e = sub.add_parser("eval", help="evaluate the workdir's latest checkpoint on its val split")
    e.add_argument("--workdir", required=True)
    e.add_argument("--batches", type=int, default=0, help="val batches (0 = the config's train.eval_batches)")
    s = sub.add_parser("sample", help="generate text from the workdir's latest checkpoint")
    s.add_argument("--workdir", required=True)
    s.add_argument("--prompt", action="append", help="a prompt (repeat for a batch); default: start from BOS")
    s.add_argument("--prompt_file", help="one prompt per line (write \\n for a newline inside a prompt)")
    s.add_argument("--num_samples", type=int, default=1, help="samples per prompt")
    s.add_argument("--max_new_tokens", type=int, default=100)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top_k", type=int, default=0, help="0 = off")
    s.add_argument("--top_p", type=float, default=1.0, help="nucleus mass in (0, 1]; 1 = off")
    s.add_argument("--seed", type=int, default=0)
    from lmjax.hf.cli import add_parser as add_convert_parser  # lmjax convert (Hugging Face in/out)

    add_convert_parser(sub)
    from lmjax.interp.cli import add_parser as add_explain_parser  # lmjax explain (why this token?)

    add_explain_parser(sub)
    from lmjax.scaling.cli import add_parser as add_scaling_parser  # lmjax scaling size | fit | chinchilla

    add_scaling_parser(sub)
    from lmjax.repro.cli import add_parser as add_repro_parser  # lmjax repro NAME (published results)

    add_repro_parser(sub)
    return p


def cmd_train(args, overrides):
    from lmjax import distributed
    from lmjax.config import load_config

    config = load_config(args.config, overrides)  # a bad config fails before joining other processes
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any device use

    import jax

    from lmjax.sample import sample
    from lmjax.train.loop import train

    summary = train(config, args.workdir, stop_at_step=args.stop_at, progress=not args.no_progress)
    lead = jax.process_index() == 0
    if "val_loss" in summary and lead:
        print(f"final: val loss {summary['val_loss']:.4f} nats/token, val bits/byte {summary['val_bpb']:.4f}")
    if summary["finished"] and config.train.sample_tokens and jax.process_count() > 1:
        if lead:
            print(f"(no sample in a {jax.process_count()}-process run: lmjax sample --workdir {args.workdir})")
    elif summary["finished"] and config.train.sample_tokens:
        run, prompt = summary["run"], config.train.sample_prompt
        room = run.model.cfg.max_len - max(len(run.tokenizer.encode(prompt)), 1)
        [text] = sample(summary["state"]["params"], run.model, run.tokenizer, prompt,
                        max_new_tokens=min(config.train.sample_tokens, room),
                        temperature=config.train.sample_temperature, seed=config.train.seed)
        print("sample:\n" + prompt + text)


def _restore(workdir, overrides=()):
    from lmjax.config import config_from_dict, set_field
    from lmjax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first (lmjax train --workdir {workdir})")
    config_dict, _ = ckpt.restore_meta()
    config = config_from_dict(config_dict)
    for item in overrides:
        key, _, value = item.partition("=")
        set_field(config, key, value)
    ckpt.close()
    return config


def cmd_eval(args, overrides):
    from lmjax.train.loop import evaluate, setup
    from lmjax.train.steps import make_eval_step

    config = _restore(args.workdir, overrides)
    if args.batches:
        config.train.eval_batches = args.batches
    run = setup(config, args.workdir)
    metrics = evaluate(run, make_eval_step(run.model), run.state["params"])
    print(f"step {int(run.state['step'])}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def cmd_sample(args, overrides):
    from lmjax.sample import sample
    from lmjax.train.loop import setup

    prompts = list(args.prompt or [])
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    prompts = [p for p in (prompts or [""]) for _ in range(args.num_samples)]
    run = setup(_restore(args.workdir, overrides), args.workdir, with_data=False)
    streaming = len(prompts) == 1  # one prompt: print the text as it is produced
    if streaming:
        print(prompts[0], end="", flush=True)
    texts = sample(run.state["params"], run.model, run.tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   stream=sys.stdout if streaming else None)
    if streaming:
        print()
        return
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
        print(f"--- sample {i} ---")
        print(prompt + text)


def cmd_convert(args, overrides):
    from lmjax.hf.cli import run

    run(args, overrides)


def cmd_scaling(args, overrides):
    from lmjax.scaling.cli import run

    run(args, overrides)


def cmd_repro(args, overrides):
    from lmjax.repro.cli import run

    run(args, overrides)


def cmd_explain(args, overrides):
    from lmjax.interp.cli import cmd_explain as run

    run(args, overrides)


def main(argv=None):
    from lmjax.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    command = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "convert": cmd_convert, "explain": cmd_explain,
               "scaling": cmd_scaling, "repro": cmd_repro}[args.command]
    try:
        command(args, overrides)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # bad input: one line, no traceback
        print(f"lmjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
