"""Reading and writing the safetensors format with NumPy only (no PyTorch, no full copies).

A safetensors file is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` and
then the raw row-major tensor bytes. Reading copies only the block a caller asks for
(one device's shard of one tensor): a block that is one run of bytes (whole tensors, row
ranges) with a single positioned read straight into its array, anything else (column
slices) out of a memory map whose pages are released right after, so the resident memory
of an import is the imported parameters plus about one tensor, never the checkpoint.
Writing streams tensor after tensor, so an export holds one tensor on the host at a time.

A model split over several files comes with ``model.safetensors.index.json``
(``{"weight_map": {name: file}}``); ``Checkpoint`` reads both layouts.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from lmjax.errors import LmjaxError, MissingFileError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 << 20  # the reference implementation's limit as well


def dtype_name(dtype) -> str:
    """The safetensors name ('F32', 'BF16', ...) of a NumPy/JAX dtype."""
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise LmjaxError(f"dtype {dtype} has no safetensors equivalent") from None


class TensorInfo:
    """Where one tensor lives: file, dtype, shape and byte range inside the data section."""

    __slots__ = ("file", "dtype", "shape", "begin", "end")

    def __init__(self, file: str, dtype: np.dtype, shape: tuple[int, ...], begin: int, end: int):
        self.file, self.dtype, self.shape, self.begin, self.end = file, dtype, shape, begin, end


def read_header(path: str) -> tuple[dict[str, TensorInfo], int, dict]:
    """(tensors, byte offset of the data section, __metadata__) of one file; reads only the
    header. A file that is not safetensors, or is shorter than its header says (truncated),
    is an LmjaxError naming the file (and the first tensor that does not fit)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise LmjaxError(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise LmjaxError(f"{path}: truncated or not a safetensors file (its header length {n} exceeds "
                             f"the {size - 8} bytes that follow)")
        try:
            header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as e:
            raise LmjaxError(f"{path}: corrupt safetensors header ({e})") from None
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    data_size = size - 8 - n
    for name, entry in header.items():
        try:
            kind, shape = entry["dtype"], tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise LmjaxError(f"{path}: corrupt safetensors header: tensor {name!r} has no valid dtype, shape "
                             "and data_offsets") from None
        if kind not in DTYPES:
            raise LmjaxError(f"{path}: tensor {name!r} has dtype {kind}, which lmjax cannot read")
        dtype = DTYPES[kind]
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) or begin < 0:
            raise LmjaxError(f"{path}: tensor {name!r} has a byte range {begin}..{end} that does not "
                             f"match its shape {list(shape)} and dtype {kind} (corrupt header)")
        if end > data_size:
            raise LmjaxError(f"{path}: truncated: tensor {name!r} ends at byte {8 + n + end}, but the file has "
                             f"{size} bytes (copy or download it again)")
        tensors[name] = TensorInfo(path, dtype, shape, begin, end)
    return tensors, 8 + n, metadata


