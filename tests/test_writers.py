"""Metric writers: JSONL lines survive and append; TensorBoard's own reader reads our event files."""
import glob
import json
import math
import os

import numpy as np
import pytest

from lmjax.train.writers import JsonlWriter, MultiWriter, TensorBoardWriter, crc32c, tfrecord

try:  # tensorboard (a test extra) only reads our files back; the writers never import it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
except ImportError:
    EventAccumulator = None
needs_tb = pytest.mark.skipif(EventAccumulator is None, reason="tensorboard not installed")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_crc32c_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    # RFC 3720 (iSCSI) appendix B.4 test vectors.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


@needs_tb
def test_tfrecord_framing_matches_tensorboard():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    data = b"hello event"
    rec = tfrecord(data)
    assert len(rec) == 8 + 4 + len(data) + 4
    assert int.from_bytes(rec[:8], "little") == len(data)
    assert int.from_bytes(rec[8:12], "little") == masked_crc32c(rec[:8])
    assert rec[12:-4] == data
    assert int.from_bytes(rec[-4:], "little") == masked_crc32c(data)


def test_jsonl_lines_flushed_appended_and_nonfinite(tmp_path):
    path = str(tmp_path / "logs" / "metrics.jsonl")
    w = JsonlWriter(path)
    w.write_scalars(1, {"loss": 2.5, "tokens": np.int64(1024), "lr": np.float32(1e-3)})
    # Flushed on write: readable before close (a crash here would keep the line).
    (line,) = read_jsonl(path)
    assert line["step"] == 1 and line["loss"] == 2.5 and line["tokens"] == 1024
    assert isinstance(line["tokens"], int) and line["lr"] == pytest.approx(1e-3)
    assert abs(line["time"] - __import__("time").time()) < 60
    w.write_scalars(2, {"loss": float("nan"), "grad_norm": float("inf"), "x": -math.inf})
    w.close()
    # Reopening appends (resume) instead of truncating.
    w = JsonlWriter(path)
    w.write_scalars(3, {"loss": 1.0})
    w.close()
    lines = read_jsonl(path)
    assert [l["step"] for l in lines] == [1, 2, 3]
    assert lines[1]["loss"] is None and lines[1]["grad_norm"] is None and lines[1]["x"] is None
    with open(path) as f:
        assert "NaN" not in f.read()  # strict JSON, no nan literals


def test_jsonl_reserved_key_is_an_error(tmp_path):
    w = JsonlWriter(str(tmp_path / "m.jsonl"))
    with pytest.raises(ValueError, match="step"):
        w.write_scalars(1, {"step": 3.0})
    w.close()


@needs_tb
def test_tensorboard_event_file_reads_back(tmp_path):
    logdir = str(tmp_path / "tb")
    w = TensorBoardWriter(logdir)
    assert os.path.basename(w.path).startswith("events.out.tfevents.")
    written = {}
    for step in [0, 1, 10, 2**40]:
        scalars = {"train/loss": 3.0 / (step + 1), "train/lr": 1e-3 * step, "eval/ppl": np.float32(17.25)}
        w.write_scalars(step, scalars)
        written[step] = scalars
    w.write_scalars(5, {"weird": float("nan"), "big": float("inf")})  # must not crash
    w.close()

    acc = EventAccumulator(logdir)
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr", "eval/ppl", "weird", "big"}
    for tag in ["train/loss", "train/lr", "eval/ppl"]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(written)
        for e in events:
            assert e.value == np.float32(written[e.step][tag])  # exact at float32 precision
    assert math.isnan(acc.Scalars("weird")[0].value) and acc.Scalars("big")[0].value == math.inf

    # The raw records parse as Event protos; the first one declares the file version.
    (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    events = [event_pb2.Event.FromString(r) for r in RawEventFileLoader(path).Load()]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 0 and events[1].wall_time > 1e9
    assert [v.tag for v in events[1].summary.value] == ["train/loss", "train/lr", "eval/ppl"]
    assert len(events) == 6


@needs_tb
def test_multiwriter_fans_out(tmp_path):
    jw = JsonlWriter(str(tmp_path / "m.jsonl"))
    tw = TensorBoardWriter(str(tmp_path / "tb"))
    mw = MultiWriter([jw, tw])
    mw.write_scalars(4, {"loss": 0.5})
    mw.flush()
    mw.close()
    assert read_jsonl(str(tmp_path / "m.jsonl"))[0]["loss"] == 0.5
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(4, 0.5)]
