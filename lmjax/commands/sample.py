"""`lmjax sample`: generate text from a workdir's latest checkpoint."""
from __future__ import annotations

import sys


def add_parser(sub):
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
    s.set_defaults(run=run)


def run(args, overrides):
    from lmjax.sample import sample
    from lmjax.train.workdir import open_workdir

    prompts = list(args.prompt or [])
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    prompts = [p for p in (prompts or [""]) for _ in range(args.num_samples)]
    model, params, tokenizer = open_workdir(args.workdir).load(overrides)
    streaming = len(prompts) == 1  # one prompt: print the text as it is produced
    if streaming:
        print(prompts[0], end="", flush=True)
    texts = sample(params, model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   stream=sys.stdout if streaming else None)
    if streaming:
        print()
        return
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
        print(f"--- sample {i} ---")
        print(prompt + text)
