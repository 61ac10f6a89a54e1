"""The data pipeline's throughput on this CPU: tokenizing a jsonl corpus, the loader, and a
training step with real vs synthetic batches.

    python bench/data.py [--mb 16 --vocab 8192 --rounds 2 --steps 20 --sections tokenize,loader,step]

- tokenize: the standard library's .py files as one jsonl corpus (the first --mb MB), a
  GPT-2-style byte-level BPE tokenizer.json (GPT-2's pre-tokenizer, --vocab ids) trained
  here on a slice of it. lmjax's tokenizer (batches through the tokenizer's batch API in
  one worker process per core) against the single-process rate before it (each document
  through `encode_array` in this process: the path lmjax had), rounds interleaved; text
  MB/s (UTF-8 bytes of the documents) and tokens/s, and a check that both wrote the same
  token shards.
- loader: tokens/s that one process's `train_rows` delivers from the memory-mapped cache
  (global batch 64 x 1024 read by one process, and an 8-process share), for one source and
  for a two-source mixture.
- step: a small model's training step (4 x 256, context 256, batch 16), fed by the loader
  from the cache (as lmjax.train.loop feeds it) vs one synthetic batch already on the
  device: mean step time of each over --steps steps, interleaved.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import machine, runnable_tasks  # noqa: E402

from lmjax.data import MixtureData, parse_mixture, prepare_tokens, text_source  # noqa: E402
from lmjax.data.encode import available_cores  # noqa: E402
from lmjax.data.hf_tokenizer import HFTokenizer  # noqa: E402
from lmjax.data.sources import stdlib_paths  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_corpus(out_dir: str, mb: float, vocab: int) -> tuple[str, HFTokenizer]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    docs, size = [], 0
    for p in stdlib_paths():
        with open(p, encoding="utf-8", errors="replace") as f:
            docs.append(f.read())
        size += len(docs[-1].encode("utf-8"))
        if size >= mb * 1e6:
            break
    path = os.path.join(out_dir, "corpus.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs[: max(1, len(docs) // 4)], trainer=trainer)
    return path, HFTokenizer(tok.to_str(), eos_id=tok.token_to_id("<|endoftext|>"))


class PerDocument:
    """The tokenizer without its batch API: every document through encode_array, as before."""

    def __init__(self, tok):
        self._tok = tok
        self.kind, self.vocab_size, self.eos_id = tok.kind, tok.vocab_size, tok.eos_id

    def encode_array(self, text):
        return self._tok.encode_array(text)

    def token_bytes(self):
        return self._tok.token_bytes()

    def to_json(self):
        return self._tok.to_json()


def bench_tokenize(args, tmp: str) -> tuple[dict, str, HFTokenizer]:
    path, tok = make_corpus(tmp, args.mb, args.vocab)
    src = text_source(path)
    ways = {"before: one process, per document": (PerDocument(tok), 1), "lmjax: batches in worker processes":
            (tok, 0)}
    times: dict = {name: [] for name in ways}
    shards, meta = {}, None
    for r in range(args.rounds):
        for name, (t, workers) in ways.items():
            cache = os.path.join(tmp, f"cache-{r}-{len(times[name])}-{workers}")
            t0 = time.perf_counter()
            data = prepare_tokens(src, t, cache, progress=False, workers=workers)
            times[name].append(time.perf_counter() - t0)
            meta = data.meta
            shards[name] = [open(os.path.join(data.meta["dir"], f), "rb").read() for f in ("train.bin", "val.bin")]
            log(f"tokenize round {r}: {name}: {times[name][-1]:.1f} s")
            if name.startswith("before"):
                shutil.rmtree(cache)
    n_bytes = meta["n_bytes_train"] + meta["n_bytes_val"]
    n_tokens = meta["n_tokens_train"] + meta["n_tokens_val"]
    out = {"corpus_text_mb": n_bytes / 1e6, "documents": meta["n_documents"], "tokens": n_tokens,
           "vocab": tok.vocab_size, "workers": available_cores(), "same_shards": len({tuple(s) for s in shards.values()}) == 1}
    for name, ts in times.items():
        out[name] = {"best_mb_s": n_bytes / min(ts) / 1e6, "median_mb_s": n_bytes / statistics.median(ts) / 1e6,
                     "best_tokens_s": n_tokens / min(ts), "seconds": ts}
    names = list(ways)
    out["speedup_best"] = out[names[1]]["best_mb_s"] / out[names[0]]["best_mb_s"]
    out["speedup_median"] = out[names[1]]["median_mb_s"] / out[names[0]]["median_mb_s"]
    return out, data.meta["dir"], tok


def bench_loader(cache_entry_source: str, tok, tmp: str) -> dict:
    data = prepare_tokens(text_source(cache_entry_source), tok, os.path.join(tmp, "loader-cache"), progress=False)
    other = os.path.join(tmp, "other.jsonl")
    with open(other, "w") as f:
        for p in stdlib_paths()[-300:]:
            f.write(json.dumps({"text": open(p, encoding="utf-8", errors="replace").read()}) + "\n")
    comps = parse_mixture(({"name": "a", "source": cache_entry_source, "weight": 0.7},
                           {"name": "b", "source": other, "weight": 0.3}))
    mix = MixtureData(comps, {"a": data, "b": prepare_tokens(text_source(other), tok, os.path.join(tmp, "loader-cache"),
                                                              progress=False)})
    out = {}
    for label, d in (("one source", data), ("mixture of 2", mix)):
        for rows, what in ((64, "whole global batch 64 x 1024"), (8, "one of 8 processes: 8 of 64 rows")):
            step, t0, tokens = 0, time.perf_counter(), 0
            while time.perf_counter() - t0 < 2.0:
                b = d.train_rows(seed=0, step=step, batch_size=64, seq_len=1024, start=0, stop=rows)
                tokens += b["inputs"].size
                step += 1
            out[f"{label}, {what}"] = {"tokens_per_s": tokens / (time.perf_counter() - t0), "batches": step}
            log(f"loader {label}, {what}: {out[f'{label}, {what}']['tokens_per_s']:,.0f} tokens/s")
    return out


def bench_step(args, source: str, tokenizer_path: str, tmp: str) -> dict:
    import jax

    from lmjax import sharding
    from lmjax.config import apply_overrides, default_config
    from lmjax.train.loop import setup
    from lmjax.train.steps import make_train_step

    config = apply_overrides(default_config(), [
        "model.n_layer=4", "model.d_model=256", "model.n_head=4", "model.max_len=256", f"data.source={source}",
        f"data.tokenizer={tokenizer_path}", f"data.cache_dir={os.path.join(tmp, 'step-cache')}",
        "train.batch_size=16", "train.grad_accum=1"])
    run = setup(config, os.path.join(tmp, "step-run"))
    step_fn = make_train_step(run.model, run.optimizer, grad_accum=1, seed=0, mesh=run.mesh, rules=run.rules)
    where = sharding.batch_sharding(run.mesh, run.rules)

    def real(step):
        return sharding.assemble_batch(where, 16, lambda a, b: run.data.train_rows(
            seed=0, step=step, batch_size=16, seq_len=256, start=a, stop=b))

    fixed = real(10**6)  # one batch, placed on the device once
    state = run.state
    state, m = step_fn(state, fixed)  # compile
    jax.block_until_ready(m)
    times = {"real data (loader from the cache)": [], "synthetic (one batch already on the device)": []}
    for r in range(args.rounds * 2):
        for name in times:
            t0 = time.perf_counter()
            for s in range(args.steps):
                state, m = step_fn(state, real(r * args.steps + s) if name.startswith("real") else fixed)
            jax.block_until_ready(m)
            times[name].append((time.perf_counter() - t0) / args.steps)
    out = {name: {"best_step_ms": 1e3 * min(ts), "median_step_ms": 1e3 * statistics.median(ts)}
           for name, ts in times.items()}
    loader = []
    for s in range(50):
        t0 = time.perf_counter()
        real(s)
        loader.append(time.perf_counter() - t0)
    out["loader_ms_per_batch_incl_device_put"] = 1e3 * statistics.median(loader)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=16.0, help="corpus size in MB of text")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sections", default="tokenize,loader,step")
    args = ap.parse_args()
    sections = args.sections.split(",")
    result = {"machine": machine(runnable_tasks_at_start=runnable_tasks())}
    tmp = tempfile.mkdtemp(prefix="lmjax-bench-data-")
    try:
        result["tokenize"], _, tok = bench_tokenize(args, tmp) if "tokenize" in sections else (None, None, None)
        if tok is None:
            _, tok = make_corpus(tmp, args.mb, args.vocab)
        corpus = os.path.join(tmp, "corpus.jsonl")
        tok_path = os.path.join(tmp, "tokenizer.json")
        with open(tok_path, "w") as f:
            f.write(tok.tokenizer_json)
        if "loader" in sections:
            result["loader"] = bench_loader(corpus, tok, tmp)
        if "step" in sections:
            result["step"] = bench_step(args, corpus, tok_path, tmp)
        result["machine"]["runnable_tasks_at_end"] = runnable_tasks()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if v is not None}, indent=1))


if __name__ == "__main__":
    main()
