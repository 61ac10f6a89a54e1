"""lmjax.interp: look inside any lmjax model, through the hook API only.

Every analysis is a pure function of (model, params, tokens, ...) built on the two
operations of the hook contract (DESIGN.md): `run_with_cache` and interventions. Each one
compiles once per shape and runs batched; whole sweeps (patching heatmaps, every
single-head ablation, probes for every layer) are single vmapped calls. They read the
residual-stream points and `hook_attn_out` / `hook_mixer_out`, so they work on every mixer.

    lens        logit lens                              dla          direct logit attribution
    patching    activation patching heatmaps            attribution  attribution patching (gradients)
    ablation    zero / mean / resample ablations        heads        head detectors, induction score
    neurons     top-activating examples, steering       probes       linear probes, CoNLL-U alignment
    ssm         implicit attention of Mamba layers      plots        matplotlib figures
    report      `lmjax explain`: a self-contained HTML report
    compiling   jax.jit with optional XLA options (e.g. -O0 where compiling dominates)
"""
from lmjax.interp.ablation import ablate, head_ablation_effects
from lmjax.interp.attribution import attribution_patching
from lmjax.interp.dla import direct_logit_attribution
from lmjax.interp.heads import head_scores, implicit_patterns, induction_score
from lmjax.interp.lens import logit_lens
from lmjax.interp.metrics import LogitDiff, NextTokenLoss
from lmjax.interp.neurons import steer, top_activating
from lmjax.interp.patching import activation_patching, patch
from lmjax.interp.probes import train_probes
from lmjax.interp.ssm import implicit_attention, layer_attention

__all__ = [
    "ablate", "head_ablation_effects", "attribution_patching", "direct_logit_attribution", "head_scores",
    "induction_score", "logit_lens", "LogitDiff", "NextTokenLoss", "steer", "top_activating",
    "activation_patching", "patch", "train_probes", "implicit_attention", "implicit_patterns", "layer_attention",
]