class Checkpoint:
    """The tensors of a Hugging Face model directory, single-file or sharded, by name.

    ``info(name)`` costs nothing; ``read(name, index)`` copies one block out of the file;
    ``view(name)`` is a read-only memory-mapped array (no bytes are read until it is
    indexed); ``release(name)`` returns its mapped pages to the OS.
    """

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, INDEX_FILE)
        single = os.path.join(directory, SINGLE_FILE)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise LmjaxError(f"{index} has no weight_map")
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            weight_map, files = None, [SINGLE_FILE]
        else:
            found = sorted(n for n in os.listdir(directory) if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
            hint = (f" (it has {found}: PyTorch pickles, which lmjax does not read; re-save the model with "
                    "save_pretrained(..., safe_serialization=True))") if found else ""
            raise MissingFileError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found{hint}")
        self.tensors: dict[str, TensorInfo] = {}
        self._data_start: dict[str, int] = {}
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise MissingFileError(f"{INDEX_FILE} lists {name}, which is not in {directory}")
            tensors, start, _ = read_header(path)
            self._data_start[path] = start
            self.tensors.update(tensors)
        if weight_map is not None:
            missing = sorted(n for n in weight_map if n not in self.tensors)
            if missing:
                raise LmjaxError(f"{INDEX_FILE} lists tensors no shard holds: {missing[:5]}")
        self._maps: dict[str, mmap.mmap] = {}
        self._fds: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def _map(self, path: str) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[path]

    def view(self, name: str) -> np.ndarray:
        """The tensor as a read-only array over the mapped file: index it to copy what you need."""
        t = self.tensors[name]
        start = self._data_start[t.file] + t.begin
        count = int(np.prod(t.shape, dtype=np.int64))
        return np.frombuffer(self._map(t.file), dtype=t.dtype, count=count, offset=start).reshape(t.shape)

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """A copy of `view(name)[index]` (unit-step slices, one per axis).

        A block that is contiguous in the file (a range of rows, or of the outermost split
        axis) is read with one positioned read straight into the result: no page faults
        and no pages left mapped. Other blocks (column slices) are gathered from the map.
        """
        t = self.tensors[name]
        index = tuple(index) + tuple(slice(0, n) for n in t.shape[len(index):])
        shape = tuple(s.stop - s.start for s in index)
        if not _contiguous(index, t.shape):
            out = np.array(self.view(name)[index])
            self.release(name)
            return out
        out = np.empty(shape, t.dtype)
        if out.size == 0:
            return out
        strides = np.cumprod((1,) + t.shape[:0:-1])[::-1]  # elements per step along each axis
        first = int(sum(s.start * int(st) for s, st in zip(index, strides)))
        offset = self._data_start[t.file] + t.begin + first * t.dtype.itemsize
        buf, done = out.reshape(-1).view(np.uint8), 0
        fd = self._fd(t.file)
        while done < buf.size:
            n = os.preadv(fd, [buf[done:]], offset + done)
            if n <= 0:
                raise LmjaxError(f"{t.file}: unexpected end of file reading tensor {name!r}")
            done += n
        return out

    def _fd(self, path: str) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def release(self, name: str) -> None:
        """Drop the tensor's file pages from this process's resident memory (a hint; data stays valid)."""
        t = self.tensors[name]
        mm = self._maps.get(t.file)
        if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = (self._data_start[t.file] + t.begin) // page * page
        end = self._data_start[t.file] + t.end
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
        maps, self._maps = self._maps, {}
        for mm in maps.values():
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere; the GC unmaps it later
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _contiguous(index: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """Whether a block of a row-major array is one run of bytes: after the first axis the
    block spans more than one element of, every axis must be taken whole."""
    spanning = False
    for s, n in zip(index, shape):
        if spanning and (s.start, s.stop) != (0, n):
            return False
        spanning = spanning or s.stop - s.start > 1
    return True


def write_file(path: str, entries: Iterable[tuple[str, tuple[int, ...], np.dtype]],
               produce: Callable[[str], np.ndarray], metadata: dict | None = None) -> None:
    """Write a safetensors file tensor by tensor.

    `entries` are (name, shape, dtype) known in advance (they make the header);
    `produce(name)` returns each tensor's array when its turn comes, so only one tensor is
    on the host at a time. Shapes and dtypes are checked against the header.
    """
    entries = list(entries)
    header, offset = {}, 0
    for name, shape, dtype in entries:
        size = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = {"__metadata__": {k: str(v) for k, v in (metadata or {"format": "pt"}).items()}, **header}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in entries:
            array = np.ascontiguousarray(produce(name))
            if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
                raise LmjaxError(f"tensor {name}: produced {array.shape} {array.dtype}, header says "
                                 f"{tuple(shape)} {np.dtype(dtype)}")
            f.write(array.reshape(-1).view(np.uint8).data)  # raw bytes, any dtype (bfloat16 too)


def save_arrays(path: str, arrays: dict, metadata: dict | None = None) -> None:
    """Write {name: array} as one safetensors file, whole or not at all (a temporary name,
    then a rename)."""
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write_file(tmp, [(n, a.shape, a.dtype) for n, a in arrays.items()], arrays.__getitem__, metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_arrays(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """({name: array}, __metadata__) of one safetensors file, read whole."""
    tensors, data_start, metadata = read_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, info in tensors.items():
            f.seek(data_start + info.begin)
            out[name] = np.frombuffer(f.read(info.end - info.begin), dtype=info.dtype).reshape(info.shape).copy()
    return out, metadata
