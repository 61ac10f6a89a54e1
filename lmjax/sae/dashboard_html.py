"""Feature dashboards as HTML: a self-contained page with one card per feature (top and
quantile-sampled contexts with tokens shaded by activation, an inline SVG histogram, the top
and bottom logits), navigation, and the features section of the `lmjax explain` page. The
data come from lmjax.sae.dashboard.
"""
from __future__ import annotations

import html

import numpy as np

from lmjax.sae.architectures import Dictionary
from lmjax.sae.dashboard import Context, Dashboards, Feature, PromptFeatures, write_text


# --------------------------------------------------------------------------------- HTML

CSS = """
.fd-card{background:#fff;border:1px solid #e3e3e3;border-radius:6px;margin:14px 0;padding:10px 16px}
.fd-card h3{margin:2px 0 6px;font-size:16px}.fd-card h4{margin:10px 0 4px;font-size:13px;color:#444}
.fd-meta{color:#555;font-size:13px}.fd-row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.fd-ctx{font-family:ui-monospace,monospace;font-size:12px;white-space:pre;line-height:1.9;overflow-x:auto}
.fd-ctx .v{display:inline-block;width:64px;color:#666;text-align:right;margin-right:8px}
.fd-t{border-radius:2px;padding:1px 0}.fd-t.max{outline:1.5px solid #c0392b}
table.fd-logits{border-collapse:collapse;font-size:12px}
table.fd-logits td{padding:1px 8px;border-bottom:1px solid #f0f0f0}
table.fd-logits td.num{text-align:right;font-family:ui-monospace,monospace}
.fd-tok{font-family:ui-monospace,monospace;background:#f0f0f0;padding:0 3px;border-radius:3px;white-space:pre}
.fd-pos{color:#1a7f37}.fd-neg{color:#b42318}.fd-nav a{margin-right:10px;font-size:13px}
"""

_PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:12px 24px}header h1{margin:0;font-size:19px}
header .fd-meta{color:#dde}#layout{display:flex}
#index{position:sticky;top:0;height:100vh;overflow-y:auto;width:150px;flex:none;background:#eef2f7;
  border-right:1px solid #d5dde8;padding:8px;font-size:13px}#index a{display:block;color:#1f3a5f;text-decoration:none}
#index a.active{font-weight:bold}#index input{width:120px;margin-bottom:6px}
main{padding:0 24px 40px;max-width:1100px;flex:1}
"""

_PAGE_JS = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
document.addEventListener('DOMContentLoaded', function () {
  var cards = document.querySelectorAll('.fd-card');
  var links = document.querySelectorAll('#index a');
  function show(id) {
    var card = document.getElementById(id);
    if (!card) return false;
    links.forEach(function (a) { a.classList.toggle('active', a.getAttribute('href') === '#' + id); });
    card.scrollIntoView();
    return true;
  }
  links.forEach(function (a) { a.addEventListener('click', function () { show(a.getAttribute('href').slice(1)); }); });
  var box = document.getElementById('goto');
  box.addEventListener('change', function () {
    box.style.background = show('f-' + box.value.trim()) ? '' : '#fdd';
  });
  document.addEventListener('keydown', function (e) {
    if (e.target === box) return;
    var here = Array.prototype.findIndex.call(cards, function (c) { return c.getBoundingClientRect().bottom > 1; });
    if (e.key === 'j' && here + 1 < cards.length) show(cards[here + 1].id);
    if (e.key === 'k' && here > 0) show(cards[here - 1].id);
  });
  document.body.setAttribute('data-cards', cards.length);
});
window.addEventListener('load', function () {
  document.body.setAttribute('data-rendered', window.__errors.length ? 'errors' : 'ok');
});
"""


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _token_spans(c: Context, labels: dict, scale: float) -> str:
    """The window's tokens, each shaded by its activation (orange up, blue down), the
    activating token outlined; the activation in each token's tooltip."""
    out = []
    for j, (t, a) in enumerate(zip(c.tokens, c.acts)):
        alpha = min(abs(a) / scale, 1.0) if scale > 0 else 0.0
        colour = f"rgba(255,140,0,{alpha:.2f})" if a >= 0 else f"rgba(40,110,220,{alpha:.2f})"
        cls = "fd-t max" if j == c.index else "fd-t"
        out.append(f'<span class="{cls}" style="background:{colour}" title="{a:.4g}">{_esc(labels.get(t, t))}</span>')
    return "".join(out)


def _context_rows(contexts, labels, scale) -> str:
    if not contexts:
        return '<div class="fd-meta">none</div>'
    return "".join(f'<div class="fd-ctx"><span class="v">{c.value:.3g}</span>{_token_spans(c, labels, scale)}</div>'
                   for c in contexts)


def histogram_svg(f: Feature, width: int = 320, height: int = 90) -> str:
    """The firing activations' histogram as inline SVG (one rect per bin, its count in a tooltip)."""
    counts = np.asarray(f.hist, np.float64)
    peak = counts.max() if counts.size and counts.max() > 0 else 1.0
    bw = width / max(len(counts), 1)
    bars = []
    for j, cnt in enumerate(counts):
        h = (height - 16) * cnt / peak
        lo, hi = f.hist_edges[j], f.hist_edges[j + 1]
        bars.append(f'<rect x="{j * bw:.2f}" y="{height - 14 - h:.2f}" width="{max(bw - 1, 0.5):.2f}" '
                    f'height="{h:.2f}" fill="#e8871e"><title>{lo:.3g} to {hi:.3g}: {int(cnt)}</title></rect>')
    axis = (f'<text x="0" y="{height - 2}" font-size="10">{f.act_min:.3g}</text>'
            f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">{f.act_max:.3g}</text>')
    return (f'<svg class="fd-hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="activation histogram">{"".join(bars)}{axis}</svg>')


def _logit_table(rows, labels, cls) -> str:
    body = "".join(f'<tr><td><span class="fd-tok">{_esc(labels.get(t, t))}</span></td>'
                   f'<td class="num {cls}">{v:+.3f}</td></tr>' for t, v in rows)
    return f'<table class="fd-logits">{body}</table>'


def feature_card(f: Feature, dash_or_labels, dictionary: Dictionary | None = None, nav: str = "") -> str:
    """One feature's card (an HTML fragment): statistics, histogram, logits, contexts."""
    labels = dash_or_labels.labels if isinstance(dash_or_labels, Dashboards) else dash_or_labels
    dictionary = dictionary or getattr(dash_or_labels, "dictionary", None)
    scale = max(f.act_max, abs(f.act_min), f.prompt.value if f.prompt else 0.0, 1e-12)
    if f.prompt is not None:
        scale = max(scale, max((abs(a) for a in f.prompt.acts), default=0.0))
    meta = []
    if f.n_tokens:
        meta.append(f"fires on {f.n_fired} of {f.n_tokens} tokens ({100 * f.frequency:.3g}%); "
                    f"max {f.act_max:.4g}, mean when firing {f.act_mean:.4g}")
    if dictionary is not None and dictionary.is_transcoder:
        meta.append(f"transcoder: reads <span class=\"fd-tok\">{_esc(dictionary.hook_in)}</span>, writes "
                    f"<span class=\"fd-tok\">{_esc(dictionary.hook_out)}</span>")
    parts = [f'<div class="fd-card" id="f-{f.index}" data-feature="{f.index}"><h3>Feature {f.index}</h3>',
             nav, f'<div class="fd-meta">{"; ".join(meta)}</div>']
    side = []
    if f.n_fired:
        side.append(f"<div><h4>Activation histogram (firing tokens)</h4>{histogram_svg(f)}</div>")
    if f.top_logits:
        what = "decoder direction (output side)" if dictionary is not None and dictionary.is_transcoder else \
            "decoder direction"
        side.append(f"<div><h4>Top logits of the {what}</h4>{_logit_table(f.top_logits, labels, 'fd-pos')}</div>"
                    f"<div><h4>Bottom logits</h4>{_logit_table(f.bottom_logits, labels, 'fd-neg')}</div>")
    else:
        side.append('<div class="fd-meta">No direct path from this hook point to the logits: no logits.</div>')
    parts.append(f'<div class="fd-row">{"".join(side)}</div>')
    if f.prompt is not None:
        parts.append(f"<h4>On the prompt</h4>{_context_rows([f.prompt], labels, scale)}")
    if f.n_tokens and not f.n_fired:
        parts.append(f'<p class="fd-meta">Never fires on these {f.n_tokens} tokens.</p>')
    elif f.n_tokens:
        side = "input side: " if dictionary is not None and dictionary.is_transcoder else ""
        parts.append(f"<h4>{side}Top activations</h4>{_context_rows(f.top, labels, scale)}")
        for iv in f.intervals:
            parts.append(f"<h4>{_esc(iv.name)}: {iv.count} tokens</h4>{_context_rows(iv.contexts, labels, scale)}")
    parts.append("</div>")
    return "".join(parts)


def render_html(dash: Dashboards, title: str = "lmjax feature dashboards") -> str:
    """A self-contained page (inline CSS, JS and SVG; nothing fetched): an index of the
    features with a go-to box (j / k keys: next / previous card), one card per feature."""
    d = dash.dictionary
    ids = [f.index for f in dash.features]
    cards = []
    for i, f in enumerate(dash.features):
        prev = f'<a href="#f-{ids[i - 1]}">&larr; {ids[i - 1]}</a>' if i else ""
        nxt = f'<a href="#f-{ids[i + 1]}">{ids[i + 1]} &rarr;</a>' if i + 1 < len(ids) else ""
        cards.append(feature_card(f, dash, d, f'<div class="fd-nav">{prev}{nxt}</div>'))
    index = "".join(f'<a href="#f-{i}">feature {i}</a>' for i in ids)
    kind = f"transcoder {d.hook_in} -> {d.hook_out}" if d.is_transcoder else f"SAE on {d.hook_in}"
    meta = (f"{d.arch} {kind}, width {d.width}; {len(ids)} features over {dash.n_tokens} tokens "
            f"({dash.seconds:.1f} s)")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_PAGE_CSS}{CSS}</style>'
            f"<script>{_PAGE_JS}</script></head><body><header><h1>{_esc(title)}</h1>"
            f'<div class="fd-meta">{_esc(meta)}</div></header><div id="layout"><nav id="index">'
            f'<input id="goto" placeholder="go to feature" aria-label="go to feature">{index}</nav>'
            f"<main>{''.join(cards)}</main></div></body></html>")


