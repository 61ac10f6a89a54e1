"""`lmjax train`: train (or resume) a model in a workdir, then print a sample."""
from __future__ import annotations


def add_parser(sub):
    t = sub.add_parser("train", help="train a model (resumes from the workdir's latest checkpoint)")
    t.add_argument("--config", required=True, help="configs/NAME.py[:variant]")
    t.add_argument("--workdir", required=True, help="where checkpoints, metrics and TensorBoard logs go")
    t.add_argument("--stop_at", type=int, default=None, help="stop (with a checkpoint) at this step")
    t.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")
    t.add_argument("--allow_changes", action="store_true",
                   help="resume even though data.source, data.tokenizer, data.seq_len, data.val_fraction, "
                        "train.batch_size or train.steps differ from the checkpoint's (otherwise an error)")
    m = t.add_argument_group(
        "multi-process", "join a multi-process run (or set LMJAX_COORDINATOR, LMJAX_NUM_PROCESSES, "
        "LMJAX_PROCESS_ID); without them a multi-host TPU or a SLURM job with >1 task is detected")
    m.add_argument("--coordinator", help="HOST:PORT of process 0's coordinator service")
    m.add_argument("--num_processes", type=int, help="processes in the run")
    m.add_argument("--process_id", type=int, help="this process's index, 0 .. num_processes-1")
    t.set_defaults(run=run)


def run(args, overrides):
    from lmjax import distributed
    from lmjax.config import load_config

    config = load_config(args.config, overrides)  # a bad config fails before joining other processes
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any device use

    import jax

    from lmjax.sample import sample
    from lmjax.train.loop import train

    summary = train(config, args.workdir, stop_at_step=args.stop_at, progress=not args.no_progress,
                    allow_changes=args.allow_changes)
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
