"""Batches of (inputs, targets) windows from a 1-D token stream.

Training batches are a pure function of (seed, step, process index): there is no
iterator state to save, so a run resumed at step s sees exactly the data an uninterrupted
run saw, on any number of hosts. Eval batches walk the stream in order.

Packed documents (``eos`` given, ``data.documents``): rows are still windows cut from the
stream, and each also carries its documents' ids. A document starts after each
end-of-document token (the EOS the tokenizer writes after every text document, or a
``.bin`` shard's own separator), so the EOS ends the document it closes: ``segment_ids``
numbers the inputs' documents within the row (0, 1, ...) and ``target_segment_ids`` the
targets'. They differ only where the input is an EOS, whose target opens the next
document: the loss leaves those positions out (lmjax.train.loss), so a row's loss is the
sum of its documents' own losses.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from lmjax.errors import LmjaxError


def _check_positive(**kw) -> None:
    for name, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise LmjaxError(f"{name} must be a positive integer, got {v!r}")


def check_windows(tokens, seq_len: int, what: str) -> None:
    """A 1-D token array holding at least one window of seq_len + 1 tokens, or an error naming ``what``."""
    if np.ndim(tokens) != 1:
        raise LmjaxError(f"{what} must be a 1-D token array, got shape {np.shape(tokens)}")
    if len(tokens) < seq_len + 1:
        raise LmjaxError(f"{what} has {len(tokens)} tokens, fewer than one window of seq_len + 1 = "
                         f"{seq_len + 1}; use more data, a larger split, or a shorter seq_len")


def windows(tokens, offsets: np.ndarray, seq_len: int) -> np.ndarray:
    """int32 rows ``tokens[o : o + seq_len + 1]`` for each offset o (one gather)."""
    if isinstance(tokens, np.ndarray):
        rows = np.asarray(tokens[offsets[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
    else:  # a token file read by ranges (e.g. on a bucket): one contiguous read per row
        rows = np.zeros((len(offsets), seq_len + 1), np.int32)
        for i, o in enumerate(offsets):
            rows[i] = tokens[int(o):int(o) + seq_len + 1]
    return rows


def inputs_targets(rows: np.ndarray, eos: int | None = None) -> dict[str, np.ndarray]:
    """{"inputs", "targets"} (the inputs shifted by one), with the documents' ids if `eos` is given."""
    batch = {"inputs": rows[:, :-1], "targets": rows[:, 1:]}
    if eos is not None:
        ids = document_ids(rows, eos)
        batch.update(segment_ids=ids[:, :-1], target_segment_ids=ids[:, 1:])
    return batch


def document_ids(rows: np.ndarray, eos: int) -> np.ndarray:
    """int32 [n, len]: each token's document within its row, 0 first, one more after each `eos`."""
    ends = np.cumsum(rows == eos, axis=1, dtype=np.int32)
    return np.concatenate([np.zeros_like(ends[:, :1]), ends[:, :-1]], axis=1)


def train_offsets(n_tokens: int, *, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
    """The global batch's window start offsets, uniform in [0, n_tokens - seq_len - 1].

    Philox is counter-based: keying it by (seed, step) gives each step an independent stream
    without having generated the steps before it.
    """
    for name, v in (("seed", seed), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2**64:
            raise LmjaxError(f"{name} must be an integer in [0, 2**64), got {v!r}")
    rng = np.random.Generator(np.random.Philox(key=np.array([seed, step], dtype=np.uint64)))
    return rng.integers(0, n_tokens - seq_len, size=batch_size, dtype=np.int64)


def train_batch(tokens: np.ndarray, *, seed: int, step: int, batch_size: int, seq_len: int,
                process_index: int = 0, process_count: int = 1, eos: int | None = None) -> dict[str, np.ndarray]:
    """This process's rows of the global training batch for ``step``.

    The global batch is ``batch_size`` random windows; process ``i`` of ``n`` gets the
    contiguous rows ``[i * batch_size // n, (i + 1) * batch_size // n)``. Returns
    ``{"inputs", "targets"}``, int32 ``[batch_size // process_count, seq_len]`` (with ``eos``
    also the documents' ids: see the module docstring).
    """
    _check_positive(batch_size=batch_size, seq_len=seq_len, process_count=process_count)
    if batch_size % process_count:
        raise LmjaxError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    if isinstance(process_index, bool) or not isinstance(process_index, (int, np.integer)) \
            or not 0 <= process_index < process_count:
        raise LmjaxError(f"process_index must be in [0, {process_count}), got {process_index!r}")
    rows = batch_size // process_count
    return train_rows(tokens, seed=seed, step=step, batch_size=batch_size, seq_len=seq_len,
                      start=process_index * rows, stop=(process_index + 1) * rows, eos=eos)


def train_rows(tokens, *, seed: int, step: int, batch_size: int, seq_len: int,
               start: int, stop: int, eos: int | None = None) -> dict[str, np.ndarray]:
    """Rows ``[start, stop)`` of the global training batch for ``step``, reading only those windows.

    A multi-process run asks for the rows its own devices hold (see
    ``lmjax.sharding.assemble_batch``), whatever the mesh.
    """
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if not 0 <= start <= stop <= batch_size:
        raise LmjaxError(f"rows [{start}, {stop}) are not inside the batch of {batch_size}")
    check_windows(tokens, seq_len, "train tokens")
    offsets = train_offsets(len(tokens), seed=seed, step=step, batch_size=batch_size, seq_len=seq_len)
    return inputs_targets(windows(tokens, offsets[start:stop], seq_len), eos)


def num_eval_batches(n_tokens: int, *, batch_size: int, seq_len: int, max_batches: int | None = None) -> int:
    """How many batches :func:`eval_batches` yields for a stream of ``n_tokens``."""
    n = ((n_tokens - 1) // seq_len) // batch_size
    return n if max_batches is None else min(n, max_batches)


def eval_batches(tokens: np.ndarray, *, batch_size: int, seq_len: int,
                 max_batches: int | None = None, eos: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive windows over ``tokens``, in order: window k has inputs
    ``tokens[k*seq_len : (k+1)*seq_len]`` (input positions never overlap, so every token
    but the first is predicted exactly once). Full batches only; at most ``max_batches``.
    With ``eos``, also the documents' ids (see the module docstring).
    """
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if max_batches is not None and (isinstance(max_batches, bool)
                                    or not isinstance(max_batches, (int, np.integer)) or max_batches < 0):
        raise LmjaxError(f"max_batches must be None or a non-negative integer, got {max_batches!r}")
    check_windows(tokens, seq_len, "eval tokens")
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < batch_size:
        # Yielding nothing would silently skip evaluation; say what to change instead.
        raise LmjaxError(f"eval tokens ({len(tokens)}) hold only {n_windows} windows of seq_len + 1 = "
                         f"{seq_len + 1}, fewer than one batch of batch_size {batch_size}; "
                         "use a smaller eval batch size or seq_len, or a larger val split")
    n_batches = num_eval_batches(len(tokens), batch_size=batch_size, seq_len=seq_len, max_batches=max_batches)
    window_starts = np.arange(batch_size, dtype=np.int64) * seq_len
    for b in range(n_batches):
        yield inputs_targets(windows(tokens, b * batch_size * seq_len + window_starts, seq_len), eos)
