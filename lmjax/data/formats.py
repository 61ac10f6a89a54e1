"""Record formats: read a corpus file as a stream of documents, or as pre-tokenized ids.

By name:
- ``*.jsonl``, ``*.json`` (JSON lines, or one JSON array of records when the file starts
  with ``[``), each optionally ``.gz`` or ``.zst`` compressed: one record per document, its
  text in the field ``text_key``;
- ``*.parquet``: one row per document, the column ``text_key``;
- ``*.arrow``: an Arrow IPC stream or file (what ``datasets.save_to_disk`` writes), rows as
  for parquet;
- ``*.bin``: an llm.c / modded-nanogpt token shard (a 256 x int32 header: magic 20240520
  for uint16 tokens or 20240801 for uint32, version, token count; then the tokens), which
  skips tokenization;
- anything else: the whole file is one document (``.gz`` / ``.zst`` decompressed first).

A malformed record (bad JSON, a missing or non-string text field, a truncated compressed
stream, a token shard whose header is wrong) is a :class:`MalformedRecordError` naming the
file and the record number (1-based), or, with ``skip=True``, is skipped and counted.
pyarrow and zstandard are runtime dependencies, imported by the readers that need them.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import itertools
import json
import os
import zlib
from typing import Iterator

import numpy as np
from etils import epath

from lmjax.errors import LmjaxError

TEXT_KEY = "text"
BIN_MAGIC = {20240520: np.dtype("<u2"), 20240801: np.dtype("<u4")}  # llm.c: uint16 (GPT-2), uint32
BIN_HEADER_INTS = 256
BIN_VERSION = 1
_ARROW_BATCH_ROWS = 1024
_RECORD_FORMATS = ("jsonl", "parquet", "arrow")


class MalformedRecordError(LmjaxError):
    """A record (or a whole token shard) that cannot be read as a document."""


def file_format(path: str) -> str:
    """``jsonl`` (also JSON arrays), ``parquet``, ``arrow``, ``bin`` (token shard) or ``text``."""
    name = os.path.basename(os.fspath(path)).lower()
    for ext in (".gz", ".zst"):
        name = name.removesuffix(ext)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    for fmt in ("parquet", "arrow", "bin"):
        if name.endswith("." + fmt):
            return fmt
    return "text"


def has_records(path: str) -> bool:
    """Whether the file's documents are records with a text field (so ``text_key`` matters)."""
    return file_format(path) in _RECORD_FORMATS


@dataclasses.dataclass
class Skipped:
    """Malformed records skipped (``skip=True``), and the first one's reason, for the report."""

    count: int = 0
    first: str = ""

    def add(self, reason: str) -> None:
        self.count += 1
        self.first = self.first or reason


def _open(path: str):
    return open(path, "rb") if "://" not in path else epath.Path(path).open("rb")


class _ZstdFrames(io.RawIOBase):
    """A zstd stream decompressed frame after frame (pzstd and others write several), which
    raises EOFError when the input ends inside a frame: a truncated file must not read as a
    shorter, valid one."""

    def __init__(self, raw):
        import zstandard

        self._raw, self._new = raw, zstandard.ZstdDecompressor().decompressobj
        self._obj, self._pending, self._started = self._new(), b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._started and not self._obj.eof:
                    raise EOFError("zstd stream ended inside a frame")
                return 0
            self._started = True
            while chunk:
                if self._obj.eof:  # the next frame
                    self._obj = self._new()
                self._pending += self._obj.decompress(chunk)
                chunk = self._obj.unused_data if self._obj.eof else b""
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _decompressed(path: str, raw):
    """A buffered binary stream of the file's bytes, decompressed by its suffix."""
    lowered = path.lower()
    if lowered.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if lowered.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(raw), 1 << 16)
    return raw


# A truncated or corrupt compressed stream: gzip raises EOFError / BadGzipFile (an OSError) /
# zlib.error, _ZstdFrames EOFError, zstandard ZstdError.
_TRUNCATED = (EOFError, zlib.error, OSError)


