"""Reproductions recall and shakespeare (lmjax/repro) in their reduced settings.

- recall (`small`: d_model 64, up to 8 key-value pairs, vocabulary 64, 500 steps): the
  MQAR rows are what they claim to be; at 4 pairs every model recalls far above chance, and at 8 pairs the
  conv + attention model and the Mamba + attention hybrid beat the small-state Mamba model;
- shakespeare (`small`): a few steps of lmjax's training loop through the repro entry point
  lower the loss, and results.json / the figure are written.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import data_file
from lmjax import commands, plotting, repro
from lmjax.config import ConfigError
from lmjax.errors import LmjaxError
from lmjax.repro import _common, recall


def test_figures_are_written_whole_and_errors_name_the_path(tmp_path):
    """lmjax.plotting.save, which every figure of the reproductions, interp and scaling goes
    through: a PNG under the name asked for, no temporary file left behind, and an OSError
    about the path the caller gave."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = plotting.save(fig, str(tmp_path / "f.png"), dpi=50)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.listdir(tmp_path) == ["f.png"]
    assert not plt.fignum_exists(fig.number)  # closed
    missing = str(tmp_path / "no_such_dir" / "f.png")
    fig, _ = plt.subplots()
    with pytest.raises(FileNotFoundError) as e:
        plotting.save(fig, missing)
    assert e.value.filename == missing
    assert plotting.png_bytes(plt.subplots()[0]).startswith(b"\x89PNG")


def test_mqar_rows_answer_every_query_with_its_value():
    rng = np.random.default_rng(0)
    batch = recall.mqar_batch(rng, [1, 3, 8], vocab_size=64, seq_len=32)
    keys, values = recall.key_value_ids(64)
    for row, n in enumerate([1, 3, 8]):
        full = np.append(batch["inputs"][row], batch["targets"][row, -1])
        pairs = dict(zip(full[0:2 * n:2], full[1:2 * n:2]))
        assert len(pairs) == n and set(pairs) <= set(keys) and set(pairs.values()) <= set(values)
        scored = np.flatnonzero(batch["mask"][row])
        assert len(scored) == (32 + 1 - 2 * n) // 2
        for t in scored:  # the input there is a query key; the target is its value
            assert pairs[batch["inputs"][row, t]] == batch["targets"][row, t]
        first = np.flatnonzero(batch["first"][row])  # evaluation: each key exactly once, first
        assert sorted(batch["inputs"][row, first]) == sorted(pairs) and set(first) <= set(scored)
    with pytest.raises(ValueError, match="distinct keys"):
        recall.mqar_batch(rng, [40], vocab_size=64, seq_len=200)


@pytest.fixture(scope="module")
def recall_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("recall")
    results = repro.run("recall:small", ["--out", str(out)])
    return results, out


def test_recall_attention_solves_it_small_state_mamba_degrades(recall_small):
    results, out = recall_small
    acc = {name: {int(k): v for k, v in r["accuracy"].items()} for name, r in results["models"].items()}
    chance = results["chance"]
    for name in ("transformer", "mamba", "hybrid"):
        assert acc[name][4] > 3 * chance, (name, acc[name], chance)
    assert acc["transformer"][8] > acc["mamba"][8] + 0.2, acc
    assert acc["hybrid"][8] > acc["mamba"][8] + 0.2, acc
    on_disk = json.load(open(os.path.join(out, "results.json")))
    assert on_disk["models"]["mamba"]["accuracy"]["8"] == pytest.approx(acc["mamba"][8])
    assert os.path.getsize(os.path.join(out, "recall.png")) > 1000


def test_recall_config_overrides_are_checked():
    c = _common.load_repro_config("recall:small", overrides=["train.steps=7", "models.mamba.d_state=2",
                                                             "task.eval_pairs=[2, 4]"])
    assert c.train.steps == 7 and c.models.mamba.d_state == 2 and c.task.eval_pairs == (2, 4)
    with pytest.raises(ConfigError, match="unknown config key 'models.mamba.nope'"):
        _common.load_repro_config("recall", overrides=["models.mamba.nope=1"])
    with pytest.raises(ConfigError, match="task.train_pairs/eval_pairs: every count must be in \\[1, 31\\]"):
        _common.load_repro_config("recall:small", overrides=["task.train_pairs=(1, 40)"])  # vocabulary 64: 31 keys
    with pytest.raises(ConfigError, match="models.transformer: model.d_model"):
        _common.load_repro_config("recall", overrides=["models.transformer.n_head=3"])


def test_shakespeare_small_lowers_the_loss(tmp_path, capsys):
    data_file("tinyshakespeare", "input.txt")  # the default data.source: $LMJAX_DATA/tinyshakespeare/input.txt
    out = tmp_path / "shakespeare"
    r = repro.run("shakespeare:small", ["--out", str(out)])
    train = [loss for _, loss in r["curves"]["train"]]
    assert train[-1] < train[0] - 0.2
    assert r["final_val_loss"] < np.log(65) - 0.2  # below uniform over the 65 characters
    assert r["steps"] == 20 and r["wall_time_s"] > 0
    # nanoGPT's random-window estimate and the whole-split loss measure the same expectation
    estimate = r["nanogpt_estimate"]
    assert len(estimate["draws"]) == 100 and estimate["std"] > 0
    assert abs(estimate["mean"] - r["final_val_loss"]) < 3 * estimate["std"] + 0.02
    saved = json.load(open(out / "results.json"))
    assert saved["final_val_loss"] == pytest.approx(r["final_val_loss"])
    assert os.path.getsize(out / "shakespeare.png") > 1000
    assert r["variant"] == "small" and json.load(open(out / "results.json"))["config"]["model"]["d_model"] == 32
    # a second run into the same --out is refused before training, in one line on the command line
    with pytest.raises(LmjaxError, match="already holds a run"):
        repro.run("shakespeare", ["--variant", "small", "--out", str(out)])
    capsys.readouterr()
    assert commands.main(["repro", "shakespeare", "--variant", "small", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err and "Traceback" not in err
