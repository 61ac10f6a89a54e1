"""Tokenize many documents fast: whole batches through the tokenizer's batch API, spread over
worker processes, results back in order.

A chunk of documents becomes one stream (each document's ids, then EOS) in the cache's
dtype, so a worker returns one compact array per chunk. Workers are forked (Linux only), as
PyTorch's and datasets' data workers are: spawned ones would re-run the user's main script,
and a forked one inherits the tokenizer as it is. A worker touches only the tokenizer and
NumPy, never JAX, so JAX's threads in the parent are no hazard. One worker, a small job or
another OS tokenizes in this process.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import sys
import warnings
from typing import Iterable, Iterator

import numpy as np

from lmjax.errors import LmjaxError

PARALLEL_MIN_BYTES = 4_000_000  # below this, starting workers costs more than it saves
_IN_FLIGHT_PER_WORKER = 3  # chunks queued per worker: enough to keep it busy, bounded memory


def encode_batch(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Each text's ids (int64), by the tokenizer's batch API where it has one."""
    batch = getattr(tokenizer, "encode_batch", None)
    if batch is not None:
        return batch(texts)
    encode = getattr(tokenizer, "encode_array", None) or (
        lambda text: np.asarray(tokenizer.encode(text), dtype=np.int64))
    return [encode(t) for t in texts]


def encode_stream(tokenizer, texts: list[str], dtype) -> np.ndarray:
    """The documents' ids, each followed by EOS (it marks document boundaries for the model),
    as one ``dtype`` array; an id outside the vocabulary is an error."""
    eos = tokenizer.eos_id
    parts: list[np.ndarray] = []
    for ids in encode_batch(tokenizer, texts):
        parts.append(np.asarray(ids, dtype=np.int64))
        if eos is not None:
            parts.append(np.array([eos], dtype=np.int64))
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    vocab_size = int(tokenizer.vocab_size)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise LmjaxError(f"tokenizer produced id {bad}, outside its vocabulary [0, {vocab_size})")
    return ids.astype(dtype)


_worker_tokenizer = None  # set before the fork; the workers inherit it


def _work(texts: list[str], dtype: str) -> np.ndarray:
    return encode_stream(_worker_tokenizer, texts, np.dtype(dtype))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Encoder:
    """``map(items)``: for each ``(chunk, tag)`` (a chunk is a list of texts, or an array of
    ready ids that passes through), ``(token array, tag)``, in order. Use as a context
    manager; it owns its workers."""

    def __init__(self, tokenizer, dtype, *, workers: int = 0, total_bytes: int = 0):
        """workers: processes to tokenize in (0 = one per available core); total_bytes: the
        job's size, to decide whether workers are worth starting."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise LmjaxError(f"tokenize workers must be an integer >= 0 (0 = one per core), got {workers!r}")
        self.tokenizer, self.dtype = tokenizer, np.dtype(dtype)
        self.workers = workers or available_cores()
        if self.workers < 2 or total_bytes < PARALLEL_MIN_BYTES or not sys.platform.startswith("linux"):
            self.workers = 1
        self._pool = None

    def __enter__(self) -> "Encoder":
        global _worker_tokenizer
        if self.workers > 1:
            _worker_tokenizer = self.tokenizer
            # Each worker is one core: its tokenizer must not start a thread pool of its own
            # (tokenizers' Rust threads, set before the fork so it does not warn about one).
            was = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")  # JAX's; see above
                    self._pool = multiprocessing.get_context("fork").Pool(self.workers)
            finally:
                if was is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM")
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = was
        return self

    def __exit__(self, *exc) -> None:
        global _worker_tokenizer
        if self._pool is not None:
            self._pool.terminate()  # results are all taken (or an error is on its way): nothing to wait for
            self._pool.join()
            _worker_tokenizer = None

    def map(self, items: Iterable[tuple[list[str] | np.ndarray, object]]) -> Iterator[tuple[np.ndarray, object]]:
        if self._pool is None:
            for chunk, tag in items:
                yield (chunk if isinstance(chunk, np.ndarray) else encode_stream(self.tokenizer, chunk, self.dtype)), tag
            return
        pending: collections.deque = collections.deque()
        for chunk, tag in items:
            pending.append((chunk if isinstance(chunk, np.ndarray) else
                            self._pool.apply_async(_work, (chunk, self.dtype.name)), tag))
            while len(pending) > self.workers * _IN_FLIGHT_PER_WORKER:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())


def _result(item, tag) -> tuple[np.ndarray, object]:
    return (item if isinstance(item, np.ndarray) else item.get()), tag
