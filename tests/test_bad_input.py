"""Bad input to `explain`, `convert` and `scaling fit`: one line naming what was wrong and
what is allowed (exit code 2), before any work. The end-to-end cases that need a trained
or an imported workdir are in test_explain_html.py and test_hf.py."""
from __future__ import annotations

import csv
import re
import json
import struct

import numpy as np
import pytest

from lmjax.commands import main
from lmjax.data.tokenizers import ByteTokenizer
from lmjax.errors import LmjaxError
from lmjax.data.safetensors_io import Checkpoint, read_header, write_file
from lmjax.interp.report import explain


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lmjax {command}: error: "), err
    return lines[0]


# ---------------------------------------------------------------- explain, before any work


class _Cfg:
    max_len = 8


class NoModel:
    """Only `cfg.max_len`: explain() touching anything else (compiling, running) fails the test
    with an AttributeError, so each LmjaxError below is raised before any work."""

    cfg = _Cfg()


class NoBosTokenizer(ByteTokenizer):
    bos_id = None


@pytest.mark.parametrize("tokenizer, kwargs, message", [
    (ByteTokenizer(), dict(prompt="12345678"), r"--prompt is 9 tokens \(BOS included\), longer than the model's "
                                               r"context of 8"),
    (NoBosTokenizer(), dict(prompt=""), "--prompt is empty and the tokenizer has no BOS token"),
    (ByteTokenizer(), dict(prompt="ab", target="x", contrast="x"), r"the target and the contrast are the same token "
                                                                   r"\('x', id 120\)"),
    (ByteTokenizer(), dict(prompt="ab", target="xy", contrast="xz"), "same token"),  # each one's first token
    (ByteTokenizer(), dict(prompt="ab", corrupt="abc"), "the corrupted prompt is 4 tokens and the prompt 3"),
])
def test_explain_rejects_bad_input_before_any_work(tokenizer, kwargs, message):
    with pytest.raises(LmjaxError, match=message):
        explain(NoModel(), None, tokenizer, **kwargs)


def test_an_empty_prompt_with_bos_and_a_full_context_prompt_pass_the_checks():
    for tokenizer, prompt in ((ByteTokenizer(), ""), (NoBosTokenizer(), "12345678"), (ByteTokenizer(), "1234567")):
        with pytest.raises(AttributeError):  # past the checks: the stub model cannot run
            explain(NoModel(), None, tokenizer, prompt)


# ---------------------------------------------------------------- scaling fit on bad CSVs


def _csv(path, rows, header=("N", "D", "loss")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return str(path)


GOOD = [(1e6 * k, 2e7 * k, 3.0 - 0.1 * k) for k in range(1, 9)]


@pytest.mark.parametrize("rows, message", [
    (GOOD[:3] + [(4e6, 8e7, "nan")] + GOOD[4:], r"column 'loss', row 4 \(line 5\) is 'nan', not finite"),
    (GOOD[:1] + [("inf", 4e7, 2.8)] + GOOD[2:], r"column 'N', row 2 \(line 3\) is 'inf', not finite"),
    (GOOD[:5] + [(6e6, "-Infinity", 2.4)] + GOOD[6:], r"column 'D', row 6 \(line 7\) is '-Infinity', not finite"),
    (GOOD[:2] + [(3e6, "", 2.7)] + GOOD[3:], r"column 'D', row 3 \(line 4\) is empty"),
    ([], "the CSV has a header but no rows"),
])
def test_scaling_fit_names_the_column_and_row_of_a_bad_value(tmp_path, capsys, rows, message):
    out = tmp_path / "fit.json"
    path = _csv(tmp_path / "runs.csv", rows)
    assert main(["scaling", "fit", path, "--approach", "3", "--out", str(out)]) == 2
    assert re.search(message, one_error_line(capsys, "scaling")), message
    assert not out.exists()


def test_scaling_fit_on_an_empty_file(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    path.write_text("")
    assert main(["scaling", "fit", str(path), "--out", str(tmp_path / "fit.json")]) == 2
    assert "the CSV is empty" in one_error_line(capsys, "scaling")


def test_scaling_fit_reads_the_good_table(tmp_path):
    """The same table without the bad cell fits (the checks reject only what is wrong)."""
    out = tmp_path / "fit.json"
    assert main(["scaling", "fit", _csv(tmp_path / "runs.csv", GOOD), "--approach", "kaplan_n", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["alpha"] > 0


# ---------------------------------------------------------------- truncated safetensors


def _model_file(path):
    arrays = {"a": np.arange(64, dtype=np.float32).reshape(8, 8), "b": np.ones((4, 16), np.float32)}
    write_file(str(path), [(n, a.shape, a.dtype) for n, a in arrays.items()], arrays.__getitem__)
    return arrays


@pytest.mark.parametrize("keep, message", [
    (-4, r"truncated: tensor 'b' ends at byte \d+, but the file has \d+ bytes"),
    (20, r"truncated or not a safetensors file \(its header length \d+ exceeds the 12 bytes"),
    (5, r"not a safetensors file \(5 bytes"),
])
def test_a_truncated_safetensors_file_is_one_error_naming_it(tmp_path, keep, message):
    path = tmp_path / "model.safetensors"
    _model_file(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(LmjaxError, match=message) as info:
        Checkpoint(str(tmp_path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_whole_safetensors_file_reads(tmp_path):
    arrays = _model_file(tmp_path / "model.safetensors")
    tensors, start, _ = read_header(str(tmp_path / "model.safetensors"))
    assert sorted(tensors) == ["a", "b"] and start % 8 == 0
    with Checkpoint(str(tmp_path)) as ckpt:
        np.testing.assert_array_equal(ckpt.read("b", (slice(1, 3),)), arrays["b"][1:3])


def test_a_corrupt_header_entry(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [2]}}).encode()  # no data_offsets
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(LmjaxError, match="tensor 'a' has no valid dtype, shape and data_offsets"):
        Checkpoint(str(tmp_path))
