"""Sparse dictionaries on a trained model's hook point: `lmjax sae train`.

    lmjax sae train --workdir runs/qs --hook blocks.2.hook_resid_post --arch topk --k 32 --width 4096 --out runs/sae
    lmjax sae train --workdir runs/qs --config configs/sae.py:transcoder --out runs/tc
    lmjax sae eval --workdir runs/qs --dictionary runs/sae
    lmjax sae dashboard --workdir runs/qs --dictionary runs/sae --out features.html
    lmjax sae train --workdir runs/qs --transcoders mlp --arch relu --width 1024 --out runs/tcs
    lmjax explain --workdir runs/qs --prompt "def f(" --graph --dictionary runs/tcs --out graph.html

The flags --hook, --hook_out, --arch, --k, --width, --steps and --transcoders set the keys
of the same name; `--config.KEY=VALUE` sets any key below (parsed to its type). Variants: `transcoder`
(blocks.0.ln2.hook_normalized -> blocks.0.hook_mlp_out, with a linear skip), `quick` (a
few hundred small steps, for a first look). Activations are streamed from the model
(nothing on disk) unless `cache` names a directory: then `cache_tokens` of them are
written there once (memory-mapped) and read back shuffled.

Measured (2-core AMD EPYC under load, 2026-12-02; the quickstart model after 300 steps,
`--hook blocks.1.hook_resid_post --arch topk --k 16 --width 1024`, variant quick): explained
variance 0.963, L0 16, 15.5% of latents dead over 16,384 tokens, CE loss recovered 0.998
(clean 2.258, spliced 2.275, zero-ablated 10.149 nats/byte); the model's training and the
dictionary's together took 5 min 56 s.
"""
import ml_collections

from lmjax.sae.architectures import ARCHS, L0_PENALTIES


def defaults():
    c = ml_collections.ConfigDict()
    c.hook = ""  # the input hook point (required: --hook)
    c.hook_out = ""  # a transcoder's target hook point ("" = an SAE: the same as hook)
    c.transcoders = ""  # "mlp" / "clt": an attribution graph's transcoder set instead of hook -> hook_out
    c.arch = "topk"
    c.k = 32
    c.width = 4096
    c.skip = False  # transcoder: a linear skip
    c.l1 = 5.0  # relu
    c.l0_coef = 1.0  # jumprelu
    c.l0_penalty = "step"
    c.target_l0 = 0.0  # jumprelu: 0 = no pull toward a target L0
    c.steps = 2000
    c.batch_size = 4096
    c.lr = 4e-4
    c.warmup_steps = 0
    c.decay_fraction = 0.2
    c.clip_norm = 0.0  # clip each gradient to this global norm before Adam (0 = no clip)
    c.seed = 0
    c.seeds = 1  # dictionaries trained at once (vmapped), seeds seed .. seed + seeds - 1
    c.seq_len = 0  # token windows (0 = the model's context, at most 128)
    c.dead_window = 10_000_000  # tokens without firing that make a latent dead
    c.cache = ""  # a directory for cached activations ("" = stream them)
    c.cache_tokens = 2_000_000
    c.eval_tokens = 65536
    c.save_every = 500
    return c


def get_config(arg=None):
    c = defaults()
    if arg == "transcoder":
        c.hook = "blocks.0.ln2.hook_normalized"
        c.hook_out = "blocks.0.hook_mlp_out"
        c.skip = True
    elif arg == "quick":
        c.k, c.width, c.steps, c.batch_size, c.lr = 16, 1024, 300, 1024, 1e-3
        c.eval_tokens = 16384
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: transcoder, quick")
    return c


def problems(c) -> list[str]:
    out = []  # an empty hook is refused by `lmjax sae train` itself (the config may leave it to --hook)
    if c.arch not in ARCHS:
        out.append(f"arch: {c.arch!r} is not one of {', '.join(ARCHS)}")
    if c.l0_penalty not in L0_PENALTIES:
        out.append(f"l0_penalty: {c.l0_penalty!r} is not one of {', '.join(L0_PENALTIES)}")
    if c.arch in ("topk", "batchtopk", "matryoshka") and not 1 <= c.k <= c.width:
        out.append(f"k: {c.k} must be between 1 and width={c.width}")
    for key in ("width", "steps", "batch_size", "seeds", "eval_tokens", "save_every"):
        if c[key] < 1:
            out.append(f"{key}: must be >= 1, got {c[key]}")
    if c.transcoders not in ("", "mlp", "clt"):
        out.append(f"transcoders: {c.transcoders!r} is not one of '' (one dictionary on hook), mlp, clt")
    if c.skip and not c.hook_out and not c.transcoders:
        out.append("skip: a linear skip is for a transcoder; give hook_out too")
    return out
