"""TopK SAE training on this CPU: lmjax.sae vs SAELens on the same cached activations, in one run.

    python bench/sae.py > sae.json            # ~25 min on the 2-core CPU (+5 min the first time)
    python bench/sae.py --quick > sae.json    # ~2-3 min smoke run (8 steps; its figures mean nothing)

Prints ONE JSON object on stdout (progress goes to stderr). What it does:

1. Model: configs/quickstart.py (4 x 128 byte-level transformer on the stdlib corpus),
   trained for `--model_steps` steps (default 300; 0 = its random init), kept in
   `--workdir` and reused by later runs.
2. Activations: `blocks.2.hook_resid_post` (`--hook`) on windows of 128 tokens (the first
   position dropped), `--tokens` (+ 12 batches) of them from the train split written once by
   lmjax.sae.activations.cache_activations (reused), and `--eval_tokens` held-out ones
   from the val split. SAELens reads the same array through its cached-activations path:
   the rows are copied into the Hugging Face dataset layout its `ActivationsStore` loads
   (`cached_activations_path`; one column named after the hook, [context 128, d_in]).
3. The same SAE in both: TopK, k = 32, width 32 x d_model = 4096, Adam (betas 0.9 / 0.999,
   constant lr), batch 4096, one epoch of `--steps` (default tokens / batch), gradients
   clipped to global norm 1.0 (fixed in SAELens's trainer; lmjax's `clip_norm`), inputs
   scaled so that E||x|| = sqrt(d_in) (lmjax `fit`'s scale, SAELens's
   `normalize_activations="expected_average_only_in"`), AuxK over the k_aux = d_in / 2 = 64
   largest dead pre-activations with coefficient 1, a latent dead after 1000 steps
   (4,096,000 tokens) without firing. Each library keeps its own initialisation and
   parametrisation: lmjax unit-norm decoder rows (renormalised, gradient projected), b_dec
   at the data mean; SAELens decoder rows of norm 0.1 with pre-activations rescaled by the
   row norms, b_dec at 0. The two parametrisations move at different speeds under the same
   Adam lr, so quality is compared at each of `--lrs` and at each library's best.
4. Quality: `lmjax.sae.training.fit` and SAELens's `SAETrainer.fit` each train once on the
   whole budget at each lr; the SAELens weights (normalisation folded back by SAELens,
   decoder norms folded by this script: W_enc * n, b_enc * n, W_dec / n) are loaded into an
   lmjax `Dictionary` (checked against SAELens's own forward pass), and both are scored by
   `lmjax.sae.metrics.reconstruction_metrics` on the same held-out activations and by
   `ce_recovered` (the hook spliced with the reconstruction) on held-out token windows.
   The end-to-end tokens/s of these runs exclude their first `--warmup` steps (compilation
   for lmjax), timed from the data source's calls (`quality.*.*.fit.tokens_per_s_excluding_warmup`).
5. Throughput: fresh copies of the training loops (lmjax: `fit`'s own compiled step from
   `make_step` with its data path, `ArraySource.batch` + scaling; SAELens: `SAETrainer`'s
   loop body on its `ActivationsStore`) run interleaved in rounds, rotating who goes first;
   each round gives each one untimed step and then `--block` timed steps timed together
   (lmjax dispatches asynchronously, as in `fit`: the block ends when its state is ready).
   tokens_per_s = batch / median per-step time over rounds.
6. Members: `fit(..., seeds=range(8))`'s step (make_step with 8 vmapped members) against
   the one-member step on the same batches, interleaved; speedup = 8 x t_1 / t_8.
7. Profile (`--no_profile` skips it): the lmjax step's parts compiled alone (encoder and
   decoder matmuls, top_k's values for k and for AuxK's k_aux, topk_mask with a static and
   a traced k and by a slice of the values, approx_max_k, the whole step with AuxK skipped
   and forced), torch's matmul and topk.

Timings on a shared machine are noisy: both systems run in the same process, interleaved,
and medians are reported; the load average before and after is in the JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's and datasets' progress bars: stderr stays readable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from _machine import machine, wait_quiet  # noqa: E402  (bench/, beside this script)

SEQ_LEN = 128


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


# --------------------------------------------------------------------------- model + activations


def load_model(args):
    """(model, params, TokenData) of quickstart trained for args.model_steps (0: random init)."""
    import jax

    from lmjax.config import load_config
    from lmjax.train.loop import setup, train

    steps = max(args.model_steps, 1)
    wd = os.path.join(args.workdir, f"model_{args.model_steps}")
    overrides = [f"train.steps={steps}", f"checkpoint.every={steps}", f"train.eval_every={steps}",
                 "train.sample_tokens=0", "train.log_every=50"]
    config = load_config(os.path.join(REPO, "configs", "quickstart.py"), overrides)
    t0 = time.perf_counter()
    if args.model_steps > 0 and _latest_step(wd) is None:
        log(f"training the quickstart model for {args.model_steps} steps in {wd}")
        with contextlib.redirect_stdout(sys.stderr):  # its eval line: stdout is the JSON's
            train(config, wd, progress=False, quiet=True)
    with contextlib.redirect_stdout(sys.stderr):
        run = setup(config, wd, with_data=True)
    params = run.state["params"]
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    info = {"config": "configs/quickstart.py", "model_steps": args.model_steps,
            "params": "random init (seed 0)" if args.model_steps == 0 else f"trained {args.model_steps} steps",
            "n_layer": run.model.cfg.n_layer, "d_model": run.model.cfg.d_model, "workdir": wd,
            "setup_s": time.perf_counter() - t0}
    return run.model, params, run.data, info


def _latest_step(wd: str):
    from lmjax.train.workdir import open_workdir

    return open_workdir(wd).latest_step() if os.path.isdir(wd) else None


def cache(model, params, tokens, hook, n_tokens, out, seed):
    from lmjax.sae.activations import CachedSource, ModelSource, cache_activations

    src = ModelSource(model, params, tokens, hook, seq_len=SEQ_LEN, seed=seed)
    t0 = time.perf_counter()
    cache_activations(src, out, n_tokens=n_tokens, progress=False)
    return CachedSource(out, seed=0), time.perf_counter() - t0


def saelens_dataset(x, hook, out):
    """The rows of x [n, d] as the Hugging Face dataset SAELens's cached path loads:
    column `hook` of [SEQ_LEN, d] per row (written once, reused)."""
    import datasets

    datasets.disable_progress_bars()
    n, d = x.shape
    rows = n // SEQ_LEN
    if os.path.isfile(os.path.join(out, "dataset_info.json")):
        ds = datasets.load_from_disk(out)
        if len(ds) == rows:
            return out
    features = datasets.Features({hook: datasets.Array2D(shape=(SEQ_LEN, d), dtype="float32")})
    parts, chunk = [], 2048
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        block = np.asarray(x[start * SEQ_LEN:stop * SEQ_LEN], np.float32).reshape(stop - start, SEQ_LEN, d)
        parts.append(datasets.Dataset.from_dict({hook: block}, features=features))
    datasets.concatenate_datasets(parts).save_to_disk(out)
    return out


# --------------------------------------------------------------------------- the two trainers


def lmjax_dictionary(args, d_in):
    from lmjax.sae.architectures import Dictionary

    return Dictionary("topk", d_in, args.expansion * d_in, k=args.k, hook_in=args.hook, aux_k=d_in // 2,
                      aux_coef=1.0)


def dead_tokens(args):
    return args.dead_steps * args.batch


class TimedSource:
    """A source that records when fit asked for each step's batch."""

    def __init__(self, source):
        self.source, self.times = source, {}
        self.d_in, self.d_out = source.d_in, source.d_out
        self.member_axis = getattr(source, "member_axis", False)

    def batch(self, step, batch_size):
        self.times.setdefault(step, time.perf_counter())
        return self.source.batch(step, batch_size)

    def sample(self, n):
        return self.source.sample(n)


