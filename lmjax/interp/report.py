"""`lmjax explain`: one self-contained HTML page that answers "why this token?".

`explain(...)` runs the analyses on one prompt and returns plain data; `render_html(...)`
turns it into a page with inline CSS, a few lines of inline JS and PNG figures as data:
URIs (no network, opens from disk or an email attachment). Sections:

1. summary: plain-language sentences naming the components that drove the choice;
2. prediction: the next-token distribution, the target and the contrast token;
3. logit lens: the target's probability and rank by layer, top tokens per layer;
4. direct logit attribution by component (embeddings, heads, MLPs / mixers);
5. heads that matter: by |DLA| and by the effect of zero-ablating each head (one vmapped
   call), with their attention patterns and the previous-token / duplicate / induction
   detector scores on this prompt. A Mamba layer is one "head" here: its implicit
   attention (lmjax.interp.ssm) is the pattern, its whole mixer output what is ablated;
6. activation patching against a corrupted prompt (when given): residual stream layer x
   position, and each head;
7. any extra sections the caller adds (`render_html(..., sections=...)`), e.g. the features
   of a sparse dictionary (lmjax.sae.dashboard.features_section, `lmjax explain --dictionary`).
"""
from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.interp import ablation, dla, heads, lens, patching, plots, weights
from lmjax.interp.metrics import LogitDiff


@dataclasses.dataclass
class Explanation:
    prompt: str
    tokens: list[int]
    token_strs: list[str]
    target: int
    contrast: int
    target_str: str
    contrast_str: str
    top: list[tuple[str, float]]  # next-token top-k (string, probability)
    logit_diff: float
    lens: lens.LogitLens
    dla: dla.DLA
    head_dla: list[tuple[str, float]]
    head_ablation: list[tuple[str, float]]  # (head, logit diff after zero-ablating it)
    detectors: list[dict]
    patterns: dict  # head label -> [q, k] pattern
    patching: dict | None  # {"resid": Patching, "heads": Patching, "corrupt": str, "corrupt_strs": [...]}
    summary: list[str]
    seconds: float
    vocab_labels: dict  # token id -> readable string, for every id shown


def _token_id(tokenizer, text: str, what: str) -> int:
    ids = tokenizer.encode(text, add_bos=False)
    if not ids:
        raise LmjaxError(f"--{what} {text!r} encodes to no token: give a non-empty token")
    return ids[0]  # several tokens: the first is the one predicted next


def _check_tokens(ids: list[int], max_len: int, what: str) -> None:
    if not ids:
        raise LmjaxError(f"{what} is empty and the tokenizer has no BOS token to start it: nothing to explain; "
                         "give a non-empty --prompt")
    if len(ids) > max_len:
        raise LmjaxError(f"{what} is {len(ids)} tokens (BOS included), longer than the model's context of "
                         f"{max_len}: shorten it")