def write_html(dash: Dashboards, path: str, title: str = "lmjax feature dashboards") -> str:
    return write_text(path, render_html(dash, title))


# ------------------------------------------------------------------------ lmjax explain


def features_section(pf: PromptFeatures) -> tuple[str, str, str, str]:
    """(section id, nav label, title, body HTML) of the explain page's features section."""
    d = pf.dashboards.dictionary
    carded = {f.index for f in pf.dashboards.features}
    ref = lambda i: f'<a href="#f-{i}">{i}</a>' if i in carded else str(i)  # noqa: E731
    labels = pf.dashboards.labels
    logits = {f.index: " ".join(f'<span class="tok">{_esc(labels.get(t, t))}</span>' for t, _ in f.top_logits[:5])
              for f in pf.dashboards.features}
    kind = f"transcoder {d.hook_in} -> {d.hook_out}" if d.is_transcoder else f"SAE on {d.hook_in}"
    body = [f"<style>{CSS}</style>", f'<p class="note">{_esc(d.arch)} {_esc(kind)}, width {d.width}.</p>']
    if pf.last:
        rows = "".join(f"<tr><td>{ref(i)}</td><td class=\"num\">{a:.3f}</td><td>{logits.get(i, '')}</td></tr>"
                       for i, a in pf.last)
        body.append(f"<p>Most active at the last position ('{_esc(pf.token_strs[-1])}'):</p>"
                    f"<table><tr><th>feature</th><th>activation</th><th>top logits</th></tr>{rows}</table>")
    else:
        body.append('<p class="note">No feature fires at the last position.</p>')
    rows = "".join(f'<tr><td>{p}</td><td><span class="tok">{_esc(s)}</span></td><td>' +
                   ", ".join(f"{ref(i)} ({a:.2f})" for i, a in row) + "</td></tr>"
                   for p, (s, row) in enumerate(zip(pf.token_strs, pf.per_position)))
    body.append(f"<p>Most active at each position:</p><table><tr><th>position</th><th>token</th>"
                f"<th>features (activation)</th></tr>{rows}</table>")
    if not pf.dashboards.n_tokens and pf.dashboards.features:
        body.append('<p class="note">No token set given (--feature_text): the dashboards show the logits and '
                    "the prompt only, no top-activating contexts.</p>")
    body += [feature_card(f, pf.dashboards) for f in pf.dashboards.features]
    return "features", "Features", "Features (dictionary)", "".join(body)