class TimedIterator:
    def __init__(self, it):
        self.it, self.times = it, []

    def __iter__(self):
        return self

    def __next__(self):
        self.times.append(time.perf_counter())
        return next(self.it)


def saelens_parts(args, path, d_in, steps, seed, lr=None):
    """A fresh SAELens TopK training SAE, its cached ActivationsStore and an SAETrainer."""
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.activations_store import ActivationsStore
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=args.expansion * d_in, k=args.k, dtype="float32", device="cpu",
                                apply_b_dec_to_input=True, normalize_activations="expected_average_only_in",
                                aux_loss_coefficient=1.0)
    sae = TopKTrainingSAE(cfg)
    store = ActivationsStore(
        model=None, dataset=None, streaming=False, hook_name=args.hook, hook_head_index=None,
        context_size=SEQ_LEN, d_in=d_in, n_batches_in_buffer=256, total_training_tokens=steps * args.batch,
        store_batch_size_prompts=32, train_batch_size_tokens=args.batch, prepend_bos=False,
        normalize_activations="expected_average_only_in", device=torch.device("cpu"), dtype="float32",
        cached_activations_path=path)
    tcfg = SAETrainerConfig(total_training_samples=steps * args.batch, train_batch_size_samples=args.batch,
                            lr=lr or args.lr, lr_end=lr or args.lr, lr_scheduler_name="constant", adam_beta1=0.9,
                            adam_beta2=0.999, device="cpu", dead_feature_window=args.dead_steps,
                            feature_sampling_window=10**9, n_batches_for_norm_estimate=2)
    return sae, store, tcfg, SAETrainer


