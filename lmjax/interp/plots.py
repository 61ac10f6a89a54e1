"""Matplotlib figures of the analyses, saved as PNG (or inlined in the explain report).

Every function returns a Figure (Agg backend: no display needed, lmjax.plotting);
`save(fig, path)` writes a PNG and `png_bytes(fig)` returns one. Token strings are shown
as given (`token_labels` makes readable ones). In notebooks, arrays and results also render with treescope
(`treescope.render_array`), which needs nothing from here.
"""
from __future__ import annotations

import numpy as np

from lmjax import plotting

plt = plotting.pyplot()

DIVERGING = "RdBu"


def token_labels(tokenizer, ids) -> list[str]:
    """Readable per-token strings: whitespace made visible, empty pieces named by id."""
    out = []
    for i in ids:
        s = tokenizer.decode([int(i)]) if tokenizer is not None else str(int(i))
        s = s.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u00b7")
        printable = s and s.isprintable() and "\ufffd" not in s  # bytes that are not text on their own
        out.append(s if printable else f"<{int(i)}>")
    return out


def save(fig, path: str) -> str:
    """Write `fig` as a PNG at 110 dpi, cropped to what is drawn -> path."""
    return plotting.save(fig, path, dpi=110)


def png_bytes(fig) -> bytes:
    """`fig` as PNG bytes at 90 dpi (what the explain report inlines)."""
    return plotting.png_bytes(fig, dpi=90)


def _symmetric(values):
    m = float(np.nanmax(np.abs(values))) if np.size(values) else 1.0
    return m if m > 0 else 1.0


def attention_pattern(pattern, tokens: list[str] | None = None, title: str = "attention pattern"):
    """One head's pattern [q, k]: rows are queries (attending from), columns keys."""
    pattern = np.asarray(pattern)
    t = pattern.shape[0]
    fig, ax = plt.subplots(figsize=(0.28 * t + 2.2, 0.28 * t + 1.6))
    im = ax.imshow(pattern, cmap="Blues", vmin=0, vmax=max(float(pattern.max()), 1e-6))
    if tokens is not None and t <= 48:
        ax.set_xticks(range(t), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(t), tokens, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def heatmap(values, row_labels=None, col_labels=None, title: str = "", xlabel: str = "", ylabel: str = "",
            center: bool = True):
    """A layer x position (or layer x head) grid; diverging colours centred on 0 by default."""
    values = np.asarray(values, np.float64)
    r, c = values.shape
    fig, ax = plt.subplots(figsize=(min(0.45 * c + 2.5, 14), min(0.35 * r + 1.8, 10)))
    if center:
        lim = _symmetric(values)
        im = ax.imshow(values, cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="auto")
    else:
        im = ax.imshow(values, cmap="viridis", aspect="auto")
    if col_labels is not None:
        ax.set_xticks(range(c), col_labels, rotation=90, fontsize=7)
    if row_labels is not None:
        ax.set_yticks(range(r), row_labels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def dla_bars(labels, values, title: str = "direct logit attribution", top: int = 20):
    """Horizontal bars of the `top` components by |value| (red pushes up, blue down)."""
    values = np.asarray(values, np.float64)
    order = np.argsort(-np.abs(values))[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(order) + 1.2))
    colors = ["#c0392b" if values[i] > 0 else "#2e86c1" for i in order]
    ax.barh(range(len(order)), values[order], color=colors)
    ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=7)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("contribution to the logit (difference)")
    ax.set_title(title, fontsize=9)
    return fig


def logit_lens(probs, layer_labels, position_labels=None, annotations=None, title: str = "logit lens"):
    """probs [layers, positions] (e.g. the target's probability); `annotations` [layers,
    positions] of short strings (e.g. the top token) written in the cells."""
    probs = np.asarray(probs, np.float64)
    r, c = probs.shape
    fig, ax = plt.subplots(figsize=(min(0.6 * c + 2.5, 14), 0.35 * r + 1.8))
    im = ax.imshow(probs, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(r), layer_labels, fontsize=7)
    if position_labels is not None:
        ax.set_xticks(range(c), position_labels, rotation=90, fontsize=7)
    if annotations is not None and c <= 32:
        for i in range(r):
            for j in range(c):
                ax.text(j, i, str(annotations[i][j])[:6], ha="center", va="center", fontsize=5,
                        color="w" if probs[i, j] < 0.5 else "k")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def trajectory(values, layer_labels, ylabel: str = "probability", title: str = ""):
    """One line over depth (e.g. the target token's probability by layer)."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(range(len(values)), values, marker="o")
    ax.set_xticks(range(len(values)), layer_labels, fontsize=7, rotation=45)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def probe_curves(result, title: str = "probe accuracy by layer"):
    """Test accuracy and the shuffled-label control by layer (a lmjax.interp.probes.ProbeResult)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    x = range(len(result.labels))
    ax.plot(x, result.test_acc, marker="o", label="probe (test)")
    ax.plot(x, result.control_acc, marker="s", label="shuffled-label control")
    ax.axhline(result.chance, color="gray", ls="--", lw=0.8, label="majority class")
    ax.set_xticks(list(x), result.labels, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig
