"""Token shards: tokenize a text source once, cache the ids on disk, memory-map them.

Layout of one cache entry, ``<cache_dir>/<key>/``:
- ``train.bin``, ``val.bin``: raw little-endian token ids (nanoGPT's format: uint16 when
  the vocabulary fits, else uint32),
- ``meta.json``: sizes, byte counts, dtype, and where the tokens came from,
- ``tokenizer.json``: the tokenizer, so the entry is self-describing.

The key hashes the source fingerprint, the tokenizer and the split, so any change to
one of them makes a new entry. Entries are built in a temporary directory and renamed into
place, so a directory named ``<key>`` is always complete.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from tqdm.auto import tqdm

from lmjax.data.sources import TextSource
from lmjax.data.tokenizers import Tokenizer

FORMAT_VERSION = 1  # bump when the on-disk layout changes: old entries then miss the cache
PROGRESS_MIN_BYTES = 5_000_000  # below this a progress bar is just noise
_CHUNK_TOKENS = 1 << 20  # tokens buffered in memory before a write


@dataclasses.dataclass(frozen=True)
class TokenData:
    """The train and val token streams (read-only memmaps) and their metadata.

    ``meta`` keys: ``source``, ``fingerprint``, ``n_files``, ``tokenizer_kind``,
    ``vocab_size``, ``eos_id``, ``dtype``, ``val_fraction``, ``n_documents``,
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


