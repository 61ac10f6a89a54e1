"""Text sources: a deterministic, sorted list of files to read documents from.

A spec is one of
- ``"stdlib"``: the embedded default corpus, the ``.py`` files of the running Python's
  standard library (real text on every machine, no download);
- a file, a directory (every non-hidden regular file under it), or a glob pattern
  (``*``, ``?``, ``[...]``; ``**`` recurses). ``~`` is expanded. Use ``./stdlib`` for a
  file or directory that happens to be called ``stdlib``. The same on a bucket
  (``gs://bucket/corpus/*.txt``), read through ``etils.epath``;
- a directory written by ``datasets.Dataset.save_to_disk`` (its Arrow files, in order).

Each file is read by its format (lmjax/data/formats.py): a text file is one document, a
JSON-lines / parquet / Arrow file one document per record (its ``text_key`` field), an
llm.c ``.bin`` token shard a run of ready-made token ids.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sysconfig
from typing import Iterator

from etils import epath

from lmjax.data import formats, reference
from lmjax.errors import LmjaxError, MissingFileError

STDLIB = "stdlib"
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_GLOB_CHARS = "*?["


@dataclasses.dataclass(frozen=True)
class TextSource:
    """A named, ordered tuple of files, read by format; ``text_key`` names the text field of
    record formats, ``skip_malformed`` skips (and counts) malformed records instead of failing."""

    name: str
    paths: tuple[str, ...]
    text_key: str = formats.TEXT_KEY
    skip_malformed: bool = False

    def fingerprint(self) -> str:
        """sha256 over (path, size, mtime) of every file (and the record options when they
        matter): changes when any file changes, without reading contents (cheap enough to
        compute on every run)."""
        h = hashlib.sha256()
        for p in self.paths:
            if _is_local(p):
                st = os.stat(p)
                size, mtime = st.st_size, st.st_mtime_ns
            else:
                st = epath.Path(p).stat()
                size, mtime = st.length, st.mtime
            h.update(json.dumps([p, size, mtime]).encode("utf-8"))
            h.update(b"\n")
        if any(formats.has_records(p) for p in self.paths):
            h.update(json.dumps({"text_key": self.text_key}).encode("utf-8"))
        if self.skip_malformed:
            h.update(b"skip_malformed")
        return h.hexdigest()

    def is_tokens(self, i: int) -> bool:
        """Whether file ``i`` is a token shard (ids, no text)."""
        return formats.file_format(self.paths[i]) == "bin"

    def file_documents(self, i: int, skipped: formats.Skipped | None = None) -> Iterator[str]:
        """The documents of file ``i`` (not a token shard), in order."""
        return formats.documents(self.paths[i], text_key=self.text_key, skip=self.skip_malformed, skipped=skipped)

    def documents(self) -> Iterator[str]:
        """Every text document, file by file in ``paths`` order (token shards have none)."""
        for i in range(len(self.paths)):
            if not self.is_tokens(i):
                yield from self.file_documents(i)

    def sizes(self) -> list[int]:
        """Each file's size in bytes."""
        return [os.path.getsize(p) if _is_local(p) else epath.Path(p).stat().length for p in self.paths]

    def total_bytes(self) -> int:
        return sum(self.sizes())


def _is_local(path: str) -> bool:
    return "://" not in path


def _remote_files(spec: str) -> set[str]:
    """Files of a spec on a bucket (gs://...): a file, a directory (recursively) or a glob."""
    if any(c in spec for c in _GLOB_CHARS):
        scheme, _, rest = spec.partition("://")
        parts = rest.split("/")
        fixed = next(i for i, part in enumerate(parts) if any(c in part for c in _GLOB_CHARS))
        root = epath.Path(f"{scheme}://" + "/".join(parts[:fixed]))
        matches = root.glob("/".join(parts[fixed:]))
    else:
        matches = [epath.Path(spec)]
    files = set()
    for m in matches:
        if m.is_dir():
            files.update(_directory_files(m, lambda d: [os.fspath(f) for f in d.rglob("*")
                                                        if f.is_file() and _visible(f.name)]))
        elif m.exists():
            files.add(os.fspath(m))
    return files


def _dataset_files(directory) -> list[str] | None:
    """The Arrow files of a ``datasets.save_to_disk`` directory (None for another directory)."""
    root = epath.Path(directory)
    if (root / "dataset_dict.json").exists():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        raise LmjaxError(f"data source {os.fspath(directory)!r} is a DatasetDict saved to disk; name one of its "
                         f"splits' directories: {', '.join(os.fspath(root / s) for s in splits)}")
    state = root / "state.json"
    if not (state.exists() and (root / "dataset_info.json").exists()):
        return None
    files = json.loads(state.read_text()).get("_data_files", [])
    return [os.fspath(root / f["filename"]) for f in files]


def _directory_files(directory, walk) -> list[str]:
    dataset = _dataset_files(directory)
    return dataset if dataset is not None else walk(directory)


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


def text_source(spec: str, *, text_key: str = formats.TEXT_KEY, skip_malformed: bool = False) -> TextSource:
    """Resolve a spec (see the module docstring) to a :class:`TextSource`."""
    if not isinstance(spec, str) or not spec:
        raise LmjaxError(f"data source spec must be a non-empty string, got {spec!r}")
    if not isinstance(text_key, str) or not text_key:
        raise LmjaxError(f"text_key must be a non-empty string (a record's text field), got {text_key!r}")
    options = {"text_key": text_key, "skip_malformed": bool(skip_malformed)}
    if spec == STDLIB:
        return TextSource(name=STDLIB, paths=stdlib_paths(), **options)
    spec = reference.resolve(spec, "data.source")

    if not _is_local(spec):
        files = _remote_files(spec)
        if not files:
            raise MissingFileError(f"data source {spec!r} matched no files (a file, a directory or a glob on the bucket)")
        return TextSource(name=spec, paths=tuple(sorted(files)), **options)

    path = os.path.expanduser(spec)
    if any(c in path for c in _GLOB_CHARS):
        files: set[str] = set()
        for m in glob.glob(path, recursive=True):
            if os.path.isdir(m):
                files.update(_directory_files(m, _walk_files))
            elif os.path.isfile(m):
                files.add(m)
    elif os.path.isdir(path):
        files = set(_directory_files(path, _walk_files))
    elif os.path.isfile(path):
        files = {path}
    else:
        files = set()

    if not files:
        raise MissingFileError(
            f"data source {spec!r} matched no files; expected 'stdlib' (the Python standard "
            "library's .py files), an existing file, a directory containing files, or a glob "
            "pattern such as 'data/*.txt' or 'data/**/*.md'")
    # Absolute paths make the fingerprint (and so the token cache) independent of the cwd.
    return TextSource(name=spec, paths=tuple(sorted(os.path.abspath(f) for f in files)), **options)