def saelens_to_lmjax(args, sae, d_in):
    """The trained SAELens SAE (normalisation folded by SAELens) as an lmjax Dictionary in
    model units: rescale_acts_by_decoder_norm folded (W_enc * n, b_enc * n, W_dec / n)."""
    import jax.numpy as jnp

    with_torch = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in sae.state_dict().items()}
    assert sae.cfg.normalize_activations == "none", sae.cfg.normalize_activations  # folded at the end of fit
    assert sae.cfg.apply_b_dec_to_input
    n = np.linalg.norm(with_torch["W_dec"], axis=-1) if sae.cfg.rescale_acts_by_decoder_norm else np.ones(
        with_torch["W_dec"].shape[0])
    params = {"W_enc": with_torch["W_enc"] * n[None, :], "b_enc": with_torch["b_enc"] * n,
              "W_dec": with_torch["W_dec"] / n[:, None], "b_dec": with_torch["b_dec"]}
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    return lmjax_dictionary(args, d_in), params


def check_mapping(sae, dictionary, params, x):
    """Max |SAELens forward - lmjax reconstruct| on x, relative to max |x|."""
    import torch

    sae.eval()
    with torch.no_grad():
        theirs = sae(torch.from_numpy(np.asarray(x, np.float32))).numpy()
    ours = np.asarray(dictionary.reconstruct(params, np.asarray(x, np.float32)))
    return float(np.abs(theirs - ours).max() / np.abs(x).max())


def evaluate(model, params, dictionary, dparams, eval_src, ce_tokens, eval_batch):
    from lmjax.sae.metrics import ce_recovered, reconstruction_metrics

    n = eval_src.n
    batches = ((np.asarray(eval_src.x[i:i + eval_batch]), None) for i in range(0, n, eval_batch))
    m = reconstruction_metrics(dictionary, dparams, batches)
    m.pop("density")
    m.update(ce_recovered(model, params, ce_tokens, dictionary, dparams))
    return m


