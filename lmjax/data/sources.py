"""Text sources: a deterministic, sorted list of files to read as documents.

A spec is one of
- ``"stdlib"``: the embedded default corpus, the ``.py`` files of the running Python's
  standard library (real text on every machine, no download);
- a file, a directory (every non-hidden regular file under it), or a glob pattern
  (``*``, ``?``, ``[...]``; ``**`` recurses). ``~`` is expanded. Use ``./stdlib`` for a
  file or directory that happens to be called ``stdlib``.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sysconfig
from typing import Iterator

STDLIB = "stdlib"
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_GLOB_CHARS = "*?["


@dataclasses.dataclass(frozen=True)
class TextSource:
    """A named, ordered tuple of files; each file is one document."""

    name: str
    paths: tuple[str, ...]

    def fingerprint(self) -> str:
        """sha256 over (path, size, mtime_ns) of every file: changes when any file changes,
        without reading contents (cheap enough to compute on every run)."""
        h = hashlib.sha256()
        for p in self.paths:
            st = os.stat(p)
            h.update(json.dumps([p, st.st_size, st.st_mtime_ns]).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def documents(self) -> Iterator[str]:
        """Each file's text in ``paths`` order. Bytes are decoded as UTF-8 with
        replacement and without newline translation, so the text is what is on disk."""
        for p in self.paths:
            with open(p, "rb") as f:
                yield f.read().decode("utf-8", errors="replace")

    def total_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.paths)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _walk_files(root: str, skip_dirs: frozenset[str] = frozenset(), suffix: str = "") -> list[str]:
    """Regular, non-hidden files under ``root`` (hidden and ``skip_dirs`` directories pruned)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending; sorting is redone at the end anyway.
        dirnames[:] = [d for d in dirnames if _visible(d) and d not in skip_dirs]
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            if _visible(fn) and fn.endswith(suffix) and os.path.isfile(full):
                out.append(full)
    return out


def stdlib_paths() -> tuple[str, ...]:
    """The ``.py`` files of this interpreter's standard library, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    return tuple(sorted(_walk_files(root, _STDLIB_SKIP_DIRS, suffix=".py")))


def text_source(spec: str) -> TextSource:
    """Resolve a spec (see the module docstring) to a :class:`TextSource`."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data source spec must be a non-empty string, got {spec!r}")
    if spec == STDLIB:
        return TextSource(name=STDLIB, paths=stdlib_paths())

    path = os.path.expanduser(spec)
    if any(c in path for c in _GLOB_CHARS):
        files: set[str] = set()
        for m in glob.glob(path, recursive=True):
            if os.path.isdir(m):
                files.update(_walk_files(m))
            elif os.path.isfile(m):
                files.add(m)
    elif os.path.isdir(path):
        files = set(_walk_files(path))
    elif os.path.isfile(path):
        files = {path}
    else:
        files = set()

    if not files:
        raise FileNotFoundError(
            f"data source {spec!r} matched no files; expected 'stdlib' (the Python standard "
            "library's .py files), an existing file, a directory containing files, or a glob "
            "pattern such as 'data/*.txt' or 'data/**/*.md'")
    # Absolute paths make the fingerprint (and so the token cache) independent of the cwd.
    return TextSource(name=spec, paths=tuple(sorted(os.path.abspath(f) for f in files)))
