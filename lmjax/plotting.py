"""Figures, written once for every package: matplotlib on its file-only backend, and saving.

Every figure lmjax draws goes to a file (or into a report as PNG bytes), so pyplot runs on
the Agg backend: no display is needed, and none is opened. In a notebook, show a returned
figure with IPython's `display(fig)`.
"""
from __future__ import annotations

import io
import os


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: matplotlib takes a
    noticeable part of a second to import, and most commands draw nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str, *, dpi="figure", tight: bool = True) -> str:
    """Write `fig` to `path` (the format from its extension) and close it -> path.

    The file appears whole or not at all: it is written under a temporary name beside
    `path`, then renamed. dpi: dots per inch ("figure": the figure's own); tight: crop to
    what is drawn."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight" if tight else None)
        os.replace(tmp, path)
    except OSError as e:  # about `path`, the name the caller knows, not the temporary one
        raise OSError(e.errno, e.strerror, path) from e
    finally:
        pyplot().close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def png_bytes(fig, *, dpi=90, tight: bool = True) -> bytes:
    """`fig` as PNG bytes (e.g. to inline in HTML), and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        pyplot().close(fig)
    return buf.getvalue()