def fit_lmjax(args, src, steps, lr):
    from lmjax.sae.training import fit

    timed = TimedSource(src)
    t0 = time.perf_counter()
    result = fit(lmjax_dictionary(args, src.d_in), timed, steps=steps, batch_size=args.batch, lr=lr, seed=0,
                 clip_norm=args.clip_norm or None, dead_window=dead_tokens(args), log_every=max(steps // 10, 1),
                 progress=False)
    t1 = time.perf_counter()
    w = min(args.warmup, steps - 1)
    info = {"wall_s": t1 - t0, "steps": steps, "lr": lr, "clip_norm": args.clip_norm or None,
            "tokens_per_s_excluding_warmup": (steps - w) * args.batch / (t1 - timed.times[w]),
            "first_steps_s": timed.times[w] - t0, "history_last": result.history[-1]}
    return result.dictionary, result.params, info


def fit_saelens(args, path, d_in, steps, lr):
    sae, store, tcfg, SAETrainer = saelens_parts(args, path, d_in, steps, seed=0, lr=lr)
    timed = TimedIterator(store)
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=timed)
    t0 = time.perf_counter()
    sae = trainer.fit()
    t1 = time.perf_counter()
    train_calls = timed.times[-steps:]  # the norm estimate's batches come first
    w = min(args.warmup, steps - 1)
    info = {"wall_s": t1 - t0, "steps": trainer.n_training_steps, "lr": lr, "clip_norm": "1.0 (fixed in SAETrainer)",
            "tokens_per_s_excluding_warmup": (steps - w) * args.batch / (t1 - train_calls[w]),
            "first_steps_s": train_calls[w] - t0, "dead_at_end": int(trainer.dead_neurons.sum())}
    return sae, info


# --------------------------------------------------------------------------- interleaved timing


@dataclasses.dataclass
class Runner:
    name: str
    run_steps: object  # (n) -> None, runs n steps and returns when they are done
    tokens_per_step: int
    times: list = dataclasses.field(default_factory=list)
    quiet: int = 0


def lmjax_runner(args, src, n_members, name, steps_total):
    import jax
    import jax.numpy as jnp

    from lmjax.sae.architectures import scale_for
    from lmjax.sae.training import make_optimizer, make_step

    d = lmjax_dictionary(args, src.d_in)
    x0, _ = src.sample(min(8192, 16 * args.batch))
    s = scale_for(x0)
    d = dataclasses.replace(d, input_scale=s, output_scale=s)
    opt = make_optimizer(args.lr, steps_total, clip_norm=args.clip_norm or None)
    members = []
    for i in range(n_members):  # fit's init_member
        p = d.init(jax.random.key(i))
        p["b_dec"] = jnp.asarray(np.mean(x0, 0) * s, jnp.float32)
        members.append(p)
    params = jax.tree.map(lambda *a: jnp.stack(a), *members)
    holder = {"state": {"params": params, "opt": jax.vmap(opt.init)(params),
                        "since_fired": jnp.zeros((n_members, d.width), jnp.int32), "step": jnp.zeros((), jnp.int32)},
              "step": 0}
    step_fn = make_step(d, opt, n_members=n_members, member_inputs=False, aux_window=dead_tokens(args))

    def run_steps(n):
        for _ in range(n):
            x, _ = src.batch(holder["step"], args.batch)  # fit's loop body
            x = np.asarray(x, np.float32) * np.float32(s)
            holder["state"], _m = step_fn(holder["state"], x, None, {})
            holder["step"] += 1
        jax.block_until_ready(holder["state"])

    return Runner(name, run_steps, args.batch)


