"""A run's metrics in its workdir: metrics.jsonl and TensorBoard event files (tb/).

The writers themselves (writers.py) know nothing of workdirs; this adds where the files
live, resuming (append, after dropping a line a killed run left half-written) and
buckets, whose objects cannot be appended to.
"""
from __future__ import annotations

import hashlib
import os
import shutil

from etils import epath

from lmjax.data.shards import is_local
from lmjax.train.workdir import METRICS, TENSORBOARD, open_workdir
from lmjax.train.writers import JsonlWriter, MultiWriter, TensorBoardWriter


class RunMetrics:
    """metrics.jsonl and TensorBoard files in the workdir.

    A workdir on a bucket (objects there can't be appended to) gets them through a local
    mirror under the token cache directory: existing metrics are fetched first, and the
    files are copied up at every checkpoint and at the end. A line that a killed run left
    half-written is dropped before the resumed run appends to the file.
    """

    def __init__(self, workdir, cache_dir: str):
        wd = open_workdir(workdir)
        self.remote = None if is_local(os.fspath(wd)) else wd.path
        local = os.fspath(wd) if self.remote is None else os.path.join(
            cache_dir, "workdirs", hashlib.sha256(wd.given.encode()).hexdigest()[:16])
        self.local = local
        if self.remote is not None:
            shutil.rmtree(local, ignore_errors=True)
            os.makedirs(local)
            if wd.metrics.exists():
                wd.metrics.copy(epath.Path(local) / METRICS)
        _drop_partial_line(os.path.join(local, METRICS))
        self._writer = MultiWriter([JsonlWriter(os.path.join(local, METRICS)),
                                    TensorBoardWriter(os.path.join(local, TENSORBOARD))])

    def write_scalars(self, step, scalars):
        self._writer.write_scalars(step, scalars)

    def flush(self):
        """Write out what is buffered (and, for a bucket workdir, copy the files up)."""
        self._writer.flush()
        if self.remote is None:
            return
        (self.remote / TENSORBOARD).mkdir(parents=True, exist_ok=True)
        (epath.Path(self.local) / METRICS).copy(self.remote / METRICS, overwrite=True)
        for f in (epath.Path(self.local) / TENSORBOARD).iterdir():
            f.copy(self.remote / TENSORBOARD / f.name, overwrite=True)

    def close(self):
        self.flush()
        self._writer.close()


def _drop_partial_line(path: str) -> None:
    """Cut a last line without its newline (a write that was killed) off a JSON-lines file."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if not size:
            return
        start = max(size - 65536, 0)  # metric lines are short: the tail holds the last newline
        f.seek(start)
        tail = f.read()
        cut = tail.rfind(b"\n")
        if not tail.endswith(b"\n") and (cut >= 0 or start == 0):
            f.truncate(start + cut + 1)