def _stream_errors(path: str) -> tuple:
    if path.lower().endswith(".zst"):
        import zstandard

        return _TRUNCATED + (zstandard.ZstdError,)
    return _TRUNCATED


def _text_of(record, text_key: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, expected an object with a {text_key!r} field")
    if text_key not in record:
        keys = ", ".join(map(repr, list(record)[:8])) or "none"
        raise ValueError(f"no {text_key!r} field (its fields: {keys}); set data.text_key")
    text = record[text_key]
    if not isinstance(text, str):
        raise ValueError(f"field {text_key!r} is {type(text).__name__}, expected a string")
    return text


def _json_records(path: str, text_key: str) -> Iterator[str | ValueError]:
    """Documents of a JSON-lines file (or JSON array); a ValueError in place of a bad record.
    A truncated compressed stream yields one ValueError and ends the file."""
    with _open(path) as raw:
        stream = _decompressed(path, raw)
        n = 0
        try:
            first = b""
            while not first.strip():  # blank lines before the first record
                first = stream.readline()
                if not first:
                    return
            if first.lstrip().startswith(b"["):  # one JSON array: parsed whole, records are its elements
                try:
                    records = json.loads(first + stream.read())
                except json.JSONDecodeError as e:
                    yield ValueError(f"not a valid JSON array ({e})")
                    return
                for record in records:
                    try:
                        yield _text_of(record, text_key)
                    except ValueError as e:
                        yield e
                return
            for line in itertools.chain([first], stream):
                n += 1
                if not line.strip():
                    n -= 1  # blank lines are not records
                    continue
                try:
                    yield _text_of(json.loads(line), text_key)
                except json.JSONDecodeError as e:
                    yield ValueError(f"not valid JSON ({e.msg} at column {e.colno})")
                except UnicodeDecodeError as e:
                    yield ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})")
                except ValueError as e:
                    yield e
        except _stream_errors(path) as e:
            yield ValueError(f"the compressed stream is truncated or corrupt after record {n} ({e})")