def saelens_runner(args, path, d_in, steps_total):
    sae, store, tcfg, SAETrainer = saelens_parts(args, path, d_in, steps_total, seed=1)
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=store)
    trainer.activation_scaler.estimate_scaling_factor(d_in, store, tcfg.n_batches_for_norm_estimate)

    def run_steps(n):
        for _ in range(n):  # SAETrainer.fit's loop body, without wandb and the progress bar
            trainer.maybe_reset_sparsity()
            trainer.step(next(trainer.data_provider))
            trainer._checkpoint_if_needed()
            trainer.n_training_steps += 1

    return Runner("saelens", run_steps, args.batch)


def interleave(runners, rounds, block, warmup, quiet_s):
    for r in runners:
        r.run_steps(warmup)
    for k in range(rounds):
        order = runners[k % len(runners):] + runners[:k % len(runners)]
        for r in order:
            r.run_steps(1)  # untimed: absorbs the switch from the other runtime
            r.quiet += wait_quiet(quiet_s)
            t0 = time.perf_counter()
            r.run_steps(block)
            r.times.append((time.perf_counter() - t0) / block)
    return {r.name: {"tokens_per_s": r.tokens_per_step / statistics.median(r.times),
                     "step_s_median": statistics.median(r.times), "step_s": [round(t, 4) for t in r.times],
                     "blocks_started_quiet": r.quiet} for r in runners}


# --------------------------------------------------------------------------- profile


