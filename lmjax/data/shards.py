"""Token shards: tokenize a text source once, cache the ids on disk, memory-map them.

Layout of one cache entry, ``<cache_dir>/<key>/``:
- ``train.bin``, ``val.bin``: raw little-endian token ids (nanoGPT's format: uint16 when
  the vocabulary fits, else uint32),
- ``meta.json``: sizes, byte counts, dtype, and where the tokens came from,
- ``tokenizer.json``: the tokenizer, so the entry is self-describing.

The key hashes the source fingerprint, the tokenizer and the split, so any change to
one of them makes a new entry. Entries are built in a temporary directory and renamed into
place, so a directory named ``<key>`` is always complete. On a bucket (``gs://...``, any
path ``etils.epath`` reads), where a directory can't be renamed atomically, the entry is
built locally and uploaded with ``meta.json`` last: an entry without it is incomplete.
Local entries are memory-mapped; entries on a bucket are read by byte ranges
(:class:`TokenFile`), so no worker needs a copy of the data.

Multi-process runs (a ``ProcessGroup`` with several processes) whose processes all see
the cache directory tokenize as one job: process i tokenizes its contiguous share of the
files (balanced by size) into a part file, process 0 concatenates the parts in order into
the entry, the others wait. The tokens are identical to a single-process run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile

import numpy as np
from etils import epath
from tqdm.auto import tqdm

from lmjax.data import formats
from lmjax.data.batches import train_rows
from lmjax.data.encode import Encoder
from lmjax.data.sources import TextSource
from lmjax.data.tokenizers import Tokenizer
from lmjax.errors import LmjaxError

FORMAT_VERSION = 1  # bump when the on-disk layout changes: old entries then miss the cache
PROGRESS_MIN_BYTES = 5_000_000  # below this a progress bar is just noise
_CHUNK_TOKENS = 1 << 20  # tokens read or written at a time
_CHUNK_CHARS = 1 << 20  # characters of text per batch sent to the tokenizer


@dataclasses.dataclass(frozen=True)
class TokenData:
    """The train and val token streams (read-only memmaps, or :class:`TokenFile` on a bucket)
    and their metadata.

    ``meta`` keys: ``source``, ``fingerprint``, ``n_files``, ``tokenizer_kind``,
    ``vocab_size``, ``eos_id``, ``dtype``, ``val_fraction``, ``n_documents`` (text documents
    read, plus the EOS tokens of token shards), ``n_skipped`` (malformed records skipped),
    ``n_tokens_train``, ``n_tokens_val``, ``n_bytes_train``, ``n_bytes_val``, ``key``,
    ``format``; plus, not stored on disk, ``dir`` (the entry's directory) and ``cached``
    (True when this call loaded an existing entry instead of tokenizing).
    """

    train: np.ndarray
    val: np.ndarray
    meta: dict

    @property
    def val_tokens_per_byte(self) -> float:
        """Val tokens per UTF-8 byte of val text: bits/byte = nats/token * this / ln 2."""
        n_bytes = self.meta["n_bytes_val"]
        return self.meta["n_tokens_val"] / n_bytes if n_bytes else float("nan")

    # The interface the training loop uses, shared with lmjax.data.mixture.MixtureData.

    def train_rows(self, *, seed: int, step: int, batch_size: int, seq_len: int, start: int, stop: int,
                   eos: int | None = None) -> dict:
        """Rows ``[start, stop)`` of the global training batch for ``step`` (lmjax.data.batches.train_rows;
        with ``eos``, also the rows' document ids)."""
        return train_rows(self.train, seed=seed, step=step, batch_size=batch_size, seq_len=seq_len,
                          start=start, stop=stop, eos=eos)

    def val_splits(self) -> dict:
        """The val tokens to evaluate, by name: one source has one, named ""."""
        return {"": self.val}

    def windows_problem(self, seq_len: int, eval_rows: int) -> str | None:
        """Why training (one window of seq_len + 1) or evaluation (``eval_rows`` windows) can't
        run on these splits, or None."""
        for split, tokens, rows in (("train", self.train, 1), ("val", self.val, eval_rows)):
            if len(tokens) < rows * seq_len + 1:
                return f"the {split} split has {len(tokens)} tokens, fewer than {rows} window(s) of {seq_len} + 1"
        return None

    def summary(self) -> str:
        return f"{len(self.train):,} train / {len(self.val):,} val tokens"


def default_cache_dir() -> str:
    """Where token shards (and other caches) go: $LMJAX_CACHE, else ~/.cache/lmjax."""
    return os.environ.get("LMJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lmjax")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype used for ids of this vocabulary (uint16 or uint32)."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def cache_key(source: TextSource, tokenizer: Tokenizer, val_fraction: float) -> str:
    """Short hash naming the cache entry for these inputs."""
    blob = json.dumps(
        {"format": FORMAT_VERSION, "source": source.fingerprint(), "tokenizer": tokenizer.to_json(),
         "val_fraction": float(val_fraction)},
        sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def is_local(path) -> bool:
    """True for a path on this machine's filesystem (not gs://, s3://, ...)."""
    text = os.fspath(path)
    return "://" not in text or text.startswith("file://")


def _epath(path) -> epath.Path:
    text = os.fspath(path)
    return epath.Path(os.path.expanduser(text) if is_local(text) else text)


class TokenFile:
    """A read-only 1-D token array in a file read by byte ranges (no memory map): token shards
    on a bucket. Supports ``len``, integer and contiguous-slice indexing, and ``np.asarray``."""

    ndim = 1

    def __init__(self, path, dtype, n: int):
        self.path, self.dtype, self.n = _epath(path), np.dtype(dtype), int(n)
        self._file = None

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int]:
        return (self.n,)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.n if index < 0 else 0)
            if not 0 <= i < self.n:
                raise IndexError(f"token index {index} out of range for {self.n} tokens")
            return self[i:i + 1][0]
        if not isinstance(index, slice):
            raise TypeError("TokenFile supports integer and slice indexing only")
        start, stop, step = index.indices(self.n)
        if step != 1:
            return self[start:stop][::step]
        if stop <= start:
            return np.zeros(0, self.dtype)
        if self._file is None:
            self._file = self.path.open("rb")
        self._file.seek(start * self.dtype.itemsize)
        data = self._file.read((stop - start) * self.dtype.itemsize)
        return np.frombuffer(data, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"TokenFile({os.fspath(self.path)!r}, {self.dtype.name}, n={self.n})"


def prepare_tokens(source: TextSource, tokenizer: Tokenizer, cache_dir: str, *,
                   val_fraction: float = 0.1, progress: bool = True, group=None, workers: int = 0) -> TokenData:
    """Tokenize ``source`` (each document followed by EOS, in source order), split the stream
    by token index into the first ``1 - val_fraction`` (train) and the rest (val), and cache it.

    A second call with the same source files, tokenizer and ``val_fraction`` loads the cache.
    ``group`` (an ``lmjax.distributed.ProcessGroup``; every process calls this together)
    splits the tokenizing over the run's processes when they share the cache directory;
    each process tokenizes in ``workers`` processes (0 = one per core; lmjax/data/encode.py).
    Token shards (``.bin``) enter the stream as they are, without EOS.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < val_fraction < 1.0:
        raise LmjaxError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    cache = _epath(cache_dir)
    key = cache_key(source, tokenizer, val_fraction)
    final = cache / key
    if group is not None and group.count > 1:
        if group.all_true(_complete(final)):
            return _load(final, cached=True)
        if _shared(cache, group):
            return _prepare_split(source, tokenizer, cache, key, val_fraction, progress, group, workers)
        # Each process has its own cache directory: each one tokenizes everything itself.
    if _complete(final):
        return _load(final, cached=True)
    if not is_local(cache):
        return _prepare_remote(source, tokenizer, cache, key, val_fraction, progress, workers)

    os.makedirs(cache, exist_ok=True)
    # The temporary name starts with "." and never equals a key: it can't be mistaken for an entry.
    tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0o700; a shared cache should stay readable
        stream = os.path.join(tmp, "stream.bin")
        counts = _tokenize(stream, source, range(len(source.paths)), tokenizer, progress, workers)
        _finish_entry(tmp, [(stream, counts)], source, tokenizer, val_fraction, key)
        try:
            os.rename(tmp, final)  # atomic: the entry appears complete or not at all
        except OSError:
            if not os.path.exists(final):
                raise
            # Another writer finished first; its entry holds the same tokens. Ours is discarded below.
        return _load(final, cached=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(entry: epath.Path) -> bool:
    return (entry / "meta.json").exists()


def _prepare_remote(source, tokenizer, cache: epath.Path, key: str, val_fraction, progress, workers) -> TokenData:
    """Build the entry in a local temporary directory and upload it, meta.json last."""
    with tempfile.TemporaryDirectory(prefix=f"lmjax-{key}-") as tmp:
        stream = os.path.join(tmp, "stream.bin")
        counts = _tokenize(stream, source, range(len(source.paths)), tokenizer, progress, workers)
        entry = os.path.join(tmp, "entry")
        os.makedirs(entry)
        _finish_entry(entry, [(stream, counts)], source, tokenizer, val_fraction, key)
        _publish(entry, cache / key)
    return _load(cache / key, cached=False)


def _publish(local_entry: str, final: epath.Path) -> None:
    """Upload a finished local entry; meta.json last, so readers never see a partial entry."""
    if _complete(final):
        return  # another writer finished first
    final.mkdir(parents=True, exist_ok=True)
    for name in ("train.bin", "val.bin", "tokenizer.json", "meta.json"):
        epath.Path(os.path.join(local_entry, name)).copy(final / name, overwrite=True)


def _shared(cache: epath.Path, group) -> bool:
    """Do all processes see the same cache directory? (process 0 writes a probe, all look for it)"""
    nonce = group.broadcast(random.SystemRandom().randrange(1 << 30) if group.index == 0 else 0)
    probe = cache / f".probe-{nonce}"
    if group.index == 0:
        cache.mkdir(parents=True, exist_ok=True)
        probe.write_text("lmjax")
    group.barrier(f"lmjax-probe-{nonce}")
    seen = group.all_true(probe.exists())  # a collective: every process has looked after it
    if group.index == 0:
        probe.unlink()
    return seen


def _split_files(sizes: list[int], count: int) -> list[range]:
    """Contiguous file ranges, one per process, balanced by bytes (in file order)."""
    total = sum(sizes)
    starts = np.cumsum([0] + sizes[:-1]) if sizes else np.zeros(0)
    bounds = [int(np.searchsorted(starts, total * i / count, side="left")) for i in range(count)] + [len(sizes)]
    bounds[0] = 0
    return [range(bounds[i], max(bounds[i], bounds[i + 1])) for i in range(count)]


def _prepare_split(source, tokenizer, cache: epath.Path, key: str, val_fraction, progress, group,
                   workers) -> TokenData:
    nonce = group.broadcast(random.SystemRandom().randrange(1 << 30) if group.index == 0 else 0)
    parts = cache / f".{key}.parts-{nonce}"
    mine = _split_files(source.sizes(), group.count)[group.index]
    error = None
    with tempfile.TemporaryDirectory(prefix=f"lmjax-{key}-") as tmp:
        try:
            parts.mkdir(parents=True, exist_ok=True)
            stream = os.path.join(tmp, "part.bin")
            counts = _tokenize(stream, source, mine, tokenizer, progress and group.index == 0, workers)
            _put(stream, parts / f"part-{group.index:05d}.bin")
            (parts / f"part-{group.index:05d}.json").write_text(json.dumps(counts))
        except Exception as e:  # noqa: BLE001 -- reported below, after the others know
            error = e
        if not group.all_true(error is None):
            if error is not None:
                raise error
            raise LmjaxError(f"tokenizing {source.name!r} failed on another process (see its log)")
        if group.index == 0:
            try:
                counts = [json.loads((parts / f"part-{i:05d}.json").read_text()) for i in range(group.count)]
                entry = os.path.join(tmp, "entry") if not is_local(cache) else tempfile.mkdtemp(
                    prefix=f".{key}.tmp-", dir=os.fspath(cache))
                os.makedirs(entry, exist_ok=True)
                try:
                    os.chmod(entry, 0o755)
                    streams = [(parts / f"part-{i:05d}.bin", c) for i, c in enumerate(counts)]
                    _finish_entry(entry, streams, source, tokenizer, val_fraction, key)
                    if is_local(cache):
                        try:
                            os.rename(entry, os.fspath(cache / key))
                        except OSError:
                            if not _complete(cache / key):
                                raise
                    else:
                        _publish(entry, cache / key)
                finally:
                    shutil.rmtree(entry, ignore_errors=True)
                parts.rmtree(missing_ok=True)
            except Exception as e:  # noqa: BLE001
                error = e
        if not group.all_true(error is None):
            if error is not None:
                raise error
            raise LmjaxError(f"assembling the token shards of {source.name!r} failed on process 0 (see its log)")
    return _load(cache / key, cached=False)


def _put(local_file: str, dst: epath.Path) -> None:
    if is_local(dst):
        shutil.move(local_file, os.fspath(dst))
    else:
        epath.Path(local_file).copy(dst, overwrite=True)


def _chunks_of_source(source: TextSource, indices, tokenizer: Tokenizer, skipped: formats.Skipped, counts: dict):
    """Work for the encoder, in stream order, each tagged (file index, characters of the file
    read so far): lists of ~_CHUNK_CHARS characters of documents, and token shards' ids
    (checked against the vocabulary) in slices. ``counts["documents"]`` counts documents."""
    vocab_size = int(tokenizer.vocab_size)
    for i in indices:
        if source.is_tokens(i):
            try:
                tokens = formats.read_token_shard(source.paths[i])
            except formats.MalformedRecordError as e:
                if not source.skip_malformed:
                    raise LmjaxError(f"{e} (data.skip_malformed=True skips such files)") from None
                skipped.add(str(e))
                continue
            for start in range(0, len(tokens), _CHUNK_TOKENS):
                part = np.asarray(tokens[start:start + _CHUNK_TOKENS])
                if part.size and int(part.max()) >= vocab_size:
                    raise LmjaxError(f"{source.paths[i]}: token shard holds id {int(part.max())}, outside the "
                                     f"tokenizer's vocabulary [0, {vocab_size}); use the tokenizer it was made with")
                if tokenizer.eos_id is not None:
                    counts["documents"] += int(np.count_nonzero(part == tokenizer.eos_id))
                yield part, (i, (start + len(part)) * tokens.dtype.itemsize)
            continue
        batch, chars, read = [], 0, 0
        for text in source.file_documents(i, skipped):
            batch.append(text)
            chars += len(text)
            counts["documents"] += 1
            if chars >= _CHUNK_CHARS:
                read += chars
                yield batch, (i, read)
                batch, chars = [], 0
        if batch:
            yield batch, (i, read + chars)


def _tokenize(out_path: str, source: TextSource, indices, tokenizer: Tokenizer, progress: bool,
              workers: int = 0) -> dict:
    """Write the token stream of files ``indices`` (each document followed by EOS; token shards as
    they are) to a local file; returns its counts: ``n_tokens``, ``n_documents``, ``n_skipped``,
    ``skipped_first``. Memory holds a few chunks per worker."""
    dtype = token_dtype(int(tokenizer.vocab_size))
    sizes = source.sizes()
    total = sum(sizes[i] for i in indices)
    skipped = formats.Skipped()
    counts = {"documents": 0}
    n_tokens, shown, done = 0, 0, {}  # done: bytes of each file the bar has counted
    with open(out_path, "wb") as f, Encoder(tokenizer, dtype, workers=workers, total_bytes=total) as encoder, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"tokenizing {source.name}",
            disable=not (progress and total > PROGRESS_MIN_BYTES)) as bar:
        for ids, (i, read) in encoder.map(_chunks_of_source(source, indices, tokenizer, skipped, counts)):
            f.write(ids.tobytes())
            n_tokens += ids.size
            # The bar counts file bytes: what is tokenized so far, at most the file's size, and
            # the whole of every file before it (compressed files fill their share early).
            for j in [j for j in done if j != i]:
                bar.update(sizes[j] - done.pop(j))
            now = min(read, sizes[i])
            bar.update(now - done.get(i, 0))
            done[i] = now
            if bar.n - shown > PROGRESS_MIN_BYTES:
                shown = bar.n
                bar.set_postfix_str(f"{n_tokens / max(bar.format_dict['elapsed'], 1e-9):,.0f} tokens/s")
        bar.update(total - bar.n)
        _sync(f)
    if skipped.count:
        tqdm.write(f"lmjax: skipped {skipped.count} malformed record(s) of {source.name!r}; the first: {skipped.first}")
    return {"n_tokens": n_tokens, "n_documents": counts["documents"], "n_skipped": skipped.count,
            "skipped_first": skipped.first}


def _chunks(path, dtype: np.dtype, n: int):
    """The tokens of a stream file (local path or epath), in chunks of at most _CHUNK_TOKENS."""
    with _epath(path).open("rb") as f:
        for start in range(0, n, _CHUNK_TOKENS):
            count = min(_CHUNK_TOKENS, n - start)
            data = f.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise LmjaxError(f"token stream {os.fspath(path)!r} is shorter than its {n} tokens")
            yield np.frombuffer(data, dtype=dtype)


def _finish_entry(out_dir: str, streams, source: TextSource, tokenizer: Tokenizer, val_fraction: float,
                  key: str) -> None:
    """Concatenate the streams [(path, counts), ...] (counts as _tokenize returns them) into
    ``out_dir/train.bin`` + ``val.bin`` (split at token int(n * (1 - val_fraction))), and write
    tokenizer.json and meta.json."""
    dtype = token_dtype(int(tokenizer.vocab_size))
    n_tokens = sum(c["n_tokens"] for _, c in streams)
    n_train = int(n_tokens * (1.0 - val_fraction))  # nanoGPT: data[:int(n*0.9)]
    token_bytes = np.asarray(tokenizer.token_bytes(), dtype=np.int64)
    n_bytes = [0, 0]
    written = 0
    with open(os.path.join(out_dir, "train.bin"), "wb") as train, open(os.path.join(out_dir, "val.bin"), "wb") as val:
        for path, counts in streams:
            for chunk in _chunks(path, dtype, counts["n_tokens"]):
                cut = max(0, min(len(chunk), n_train - written))
                for split, (f, part) in enumerate(((train, chunk[:cut]), (val, chunk[cut:]))):
                    if len(part):
                        f.write(part.tobytes())
                        n_bytes[split] += int(token_bytes[part].sum())
                written += len(chunk)
        _sync(train)
        _sync(val)
    if n_bytes[0] + n_bytes[1] == 0:
        raise LmjaxError(f"data source {source.name!r} ({len(source.paths)} files) contains no text to tokenize")
    meta = {
        "format": FORMAT_VERSION,
        "source": source.name,
        "fingerprint": source.fingerprint(),
        "n_files": len(source.paths),
        "tokenizer_kind": tokenizer.kind,
        "vocab_size": int(tokenizer.vocab_size),
        "eos_id": tokenizer.eos_id,
        "dtype": dtype.name,
        "val_fraction": float(val_fraction),
        "n_documents": sum(c["n_documents"] for _, c in streams),
        "n_skipped": sum(c["n_skipped"] for _, c in streams),
        "n_tokens_train": n_train,
        "n_tokens_val": n_tokens - n_train,
        "n_bytes_train": n_bytes[0],
        "n_bytes_val": n_bytes[1],
        "key": key,
    }
    _write_json(os.path.join(out_dir, "tokenizer.json"), tokenizer.to_json())
    _write_json(os.path.join(out_dir, "meta.json"), meta)


def _sync(f) -> None:
    # Data on disk before the rename publishes it: a power cut can't leave a complete-looking
    # entry with missing bytes.
    f.flush()
    os.fsync(f.fileno())


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        _sync(f)


def _load(entry, *, cached: bool, mmap: bool | None = None) -> TokenData:
    """Open a cache entry: memory-mapped when local (or mmap=True), read by ranges otherwise."""
    entry = _epath(entry)
    meta_path = entry / "meta.json"
    if not meta_path.exists():
        raise LmjaxError(f"token cache entry {os.fspath(entry)!r} exists but has no meta.json, so it was not "
                         "written by lmjax; delete it and run again")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    dtype = np.dtype(meta["dtype"])
    mmap = is_local(entry) if mmap is None else mmap
    train = _open_tokens(entry / "train.bin", dtype, meta["n_tokens_train"], mmap)
    val = _open_tokens(entry / "val.bin", dtype, meta["n_tokens_val"], mmap)
    return TokenData(train=train, val=val, meta={**meta, "dir": os.fspath(entry), "cached": cached})


def _open_tokens(path: epath.Path, dtype: np.dtype, n: int, mmap: bool):
    size = path.stat().length
    if size != n * dtype.itemsize:
        raise LmjaxError(f"token file {os.fspath(path)!r} has {size} bytes, expected {n} {dtype.name} tokens; "
                         "the cache entry is corrupt: delete its directory and run again")
    if n == 0:
        return np.zeros(0, dtype=dtype)  # mmap can't map an empty file
    if mmap:
        return np.memmap(os.fspath(path), dtype=dtype, mode="r", shape=(n,))
    return TokenFile(path, dtype, n)