def _arrow_batches(path: str, text_key: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file_format(path) == "parquet":
        f = pq.ParquetFile(_open(path))
        names = f.schema_arrow.names
        if text_key not in names:
            raise ValueError(f"no column {text_key!r} (columns: {', '.join(names)}); set data.text_key")
        yield from f.iter_batches(batch_size=_ARROW_BATCH_ROWS, columns=[text_key])
        return
    with _open(path) as raw:
        data = raw.read() if "://" in path else None
        source = pa.BufferReader(data) if data is not None else pa.memory_map(path)
        try:
            reader = pa.ipc.open_stream(source)  # datasets.save_to_disk writes the stream format
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            reader = (reader.get_batch(i) for i in range(reader.num_record_batches))
        for batch in reader:
            if text_key not in batch.schema.names:
                raise ValueError(f"no column {text_key!r} (columns: {', '.join(batch.schema.names)}); "
                                 "set data.text_key")
            yield batch.select([text_key])


def _table_records(path: str, text_key: str) -> Iterator[str | ValueError]:
    """Documents of a parquet or Arrow file, one per row of the ``text_key`` column."""
    import pyarrow as pa

    batches = _arrow_batches(path, text_key)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except ValueError as e:  # a missing column is wrong for every row: one error for the file
            yield e
            return
        except (pa.ArrowException, OSError) as e:
            yield ValueError(f"not readable as {file_format(path)} ({e})")
            return
        column = batch.column(0)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            yield ValueError(f"column {text_key!r} holds {column.type}, expected strings")
            return
        for text in column.to_pylist():
            yield text if text is not None else ValueError(f"field {text_key!r} is null, expected a string")


def read_token_shard(path: str) -> np.ndarray:
    """The tokens of an llm.c token shard (read-only memmap locally), header checked."""
    with _open(path) as f:
        head = f.read(BIN_HEADER_INTS * 4)
    header = np.frombuffer(head[:len(head) // 4 * 4], dtype="<i4")
    if len(header) < 3:
        raise MalformedRecordError(f"{path}: token shard header is {len(header) * 4} bytes, "
                                   f"expected {BIN_HEADER_INTS * 4} (256 int32s, llm.c's format)")
    magic, version, n = (int(x) for x in header[:3])
    if magic not in BIN_MAGIC:
        raise MalformedRecordError(f"{path}: token shard magic {magic} is not llm.c's 20240520 (uint16 tokens) "
                                   f"or 20240801 (uint32 tokens)")
    dtype = BIN_MAGIC[magic]
    size = os.path.getsize(path) if "://" not in path else epath.Path(path).stat().length
    payload = size - BIN_HEADER_INTS * 4
    if n < 0 or payload != n * dtype.itemsize or len(header) < BIN_HEADER_INTS:
        raise MalformedRecordError(f"{path}: token shard header says {n} {dtype.name} tokens "
                                   f"({n * dtype.itemsize} bytes) but the file holds {max(payload, 0)} bytes after "
                                   f"the {BIN_HEADER_INTS * 4}-byte header")
    if version != BIN_VERSION:
        raise MalformedRecordError(f"{path}: token shard version {version}, expected {BIN_VERSION}")
    if n == 0:
        return np.zeros(0, dtype)
    if "://" in path:
        return np.frombuffer(epath.Path(path).read_bytes()[BIN_HEADER_INTS * 4:], dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=BIN_HEADER_INTS * 4, shape=(n,))


def write_token_shard(path: str, tokens) -> None:
    """Write ``tokens`` as an llm.c token shard: uint16 when every id fits, else uint32."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**32):
        raise LmjaxError(f"token ids must be in [0, 2**32) for a token shard, got [{tokens.min()}, {tokens.max()}]")
    small = not tokens.size or tokens.max() < 2**16
    magic = next(m for m, d in BIN_MAGIC.items() if d == np.dtype("<u2" if small else "<u4"))
    header = np.zeros(BIN_HEADER_INTS, dtype="<i4")
    header[:3] = magic, BIN_VERSION, tokens.size
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(BIN_MAGIC[magic]).tobytes())
    os.replace(tmp, path)  # a reader never sees a half-written shard


def documents(path: str, *, text_key: str = TEXT_KEY, skip: bool = False,
              skipped: Skipped | None = None) -> Iterator[str]:
    """The documents (texts) of one file, in order; malformed records raise or are counted."""
    fmt = file_format(path)
    if fmt == "bin":
        raise LmjaxError(f"{path} is a token shard: it holds ids, not text (read_token_shard)")
    if fmt == "text":
        yield from _whole_file(path, skip, skipped)
        return
    records = _json_records(path, text_key) if fmt == "jsonl" else _table_records(path, text_key)
    for n, record in enumerate(records, start=1):
        if isinstance(record, ValueError):
            reason = f"{path}: record {n}: {record}"
            if not skip:
                raise MalformedRecordError(reason + " (data.skip_malformed=True skips such records)")
            if skipped is not None:
                skipped.add(reason)
            continue
        yield record


def _whole_file(path: str, skip: bool, skipped: Skipped | None) -> Iterator[str]:
    # Bytes are decoded as UTF-8 with replacement and without newline translation: the text is what is on disk.
    with _open(path) as raw:
        stream = _decompressed(path, raw)
        try:
            data = stream.read()
        except _stream_errors(path) as e:
            reason = f"{path}: record 1: the compressed stream is truncated or corrupt ({e})"
            if not skip:
                raise MalformedRecordError(reason + " (data.skip_malformed=True skips such records)") from None
            if skipped is not None:
                skipped.add(reason)
            return
    yield data.decode("utf-8", errors="replace")