def _time(fn, *a, reps=3):
    import jax

    jax.block_until_ready(fn(*a))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def profile(args, src):
    """Seconds of the lmjax step's parts on one batch, each compiled alone (median of 3)."""
    import jax
    import jax.numpy as jnp

    from lmjax.sae.architectures import scale_for, topk_mask
    from lmjax.sae.training import make_optimizer, make_step

    d = lmjax_dictionary(args, src.d_in)
    x0, _ = src.sample(args.batch)
    s = scale_for(x0)
    d = dataclasses.replace(d, input_scale=s, output_scale=s)
    x = jnp.asarray(np.asarray(x0, np.float32) * s)
    p = d.init(jax.random.key(0))
    pre = jax.jit(d.pre_acts)(p, x)
    out = {}
    wait_quiet(args.quiet_wait)
    out["encoder_matmul_s"] = _time(jax.jit(d.pre_acts), p, x)
    f = jax.jit(lambda pre: topk_mask(pre, args.k) * jax.nn.relu(pre))(pre)
    out["decoder_matmul_s"] = _time(jax.jit(lambda f: f @ p["W_dec"]), f)
    out["top_k_values_k32_s"] = _time(jax.jit(lambda a: jax.lax.top_k(a, args.k)[0]), pre)
    out["topk_mask_s"] = _time(jax.jit(lambda a: topk_mask(a, args.k)), pre)
    kt = jnp.asarray(args.k // 2, jnp.int32)
    out["topk_mask_traced_k_s"] = _time(jax.jit(lambda a, kt: topk_mask(a, args.k, kt)), pre, kt)
    out["topk_mask_by_a_slice_of_the_values_s (XLA turns it into a full sort)"] = _time(
        jax.jit(lambda a: a >= jax.lax.top_k(a, args.k)[0][..., -1:]), pre)
    out["top_k_values_aux_k_s"] = _time(jax.jit(lambda a: jax.lax.top_k(a, d.aux_k)[0]), pre)
    out["approx_max_k_k32_s"] = _time(jax.jit(lambda a: jax.lax.approx_max_k(a, args.k)[0]), pre)
    opt = make_optimizer(args.lr, 100, clip_norm=args.clip_norm or None)
    params = jax.tree.map(lambda a: a[None], p)

    def step_time(aux_window):
        state = {"params": jax.tree.map(jnp.copy, params), "opt": jax.vmap(opt.init)(params),
                 "since_fired": jnp.zeros((1, d.width), jnp.int32), "step": jnp.zeros((), jnp.int32)}
        holder = {"s": state}
        step = make_step(d, opt, n_members=1, member_inputs=False, aux_window=aux_window)

        def one():
            holder["s"], _m = step(holder["s"], x, None, {})
            return holder["s"]

        return _time(one)

    out["step_s (no latent dead: AuxK skipped)"] = step_time(dead_tokens(args))
    out["step_with_auxk_s (every latent counted dead)"] = step_time(0)
    flops = 2 * args.batch * d.d_in * d.width
    out["encoder_matmul_gflop_per_s"] = flops / out["encoder_matmul_s"] / 1e9
    return out


def torch_profile(args, d_in):
    import torch

    w = args.expansion * d_in
    pre = torch.randn(args.batch, w)
    x = torch.randn(args.batch, d_in)
    W = torch.randn(d_in, w)

    def t(fn, reps=5):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    return {"torch_encoder_matmul_s": t(lambda: x @ W),
            "torch_topk_k32_s": t(lambda: torch.topk(pre, args.k, dim=-1, sorted=False))}


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lmjax_bench_sae"),
                   help="model checkpoint and activation caches (reused by later runs)")
    p.add_argument("--model_steps", type=int, default=300, help="quickstart training steps (0 = random init)")
    p.add_argument("--hook", default="blocks.2.hook_resid_post")
    p.add_argument("--tokens", type=int, default=1_048_576,
                   help="tokens each SAE trains on (steps = tokens / batch); a few batches more are cached, "
                        "for SAELens's norm estimate and the part of its mixing buffer it holds back")
    p.add_argument("--steps", type=int, default=0, help="SAE training steps (0 = tokens / batch)")
    p.add_argument("--eval_tokens", type=int, default=32_768, help="held-out activations (val split)")
    p.add_argument("--ce_rows", type=int, default=32, help="held-out windows of 128 tokens for CE recovered")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--expansion", type=int, default=32, help="width = expansion x d_model")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--lrs", default="4e-4,1.3e-3,4e-3,1.2e-2",
                   help="learning rates of the quality runs, each library at each (the first is --lr's default)")
    p.add_argument("--clip_norm", type=float, default=1.0,
                   help="lmjax's gradient clip (SAELens's trainer clips at 1.0, fixed; 0 = none)")
    p.add_argument("--dead_steps", type=int, default=1000, help="steps without firing before a latent is dead")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation) before timing")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--block", type=int, default=2, help="timed steps per runner per round")
    p.add_argument("--members", type=int, default=8, help="vmapped dictionaries in one step")
    p.add_argument("--member_rounds", type=int, default=2)
    p.add_argument("--member_block", type=int, default=1)
    p.add_argument("--no_profile", action="store_true")
    p.add_argument("--quiet_wait", type=float, default=1.0,
                   help="before each timed block wait up to this many seconds for other processes to go idle")
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="a smoke run: random-init model, 8 steps, one round")
    args = p.parse_args(argv)
    if args.quick:
        args.model_steps, args.tokens, args.eval_tokens, args.ce_rows = 0, 32_768, 8_192, 4
        args.rounds, args.block, args.warmup, args.member_rounds, args.member_block = 1, 1, 1, 1, 1
        args.members, args.no_profile = 2, True
    lrs = [float(v) for v in args.lrs.split(",")]
    steps = args.steps or args.tokens // args.batch
    n_cached = steps * args.batch + 12 * args.batch  # + norm estimate (2 batches) and mixing-buffer hold-back

    import jax
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    started = time.perf_counter()
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(backend=jax.default_backend(), xla_cpu_threads="XLA's default: one per core",
                           torch_num_threads=torch.get_num_threads(),
                           torch_num_interop_threads=torch.get_num_interop_threads()),
    }
    log(f"CPU: {out['machine']['cpu']['model_name']}, {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; "
        f"load average {out['machine']['loadavg_start']}")

    model, params, data, model_info = load_model(args)
    out["model"] = model_info
    d_model = model.cfg.d_model
    os.makedirs(args.workdir, exist_ok=True)
    tag = f"{args.model_steps}_{args.hook}"
    log(f"caching {n_cached} train + {args.eval_tokens} held-out activations at {args.hook}")
    train_src, train_cache_s = cache(model, params, data.train, args.hook, n_cached,
                                     os.path.join(args.workdir, f"acts_{tag}_{n_cached}"), seed=0)
    eval_src, _ = cache(model, params, data.val, args.hook, args.eval_tokens,
                        os.path.join(args.workdir, f"eval_{tag}_{args.eval_tokens}"), seed=1)
    from lmjax.data.batches import train_batch

    ce_tokens = train_batch(data.val, seed=2, step=0, batch_size=args.ce_rows, seq_len=SEQ_LEN)["inputs"]
    t0 = time.perf_counter()
    sl_path = saelens_dataset(train_src.x, args.hook, os.path.join(args.workdir, f"acts_{tag}_{n_cached}_saelens"))
    out["data"] = {"hook": args.hook, "d_in": d_model, "cached_train_tokens": n_cached,
                   "eval_tokens": args.eval_tokens, "ce_windows": f"{args.ce_rows} x {SEQ_LEN} tokens of the val split",
                   "cache_activations_s (0 when reused)": train_cache_s,
                   "saelens_dataset_s": time.perf_counter() - t0,
                   "saelens_path": "ActivationsStore(cached_activations_path=...) -> SAETrainer (the runner's "
                                   "own parts; the runner itself would also load a TransformerLens model)"}
    out["settings"] = {"arch": "topk", "k": args.k, "width": args.expansion * d_model, "batch": args.batch,
                       "steps": steps, "tokens_trained": steps * args.batch, "lr": args.lr, "betas": [0.9, 0.999],
                       "schedule": "constant", "aux_k": d_model // 2, "aux_coef": 1.0,
                       "dead_window_tokens": dead_tokens(args), "warmup_steps_excluded": args.warmup,
                       "rounds": args.rounds, "block": args.block, "quality_lrs": lrs,
                       "lmjax_clip_norm": args.clip_norm or None, "saelens_clip_norm": 1.0}

    # 4. quality: one full run of each library at each learning rate
    quality = {"lmjax": {}, "saelens": {}}
    for lr in lrs:
        log(f"lr {lr:g}: lmjax fit, {steps} steps of {args.batch}")
        ld, lp, linfo = fit_lmjax(args, train_src, steps, lr)
        log(f"  {linfo['wall_s']:.1f}s, {linfo['tokens_per_s_excluding_warmup']:.0f} tok/s after warmup")
        log(f"lr {lr:g}: SAELens SAETrainer.fit, {steps} steps of {args.batch}")
        sae, sinfo = fit_saelens(args, sl_path, d_model, steps, lr)
        log(f"  {sinfo['wall_s']:.1f}s, {sinfo['tokens_per_s_excluding_warmup']:.0f} tok/s after warmup")
        sd, sp = saelens_to_lmjax(args, sae, d_model)
        mapping_err = check_mapping(sae, sd, sp, np.array(eval_src.x[:1024]))
        log(f"  SAELens -> lmjax mapping: max rel difference {mapping_err:.2e}")
        lq = evaluate(model, params, ld, lp, eval_src, ce_tokens, args.batch)
        sq = evaluate(model, params, sd, sp, eval_src, ce_tokens, args.batch)
        quality["lmjax"][f"{lr:g}"] = {**lq, "fit": linfo}
        quality["saelens"][f"{lr:g}"] = {**sq, "fit": sinfo, "mapping_max_rel_diff": mapping_err}
        log(f"  FVU: lmjax {lq['fvu']:.4f}  saelens {sq['fvu']:.4f};  CE recovered: lmjax "
            f"{lq['ce_loss_recovered']:.4f}  saelens {sq['ce_loss_recovered']:.4f}")
    best = {lib: min(runs, key=lambda lr: runs[lr]["fvu"]) for lib, runs in quality.items()}
    quality["best_lr"] = best
    out["quality"] = quality

    # 5. interleaved throughput
    total = args.warmup + args.rounds * (args.block + 1) + 1
    log(f"interleaved throughput: {args.rounds} rounds of 1 + {args.block} steps each")
    runners = [lmjax_runner(args, train_src, 1, "lmjax", total), saelens_runner(args, sl_path, d_model, total)]
    tp = interleave(runners, args.rounds, args.block, args.warmup, args.quiet_wait)
    tp["lmjax_vs_saelens"] = tp["lmjax"]["tokens_per_s"] / tp["saelens"]["tokens_per_s"]
    log(f"  lmjax   {tp['lmjax']['tokens_per_s']:7.0f} tok/s ({tp['lmjax_vs_saelens']:.2f}x SAELens)")
    log(f"  saelens {tp['saelens']['tokens_per_s']:7.0f} tok/s")
    tp["runners"] = {"lmjax": "fit's compiled step and data path (ArraySource.batch + scaling), as they are",
                     "saelens": "SAETrainer.fit's loop body on its cached ActivationsStore"}
    out["throughput"] = tp
    del runners

    # 6. members
    n = args.members
    log(f"{n} vmapped dictionaries vs one: {args.member_rounds} rounds of 1 + {args.member_block} steps")
    total = 1 + args.member_rounds * (args.member_block + 1) + 1
    runners = [lmjax_runner(args, train_src, 1, "one_dictionary", total),
               lmjax_runner(args, train_src, n, f"{n}_vmapped", total)]
    mt = interleave(runners, args.member_rounds, args.member_block, 1, args.quiet_wait)
    t1, tn = mt["one_dictionary"]["step_s_median"], mt[f"{n}_vmapped"]["step_s_median"]
    mt["speedup_vs_separate"] = n * t1 / tn
    mt["dictionary_tokens_per_s"] = {"one": args.batch / t1, f"{n}_vmapped": n * args.batch / tn}
    out["members"] = mt
    log(f"  one {t1:.3f}s/step, {n} vmapped {tn:.3f}s/step: {mt['speedup_vs_separate']:.2f}x vs {n} separate")
    del runners

    if not args.no_profile:
        log("profile of the lmjax step")
        out["profile"] = {**profile(args, train_src), **torch_profile(args, d_model)}

    same_lr = f"{lrs[0]:g}"
    fvu = {lib: quality[lib][same_lr]["fvu"] for lib in ("lmjax", "saelens")}
    fvu_best = {lib: quality[lib][best[lib]]["fvu"] for lib in ("lmjax", "saelens")}
    out["targets"] = {
        "tokens_per_s_ratio": {"target": ">= 2", "value": tp["lmjax_vs_saelens"], "met": tp["lmjax_vs_saelens"] >= 2},
        "fvu_at_the_same_lr": {"target": "lmjax FVU <= 1.01 x SAELens FVU", "lr": lrs[0], **fvu,
                               "relative": fvu["lmjax"] / fvu["saelens"] - 1,
                               "met": fvu["lmjax"] <= 1.01 * fvu["saelens"]},
        "fvu_each_at_its_best_lr": {"target": "lmjax FVU <= 1.01 x SAELens FVU", "lr": best, **fvu_best,
                                    "relative": fvu_best["lmjax"] / fvu_best["saelens"] - 1,
                                    "met": fvu_best["lmjax"] <= 1.01 * fvu_best["saelens"]},
        "vmapped_speedup": {"target": f">= 4 ({n} members vs {n} separate steps)",
                            "value": mt["speedup_vs_separate"], "met": mt["speedup_vs_separate"] >= 4},
    }
    out["machine"]["loadavg_end"] = loadavg()
    out["wall_s"] = time.perf_counter() - started
    log(f"done in {out['wall_s']:.0f}s; load average {out['machine']['loadavg_end']}")
    print(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