def prepare_tokens(source: TextSource, tokenizer: Tokenizer, cache_dir: str, *,
                   val_fraction: float = 0.1, progress: bool = True) -> TokenData:
    """Tokenize ``source`` (each document followed by EOS, in source order), split the stream
    by token index into the first ``1 - val_fraction`` (train) and the rest (val), and cache it.

    A second call with the same source files, tokenizer and ``val_fraction`` loads the cache.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    cache_dir = os.path.expanduser(cache_dir)
    key = cache_key(source, tokenizer, val_fraction)
    final = os.path.join(cache_dir, key)
    if os.path.exists(final):
        return _load(final, cached=True)

    os.makedirs(cache_dir, exist_ok=True)
    # The temporary name starts with "." and never equals a key: it can't be mistaken for an entry.
    tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0o700; a shared cache should stay readable
        meta = _write_entry(tmp, source, tokenizer, val_fraction, progress)
        meta["key"] = key
        _write_json(os.path.join(tmp, "tokenizer.json"), tokenizer.to_json())
        _write_json(os.path.join(tmp, "meta.json"), meta)
        try:
            os.rename(tmp, final)  # atomic: the entry appears complete or not at all
        except OSError:
            if not os.path.exists(final):
                raise
            # Another writer finished first; its entry holds the same tokens. Ours is discarded below.
        return _load(final, cached=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_entry(out_dir: str, source: TextSource, tokenizer: Tokenizer, val_fraction: float,
                 progress: bool) -> dict:
    """Tokenize into ``out_dir/train.bin`` + ``val.bin`` and return the metadata."""
    vocab_size = int(tokenizer.vocab_size)
    dtype = token_dtype(vocab_size)
    eos = tokenizer.eos_id
    encode = getattr(tokenizer, "encode_array", None) or (
        lambda text: np.asarray(tokenizer.encode(text), dtype=np.int64))
    sizes = [os.path.getsize(p) for p in source.paths]
    train_path, val_path = os.path.join(out_dir, "train.bin"), os.path.join(out_dir, "val.bin")

    # Pass 1: stream every token into train.bin. Memory holds one document's ids plus a
    # buffer of at most ~_CHUNK_TOKENS, whatever the corpus size.
    n_tokens = 0
    buffer: list[np.ndarray] = []
    buffered = 0
    eos_arr = np.array([eos], dtype=np.int64) if eos is not None else None

    def flush(f):
        nonlocal n_tokens, buffer, buffered
        if not buffer:
            return
        ids = np.concatenate(buffer)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"tokenizer produced an id outside [0, {vocab_size}) while tokenizing {source.name!r}")
        f.write(ids.astype(dtype).tobytes())
        n_tokens += ids.size
        buffer, buffered = [], 0

    total = sum(sizes)
    with open(train_path, "wb") as f, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"tokenizing {source.name}",
            disable=not (progress and total > PROGRESS_MIN_BYTES)) as bar:
        for size, doc in zip(sizes, source.documents()):
            ids = encode(doc)
            buffer.append(ids)
            if eos_arr is not None:
                buffer.append(eos_arr)  # EOS marks document boundaries for the model
            buffered += ids.size + 1
            if buffered >= _CHUNK_TOKENS:
                flush(f)
            bar.update(size)
        flush(f)

    # Pass 2: move the tail to val.bin, truncate train.bin, and count the UTF-8 bytes
    # each split decodes to (the denominator of bits-per-byte).
    n_train = int(n_tokens * (1.0 - val_fraction))  # nanoGPT: data[:int(n*0.9)]
    token_bytes = np.asarray(tokenizer.token_bytes(), dtype=np.int64)
    n_bytes_train = n_bytes_val = 0
    if n_tokens:
        stream = np.memmap(train_path, dtype=dtype, mode="r", shape=(n_tokens,))
        n_bytes_train = _count_bytes(stream[:n_train], token_bytes)
        n_bytes_val = _count_bytes(stream[n_train:], token_bytes)
        with open(val_path, "wb") as f:
            for start in range(n_train, n_tokens, _CHUNK_TOKENS):
                f.write(np.asarray(stream[start:start + _CHUNK_TOKENS]).tobytes())
            _sync(f)
        del stream  # close the map before shrinking the file under it
    else:
        open(val_path, "wb").close()
    if n_bytes_train + n_bytes_val == 0:
        raise ValueError(f"data source {source.name!r} ({len(source.paths)} files) contains no text to tokenize")
    with open(train_path, "r+b") as f:
        f.truncate(n_train * dtype.itemsize)
        _sync(f)

    return {
        "format": FORMAT_VERSION,
        "source": source.name,
        "fingerprint": source.fingerprint(),
        "n_files": len(source.paths),
        "tokenizer_kind": tokenizer.kind,
        "vocab_size": vocab_size,
        "eos_id": eos,
        "dtype": dtype.name,
        "val_fraction": float(val_fraction),
        "n_documents": len(sizes),
        "n_tokens_train": n_train,
        "n_tokens_val": n_tokens - n_train,
        "n_bytes_train": n_bytes_train,
        "n_bytes_val": n_bytes_val,
    }


def _count_bytes(tokens: np.ndarray, token_bytes: np.ndarray) -> int:
    """sum(token_bytes[tokens]) in chunks, so a big memmap isn't gathered at once."""
    return int(sum(token_bytes[tokens[i:i + _CHUNK_TOKENS]].sum()
                   for i in range(0, len(tokens), _CHUNK_TOKENS)))


def _sync(f) -> None:
    # Data on disk before the rename publishes it: a power cut can't leave a complete-looking
    # entry with missing bytes.
    f.flush()
    os.fsync(f.fileno())


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        _sync(f)


def _load(entry: str, *, cached: bool) -> TokenData:
    meta_path = os.path.join(entry, "meta.json")
    if not os.path.isfile(meta_path):
        raise ValueError(f"token cache entry {entry!r} exists but has no meta.json, so it was not "
                         "written by lmjax; delete it and run again")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    dtype = np.dtype(meta["dtype"])
    train = _map(os.path.join(entry, "train.bin"), dtype, meta["n_tokens_train"])
    val = _map(os.path.join(entry, "val.bin"), dtype, meta["n_tokens_val"])
    return TokenData(train=train, val=val, meta={**meta, "dir": entry, "cached": cached})


def _map(path: str, dtype: np.dtype, n: int) -> np.ndarray:
    size = os.path.getsize(path)
    if size != n * dtype.itemsize:
        raise ValueError(f"token file {path!r} has {size} bytes, expected {n} {dtype.name} tokens; "
                         "the cache entry is corrupt: delete its directory and run again")
    if n == 0:
        return np.zeros(0, dtype=dtype)  # mmap can't map an empty file
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))
