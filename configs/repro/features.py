"""Dictionary features vs neurons: `lmjax repro features`.

Two models lmjax trains on the CPU, each with a sparse dictionary (lmjax.sae) fitted on one
of its hook points:

- `lm`, `upos`, `dictionary`: the byte-level model of `lmjax repro upos` (its `lm` section,
  read from configs/repro/upos.py so the two stay one model), a dictionary on an MLP's
  hidden layer fitted on the model's own training text, then single-latent UPOS probes on
  UD English EWT dev for the dictionary's features and for the same layer's neurons.
- `grokking`, `grok_mlp_*`, `concentrated`: the a + b mod p model of `lmjax repro grokking`
  (its whole config, read from configs/repro/grokking.py), dictionaries (each width x seed)
  on its MLP hidden layer at '=' over all p^2 inputs, and the share of each feature's /
  neuron's / random direction's variance in one key frequency's 2D Fourier cluster.
- `grok_dictionary`: a dictionary on its token embedding (`hook_embed` at the numbers) and
  each feature's Fourier spectrum over the numbers (random directions score the same).

`lm_dir` ("" = OUT/lm) may name the workdir of an `lmjax repro upos` run (OUT/lm there) to
reuse its trained model: a finished run with the same `lm` config is loaded, not retrained.

Variants: `lmjax repro features:small` (the test's setting: upos:small's model cut to 80
steps and 1 layer, grokking:small cut to 100 steps, small dictionaries, two seeds each). The file declares
its own schema (`defaults`, lmjax.config.load_config): any key below may be overridden,
`lm` has every key of a training config and `grokking` every key of configs/repro/grokking.py.
"""
import os

import ml_collections

from lmjax.config import config_problems, load_config

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")  # lmjax.sae.architectures.ARCHS
WHICH = ("last", "first")  # lmjax.interp.probes.align_words


def _sibling(name: str, variant: str = ""):
    return load_config(os.path.join(HERE, f"{name}.py:{variant}"))


def _dictionary(**values):
    d = dict(arch="jumprelu", width=1024, k=32, l1=5.0, l0_coef=1.0, init_threshold=1.0, steps=600,
             batch_size=512, lr=1e-3, seed=0)
    d.update(values)
    return ml_collections.ConfigDict(d)


def defaults():
    c = ml_collections.ConfigDict()
    upos = _sibling("upos")
    c.lm = upos.lm
    c.lm_dir = ""  # "" = OUT/lm (trained there); or an upos run's OUT/lm to reuse its model
    c.conllu = upos.conllu
    c.max_sentences = upos.max_sentences
    c.which = upos.which
    c.upos = ml_collections.ConfigDict(dict(
        hook="blocks.2.mlp.hook_post",  # the layer whose neurons compete with the features
        test_fraction=0.25,  # of the words, held out: thresholds and latents are picked on the rest
        min_train=10, min_test=5,  # a tag is scored when it has at least this many words in each split
        seed=0,
        eval_tokens=8192,  # of the LM's val text, for the dictionary's FVU / L0
        dictionary_seeds=(0, 1),  # one dictionary per seed (vmapped, same tokens): the seed-to-seed spread
    ))
    # A JumpReLU dictionary (lax.top_k is slow on XLA:CPU: a TopK step cost ~5x a JumpReLU one);
    # inputs are scaled to E||x|| = sqrt(d), so a threshold of 1 starts near a few % firing.
    c.dictionary = _dictionary(steps=1000, batch_size=1024)  # 1M tokens per dictionary
    c.grokking = _sibling("grokking")
    # 1,200 of grokking's 2,000 steps: its test accuracy is 99% from step 800 (measured: 99.3% at
    # 1,200, the same six key frequencies holding 85% of the embedding) and a step costs ~0.25 s here
    c.grokking.steps = 1200
    # fewer features (d_model = 64) than numbers (113): no feature can be one number's own
    c.grok_dictionary = _dictionary(width=64, steps=1000, batch_size=512)
    # Nanda et al.'s neurons: the MLP hidden layer at '=' over all p^2 inputs. Two widths:
    # as many features as neurons (d_mlp = 256), and fewer features (64) than answers (p = 113);
    # grok_mlp_dictionary.width is unused (the widths are)
    c.grok_mlp_hook = "blocks.0.mlp.hook_post"
    c.grok_mlp_dictionary = _dictionary(width=256, steps=1000, batch_size=512)
    c.grok_mlp_widths = (64, 256)
    c.grok_mlp_seeds = (0, 1)
    c.concentrated = 0.5  # a latent is "in one key frequency" with at least this share of its variance there
    c.n_random = 1000  # random unit directions: the chance level of the Fourier statistics
    return c


def get_config(arg=None):
    c = defaults()
    if arg == "small":
        small = _sibling("upos", "small")
        c.lm = small.lm
        c.lm.model.update(n_layer=1)
        c.lm.train.update(steps=80, eval_every=80)
        c.lm.checkpoint.update(every=80)
        c.max_sentences = 150
        c.upos.hook = "blocks.0.mlp.hook_post"
        c.upos.eval_tokens = 2048
        c.dictionary.update(width=512, steps=100, batch_size=256)
        c.grokking = _sibling("grokking", "small")
        c.grokking.update(steps=100, eval_every=100)
        c.grok_dictionary.update(width=16, steps=300, batch_size=256)
        c.grok_mlp_dictionary.update(steps=200, batch_size=256)
        c.grok_mlp_widths = (16, 128)
        c.n_random = 200
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: small")
    return c


def problems(c) -> list[str]:
    out = [f"lm.{p}" for p in config_problems(c.lm)]
    grokking = _load_module("grokking")
    out += [f"grokking.{p}" for p in grokking.problems(c.grokking)]
    if c.which not in WHICH:
        out.append(f"which: {c.which!r} not in {WHICH}")
    if c.max_sentences <= 0:
        out.append(f"max_sentences: must be positive, got {c.max_sentences}")
    u = c.upos
    if not 0 < u.test_fraction < 1:
        out.append(f"upos.test_fraction: must be in (0, 1), got {u.test_fraction}")
    if u.min_train < 1 or u.min_test < 1 or u.eval_tokens < 1:
        out.append("upos.min_train/min_test/eval_tokens: must be >= 1")
    if not 0 < c.concentrated <= 1:
        out.append(f"concentrated: must be in (0, 1], got {c.concentrated}")
    if not c.grok_mlp_seeds or not c.grok_mlp_widths or min(c.grok_mlp_widths) < 1:
        out.append("grok_mlp_seeds/grok_mlp_widths: give at least one seed and one positive width")
    for name in ("dictionary", "grok_dictionary", "grok_mlp_dictionary"):
        d = c[name]
        if d.arch not in ARCHS:
            out.append(f"{name}.arch: {d.arch!r} not in {ARCHS}")
        if d.width < 1 or d.steps < 1 or d.batch_size < 1 or not d.lr > 0:
            out.append(f"{name}.width/steps/batch_size/lr: must be positive")
        if d.arch in ("topk", "batchtopk", "matryoshka") and not 1 <= d.k <= d.width:
            out.append(f"{name}.k: must be in [1, width = {d.width}], got {d.k}")
    if c.n_random < 1:
        out.append(f"n_random: must be >= 1, got {c.n_random}")
    return out


def _load_module(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"lmjax_repro_config_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
