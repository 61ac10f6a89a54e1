"""Metric writers without TensorFlow: JSON lines, TensorBoard event files, and a fan-out.

Every writer has `write_scalars(step, scalars)`, `flush()` and `close()`. They write from
whichever process calls them; in multi-host runs only process 0 should (the loop's job).
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from typing import Mapping

import numpy as np


def _number(value):
    """A JSON-ready number: ints stay exact, everything else becomes a float; nan/inf -> None."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)  # also jax / numpy 0-d arrays
    return value if math.isfinite(value) else None


class JsonlWriter:
    """Appends `{"step": int, "time": unix float, **scalars}` as one JSON line per call.

    Each line is flushed as it is written, so a crashed run keeps every line; opening an
    existing file appends to it (a resumed run continues the same log). Non-finite values
    (nan, inf) are written as `null`: standard JSON has no nan, and null loads as NaN in pandas.
    """

    _RESERVED = ("step", "time")

    def __init__(self, path: str):
        self.path = path
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        clash = [k for k in scalars if k in self._RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} clash with the reserved keys {self._RESERVED}")
        record = {"step": int(step), "time": time.time()}
        record.update((str(k), _number(v)) for k, v in scalars.items())
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


# --- TensorBoard event files --------------------------------------------------------------
# An event file is a sequence of TFRecords, each holding one serialized `Event` protobuf.
# Both formats are simple enough to write by hand, which keeps TensorFlow out of lmjax.

def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):  # reflected Castagnoli polynomial
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing uses it."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """Frame `data` as one TFRecord: length, crc(length), data, crc(data)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _summary_value(tag: str, value: float) -> bytes:
    # Summary.Value: tag (1, string), simple_value (2, float32); nan/inf are valid float32.
    return _bytes_field(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", value)


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           summary: bytes | None = None) -> bytes:
    # Event: wall_time (1, double), step (2, int64), file_version (3, string), summary (5).
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode("utf-8"))
    if summary is not None:
        out += _bytes_field(5, summary)
    return out


class TensorBoardWriter:
    """Writes scalars to `logdir/events.out.tfevents.<time>.<host>`, readable by TensorBoard."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
        self._file = open(self.path, "ab")
        self._file.write(tfrecord(_event(now, 0, file_version="brain.Event:2")))
        self._file.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        summary = b"".join(_bytes_field(1, _summary_value(str(k), float(v))) for k, v in scalars.items())
        self._file.write(tfrecord(_event(time.time(), int(step), summary=summary)))
        self._file.flush()  # records are tiny; losing none on a crash is worth the syscall

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class MultiWriter:
    """Fans every call out to several writers."""

    def __init__(self, writers):
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()