def explain(model, params, tokenizer, prompt: str, target: str | None = None, contrast: str | None = None,
            corrupt: str | None = None, top_k: int = 10, n_heads_shown: int = 3) -> Explanation:
    """Every input is checked (prompt length, target, contrast, the corrupted prompt)
    before anything compiles: a bad one is an LmjaxError naming it."""
    start = time.time()
    bos = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
    # BOS is added here, once, whether or not the tokenizer adds one by itself (Llama's does)
    ids = bos + tokenizer.encode(prompt, add_bos=False)
    _check_tokens(ids, model.cfg.max_len, "--prompt")
    c_ids = None
    if corrupt is not None:
        c_ids = bos + tokenizer.encode(corrupt, add_bos=False)
        if len(c_ids) != len(ids):
            raise LmjaxError(f"the corrupted prompt is {len(c_ids)} tokens and the prompt {len(ids)}: "
                             "patching needs prompts of the same length (--corrupt)")
    t_id = _token_id(tokenizer, target, "target") if target else None
    c_id = _token_id(tokenizer, contrast, "contrast") if contrast else None
    if t_id is not None and t_id == c_id:
        raise LmjaxError(_same_token(tokenizer, t_id))
    tokens = jnp.asarray([ids], jnp.int32)
    strs = plots.token_labels(tokenizer, ids)

    # Both lens calls share one compiled program (same shapes, top-k and target type).
    top_k = max(top_k, 5)
    ll = lens.logit_lens(model, params, tokens, targets=np.zeros(tokens.shape, np.int32), top_k=top_k)
    final = ll.logits[0, -1].astype(np.float64)
    probs = np.exp(final - final.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    t_id = int(order[0]) if t_id is None else t_id
    c_id = int(order[1] if order[0] == t_id else order[0]) if c_id is None else c_id
    if c_id == t_id:  # --contrast given, and it is the top prediction
        raise LmjaxError(_same_token(tokenizer, t_id))
    top = [(plots.token_labels(tokenizer, [i])[0], float(probs[i])) for i in order[:top_k]]
    ll = lens.logit_lens(model, params, tokens, targets=np.full(tokens.shape, t_id, np.int32), top_k=top_k)
    ll.top_ids, ll.top_probs = ll.top_ids[..., :5], ll.top_probs[..., :5]

    attribution = dla.direct_logit_attribution(model, params, tokens, t_id, c_id)
    head_dla = [(label, value) for label, value in attribution.ranked()
                if label.startswith("L") and "H" in label and " " not in label]
    metric = LogitDiff(jnp.asarray(t_id), jnp.asarray(c_id))
    # Every head, and every non-attention mixer as one unit, zero-ablated alone: one call.
    before, effects = ablation.head_ablation_effects(model, params, tokens, metric, include_mixers=True)
    head_abl = sorted(((heads.head_label(model, l, h), float(v)) for l, e in effects.items() for h, v in enumerate(e)),
                      key=lambda r: -abs(r[1] - before))
    pats = heads.patterns(model, params, tokens)  # attention layers and Mamba layers' implicit attention
    detectors = heads.table(_detector_scores(pats, ids), top=8, model=model) if pats else []

    shown = []
    for label, _ in head_abl[:n_heads_shown] + head_dla[:n_heads_shown]:
        if label not in shown:
            shown.append(label)
    shown = shown[:n_heads_shown + 1]
    mamba = [label for label, _ in head_abl if label.endswith("ssm") and label not in shown]
    shown += mamba[:max(0, 2 - sum(s.endswith("ssm") for s in shown))]  # a hybrid shows its Mamba layers too
    patterns = {}
    for label in shown:
        layer, head = heads.parse_label(label)
        if layer in pats:
            patterns[label] = np.asarray(pats[layer][0, head])

    patch = None
    if corrupt is not None:
        c_tokens = jnp.asarray([c_ids], jnp.int32)
        resid = patching.activation_patching(model, params, tokens, c_tokens, metric, "resid_pre")
        per_head = None
        if any(weights.layer_point(model, l, "attn.hook_z") for l in range(model.cfg.n_layer)):
            per_head = patching.activation_patching(model, params, tokens, c_tokens, metric, "z", per="head")
        patch = {"resid": resid, "heads": per_head, "corrupt": corrupt,
                 "corrupt_strs": plots.token_labels(tokenizer, c_ids)}

    ex = Explanation(prompt, ids, strs, t_id, c_id, plots.token_labels(tokenizer, [t_id])[0],
                     plots.token_labels(tokenizer, [c_id])[0], top, float(attribution.logit_diff[0]), ll,
                     attribution, head_dla, head_abl, detectors, patterns, patch, [], 0.0, {})
    shown_ids = sorted(set(np.unique(ll.top_ids).tolist()))
    ex.vocab_labels = dict(zip(shown_ids, plots.token_labels(tokenizer, shown_ids)))
    ex.summary = summarize(ex, before)
    ex.seconds = time.time() - start
    return ex


def _same_token(tokenizer, token_id: int) -> str:
    return (f"the target and the contrast are the same token ({plots.token_labels(tokenizer, [token_id])[0]!r}, "
            f"id {token_id}): give --target and --contrast two different tokens")


def _detector_scores(pats: dict, ids: list[int]) -> dict:
    """{kind: {layer: [head]}} detector scores of already computed patterns on one prompt."""
    tokens = np.asarray([ids])
    masks = {"previous_token": heads.previous_token_mask(len(ids))[None, None],
             "duplicate_token": heads.duplicate_token_mask(tokens)[:, None],
             "induction": heads.induction_mask(tokens)[:, None]}
    return {kind: {l: np.asarray(heads.detection_score(p, mask)) for l, p in pats.items()}
            for kind, mask in masks.items()}


def summarize(ex: Explanation, before: float) -> list[str]:
    """A few plain sentences from the numbers (no interpretation beyond what they show)."""
    out = []
    p = dict(ex.top)
    tp = p.get(ex.target_str)
    out.append(f"The model's next-token choice: '{ex.top[0][0]}' (p = {ex.top[0][1]:.2f}). Explained here: "
               f"'{ex.target_str}'" + (f" (p = {tp:.2f})" if tp is not None else "") +
               f" against '{ex.contrast_str}', a logit difference of {ex.logit_diff:+.2f}.")
    rank = ex.lens.target_rank[:, 0, -1]
    first_top = next((i for i, r in enumerate(rank) if all(rank[i:] == 0)), None)
    if first_top is not None:
        out.append(f"Logit lens: '{ex.target_str}' is the top token from {ex.lens.labels[first_top]} on "
                   f"(probability {ex.lens.target_prob[first_top, 0, -1]:.2f} there, "
                   f"{ex.lens.target_prob[-1, 0, -1]:.2f} at the end).")
    else:
        out.append(f"Logit lens: '{ex.target_str}' ends at rank {int(rank[-1])}; its best rank was "
                   f"{int(rank.min())} ({ex.lens.labels[int(np.argmin(rank))]}).")
    ranked = ex.dla.ranked(0)
    up = [f"{l} ({v:+.2f})" for l, v in ranked if v > 0][:3]
    down = [f"{l} ({v:+.2f})" for l, v in ranked if v < 0][:2]
    if up:
        out.append("Directly pushing the target over the contrast: " + ", ".join(up) + ".")
    if down:
        out.append("Directly pushing against it: " + ", ".join(down) + ".")
    if ex.head_ablation:
        h, after = ex.head_ablation[0]
        out.append(f"The head{' (or Mamba layer)' if any(k.endswith('ssm') for k, _ in ex.head_ablation) else ''} "
                   f"whose zero-ablation changes the logit difference most is {h}: "
                   f"{before:+.2f} -> {after:+.2f}.")
    if ex.patching is not None and abs(ex.patching["resid"].clean - ex.patching["resid"].corrupt) < 0.05:
        r = ex.patching["resid"]
        out.append(f"The corrupted prompt barely changes the logit difference ({r.clean:+.2f} vs {r.corrupt:+.2f}): "
                   "patching says little here.")
    elif ex.patching is not None:
        r = ex.patching["resid"]
        l, pos = np.unravel_index(np.nanargmax(r.values), r.values.shape)
        out.append(f"Patching the clean residual stream into the corrupted prompt ('{ex.patching['corrupt']}') "
                   f"restores most at layer {r.layers[l]}, position {pos} ('{ex.token_strs[pos]}'): "
                   f"{r.values[l, pos]:.0%} of the clean-minus-corrupted logit difference "
                   f"({r.clean:+.2f} vs {r.corrupt:+.2f}).")
        if ex.patching["heads"] is not None:
            hv = ex.patching["heads"]
            l, h = np.unravel_index(np.nanargmax(hv.values), hv.values.shape)
            out.append(f"Among single heads, restoring L{hv.layers[l]}H{h} recovers the most: {hv.values[l, h]:.0%}.")
    return out


# ------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .prompt{font-family:ui-monospace,monospace;background:#ffffff22;padding:4px 8px;border-radius:4px;white-space:pre-wrap}
nav{position:sticky;top:0;background:#eef2f7;padding:6px 24px;border-bottom:1px solid #d5dde8;z-index:1}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none;font-size:14px}nav a.active{font-weight:bold}
main{padding:0 24px 40px;max-width:1100px}section{background:#fff;margin:16px 0;padding:12px 18px;border:1px solid #e3e3e3;border-radius:6px}
h2{font-size:17px;margin:4px 0 10px;cursor:pointer}h2::before{content:"\\25BE  ";color:#888}section.closed h2::before{content:"\\25B8  "}
section.closed .body{display:none}table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:left}th{background:#f4f6f9}
td.num{text-align:right;font-family:ui-monospace,monospace}.tok{font-family:ui-monospace,monospace;background:#f0f0f0;padding:0 3px;border-radius:3px}
img{max-width:100%;height:auto}.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.note{color:#666;font-size:13px}ul.summary li{margin:4px 0}
"""

_JS = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('section h2').forEach(function (h) {
    h.addEventListener('click', function () { h.parentElement.classList.toggle('closed'); });
  });
  var links = document.querySelectorAll('nav a');
  links.forEach(function (a) {
    a.addEventListener('click', function () {
      links.forEach(function (b) { b.classList.remove('active'); });
      a.classList.add('active');
    });
  });
  document.body.setAttribute('data-sections', document.querySelectorAll('main section').length);
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var decoded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', imgs.length + '/' + decoded);
  document.body.setAttribute('data-rendered', window.__errors.length ? 'errors' : 'ok');
});
"""


def _img(fig, alt: str) -> str:
    data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = ""
    for r in rows:
        cells = "".join(f'<td class="num">{v:+.3f}</td>' if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                        for v in r)
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2><div class="body">{body}</div></section>'


def render_html(ex: Explanation, title: str = "lmjax explain", sections=()) -> str:
    """The page; `sections`: extra (id, nav label, title, body HTML) appended after the others."""
    extra = list(sections)
    tok = lambda s: f'<span class="tok">{html.escape(s)}</span>'  # noqa: E731
    sections = []
    sections.append(_section("summary", "Summary", '<ul class="summary">' +
                             "".join(f"<li>{html.escape(s)}</li>" for s in ex.summary) + "</ul>"))

    pred = (f"<p>Explaining {tok(ex.target_str)} over {tok(ex.contrast_str)}: logit difference "
            f"<b>{ex.logit_diff:+.3f}</b>.</p>" +
            _table(["rank", "next token", "probability"], [(i + 1, s, f"{p:.3f}") for i, (s, p) in enumerate(ex.top)]))
    sections.append(_section("prediction", "Prediction", pred))

    ll = ex.lens
    traj = plots.trajectory(ll.target_prob[:, 0, -1], ll.labels, title=f"p('{ex.target_str}') by layer, last position")
    grid = plots.logit_lens(ll.top_probs[:, 0, :, 0], ll.labels, ex.token_strs,
                            [[plots_label(ex, i) for i in row] for row in ll.top_ids[:, 0, :, 0]],
                            title="logit lens: top-1 token and its probability at each position")
    rows = [(label, int(ll.target_rank[i, 0, -1]), f"{ll.target_prob[i, 0, -1]:.3f}",
             " ".join(plots_label(ex, j) for j in ll.top_ids[i, 0, -1]))
            for i, label in enumerate(ll.labels)]
    body = ('<div class="figs">' + _img(traj, "target probability by layer") + _img(grid, "logit lens grid") + "</div>" +
            _table(["after", f"rank of '{ex.target_str}'", "probability", "top tokens"], rows))
    sections.append(_section("logit-lens", "Logit lens", body))

    values = ex.dla.values[:, 0]
    bars = plots.dla_bars(ex.dla.labels, values, title=f"DLA: '{ex.target_str}' - '{ex.contrast_str}'")
    body = ('<div class="figs">' + _img(bars, "direct logit attribution") + "</div>" +
            f'<p class="note">Components plus the final norm\'s constant ({float(ex.dla.constant[0]):+.3f}) sum to '
            f"{float(ex.dla.total[0]):+.3f}; the model's logit difference is {ex.logit_diff:+.3f}.</p>" +
            _table(["component", "contribution"], ex.dla.ranked(0, top=12)))
    sections.append(_section("dla", "Direct logit attribution", body))

    figs = "".join(_img(plots.attention_pattern(p, ex.token_strs, title=_pattern_title(h)), f"{h} attention pattern")
                   for h, p in ex.patterns.items())
    ssm_note = ""
    if any(h.endswith("ssm") for h, _ in ex.head_ablation):
        ssm_note = ('<p class="note">Mamba layers (<span class="tok">L{l}ssm</span>) count as one head each: their '
                    "implicit attention alpha[t, s] = C_t . prod exp(delta A) . delta_s B_s (Ali et al. 2024), "
                    "|alpha| averaged over channels with each row normalised, is the pattern shown and scored; "
                    "ablating one zeroes the whole mixer output.</p>")
    body = ('<div class="figs">' + figs + "</div>" + ssm_note +
            "<p>By direct logit attribution:</p>" + _table(["head", "DLA"], ex.head_dla[:8]) +
            "<p>Zero-ablating one head at a time (logit difference after; before: "
            f"{ex.logit_diff:+.3f}):</p>" + _table(["head", "after ablation"], ex.head_ablation[:8]) +
            "<p>Head detectors on this prompt (share of attention on the detection mask):</p>" +
            _table(["head", "previous-token", "duplicate-token", "induction"],
                   [(r["head"], r["previous_token"], r["duplicate_token"], r["induction"]) for r in ex.detectors]))
    sections.append(_section("heads", "Heads that matter", body))

    if ex.patching is not None and abs(ex.patching["resid"].clean - ex.patching["resid"].corrupt) < 0.05:
        r = ex.patching["resid"]
        body = (f'<p class="note">The corrupted prompt barely changes the logit difference ({r.clean:+.3f} vs '
                f"{r.corrupt:+.3f}), so the normalised patching heatmap would say little here: choose a corruption "
                "that flips the choice.</p>")
    elif ex.patching is not None:
        r = ex.patching["resid"]
        fig = plots.heatmap(r.values, [f"L{l}" for l in r.layers], ex.token_strs, xlabel="position",
                            ylabel="resid_pre of layer", title="share of the logit difference restored (resid_pre)")
        body = (f"<p>Corrupted prompt: {tok(ex.patching['corrupt'])}. Each cell: run the corrupted prompt, "
                "restore one clean activation, measure (patched - corrupted) / (clean - corrupted) "
                f"(clean {r.clean:+.3f}, corrupted {r.corrupt:+.3f}).</p><div class=\"figs\">" + _img(fig, "patching heatmap"))
        if ex.patching["heads"] is not None:
            hv = ex.patching["heads"]
            fig = plots.heatmap(hv.values, [f"L{l}" for l in hv.layers], [f"H{h}" for h in range(hv.values.shape[1])],
                                xlabel="head", ylabel="layer", title="restoring one head's output (all positions)")
            body += _img(fig, "head patching heatmap")
        body += "</div>"
    else:
        body = '<p class="note">No corrupted prompt given (--corrupt): no patching heatmap.</p>'
    sections.append(_section("patching", "Activation patching", body))
    sections += [_section(sid, heading, body) for sid, _, heading, body in extra]

    nav = "".join(f'<a href="#{sid}">{name}</a>' for sid, name in [
        ("summary", "Summary"), ("prediction", "Prediction"), ("logit-lens", "Logit lens"),
        ("dla", "DLA"), ("heads", "Heads"), ("patching", "Patching")] + [(sid, name) for sid, name, _, _ in extra])
    meta = html.escape(json.dumps({"tokens": ex.tokens, "target": ex.target, "contrast": ex.contrast}))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style>'
            f"<script>{_JS}</script></head><body data-explain=\"{meta}\"><header><h1>{html.escape(title)}: why "
            f"'{html.escape(ex.target_str)}'?</h1><div class=\"prompt\">{html.escape(ex.prompt)}</div></header>"
            f"<nav>{nav}</nav><main>{''.join(sections)}"
            f'<p class="note">lmjax {html.escape(jax.__version__)} (jax) - {ex.seconds:.1f} s.</p></main></body></html>')


def _pattern_title(label: str) -> str:
    return f"{label} implicit attention (mean |alpha|)" if label.endswith("ssm") else f"{label} attention"


def plots_label(ex: Explanation, token_id) -> str:
    return ex.vocab_labels.get(int(token_id), str(int(token_id)))


def write_report(path: str, model, params, tokenizer, prompt: str, sections=None, **kwargs) -> Explanation:
    """explain() + render_html() + write the file; returns the Explanation. `sections(ex)`, when
    given, returns extra sections for render_html. The page is written under a temporary name
    and renamed: an existing report is never half-overwritten."""
    ex = explain(model, params, tokenizer, prompt, **kwargs)
    extra = ()
    if sections is not None:
        start = time.time()
        extra = list(sections(ex))
        ex.seconds += time.time() - start
    page = render_html(ex, sections=extra)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return ex
