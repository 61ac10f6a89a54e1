"""Mixtures (lmjax/data/mixture.py): the config is checked; sampled proportions follow the
weights and their schedule; the global batch is the same for any number of processes; a run
evaluates each source and resumes exactly, also from 8 devices onto 4."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from lmjax.config import config_problems, default_config, load_config, set_field
from lmjax.data import ByteTokenizer, MixtureData, parse_mixture, prepare_tokens, text_source
from lmjax.data.batches import document_ids
from lmjax.data.mixture import choose_rows, weights_at
from lmjax.train.loop import train

ALPHA = 1e-3  # significance level of the proportion tests: a correct sampler fails one in a thousand seeds


def problems_of(mixture):
    c = default_config()
    set_field(c, "data.mixture", mixture)
    return [p for p in config_problems(c) if p.startswith("data.mixture")]


def test_mixture_config_is_checked():
    ok = ({"name": "web", "source": "a/*.jsonl", "weight": 0.7},
          {"name": "code", "source": "b.parquet", "weight": ((0, 0.3), (50, 0.5)), "text_key": "content"})
    assert problems_of(ok) == []
    assert [c.weight_at(s) for c in parse_mixture(ok) for s in (0, 49, 50)] == [0.7] * 3 + [0.3, 0.3, 0.5]
    bad = problems_of(({"name": "a", "source": "x", "weight": 1, "wieght": 2},
                       {"name": "b", "source": "x"},
                       {"name": "c d", "source": "x", "weight": 1},
                       {"name": "e", "source": "x", "weight": ((5, 1.0),)},
                       {"name": "f", "source": "x", "weight": -1},
                       "g"))
    assert [p.split(":")[0] for p in bad] == [f"data.mixture[{i}]" for i in (0, 1)] + [
        "data.mixture[2].name", "data.mixture[3].weight", "data.mixture[4].weight", "data.mixture[5]"]
    assert "unknown keys ['wieght']" in bad[0] and "missing ['weight']" in bad[1]
    assert problems_of(({"name": "a", "source": "x", "weight": 1}, {"name": "a", "source": "y", "weight": 1})) == [
        "data.mixture: the name 'a' is used twice"]
    assert problems_of(({"name": "a", "source": "x", "weight": ((0, 1), (10, 0))},)) == [
        "data.mixture: the weights from step 10 are all zero"]


def counts(weights_of_step, steps, batch_size=64, sizes=(10_000, 5_000, 20_000)):
    total = np.zeros(len(sizes), np.int64)
    for step in steps:
        component, offsets = choose_rows(sizes, weights_of_step(step), seed=3, step=step, batch_size=batch_size,
                                         seq_len=16)
        assert ((offsets >= 0) & (offsets <= np.asarray(sizes)[component] - 16 - 1)).all()
        total += np.bincount(component, minlength=len(sizes))
    return total


def test_sampled_proportions_match_the_weights():
    """Chi-square goodness of fit of 19,200 rows to the weights, at significance ALPHA."""
    w = np.array([0.5, 0.3, 0.2])
    got = counts(lambda step: w, range(300))
    assert stats.chisquare(got, w * got.sum()).pvalue > ALPHA, got


def test_sampled_proportions_follow_the_schedule():
    comps = parse_mixture(({"name": "a", "source": "x", "weight": ((0, 1.0), (100, 0.0), (200, 2.0))},
                           {"name": "b", "source": "x", "weight": ((0, 0.0), (100, 1.0), (200, 1.0))},
                           {"name": "c", "source": "x", "weight": ((0, 0.0), (200, 1.0))}))
    by_step = lambda step: weights_at(comps, step)  # noqa: E731
    assert counts(by_step, range(100))[1:].sum() == 0  # a weight of 0 is never drawn
    assert counts(by_step, range(100, 200))[[0, 2]].sum() == 0
    late = counts(by_step, range(200, 400))
    assert stats.chisquare(late, np.array([0.5, 0.25, 0.25]) * late.sum()).pvalue > ALPHA, late


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two sources in two formats, with different text, for the training tests."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("mix")
    web = [f"The {a} fox jumps over the {b} dog {n} times.\n" for n in range(120) for a, b in [("quick", "lazy"),
                                                                                              ("red", "happy")]]
    code = [f"def f{n}(x):\n    return x * {n} + {n % 7}\n" for n in range(300)]
    (root / "web.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in web))
    pq.write_table(pa.table({"content": code}), root / "code.parquet")
    return {"web": str(root / "web.jsonl"), "code": str(root / "code.parquet")}


def mixture_of(sources, web=0.7, code=0.3):
    return ({"name": "web", "source": sources["web"], "weight": web},
            {"name": "code", "source": sources["code"], "weight": code, "text_key": "content"})


def test_global_batch_is_the_same_for_any_process_count(sources, tmp_path):
    comps = parse_mixture(mixture_of(sources, web=((0, 0.5), (3, 0.9))))
    parts = {c.name: prepare_tokens(text_source(c.source, text_key=c.text_key or "text"), ByteTokenizer(),
                                    str(tmp_path), progress=False) for c in comps}
    data = MixtureData(comps, parts)
    kw = dict(seed=1, batch_size=16, seq_len=24)
    for step in range(6):
        full = data.train_rows(step=step, start=0, stop=16, **kw)
        for count in (8, 4, 2):
            rows = [data.train_rows(step=step, start=i * 16 // count, stop=(i + 1) * 16 // count, **kw)
                    for i in range(count)]
            for k in ("inputs", "targets"):
                np.testing.assert_array_equal(np.concatenate([r[k] for r in rows]), full[k])
        # every row is a real window of one of the sources
        for row in full["inputs"]:
            text = bytes(row.astype(np.uint8)) if row.max() < 256 else b""
            assert any(text in bytes(p.train.astype(np.uint8)) for p in parts.values())
    again = data.train_rows(step=5, start=0, stop=16, **kw)
    np.testing.assert_array_equal(again["inputs"], full["inputs"])


def test_mixture_rows_with_eos_carry_document_ids_and_are_otherwise_unchanged(sources, tmp_path):
    comps = parse_mixture(mixture_of(sources))
    parts = {c.name: prepare_tokens(text_source(c.source, text_key=c.text_key or "text"), ByteTokenizer(),
                                    str(tmp_path), progress=False) for c in comps}
    data, eos = MixtureData(comps, parts), ByteTokenizer().eos_id
    kw = dict(seed=1, step=2, batch_size=16, seq_len=64)
    plain, packed = data.train_rows(start=0, stop=16, **kw), data.train_rows(start=0, stop=16, eos=eos, **kw)
    assert set(plain) == {"inputs", "targets"}
    for k in plain:
        np.testing.assert_array_equal(packed[k], plain[k])
    ids = document_ids(np.concatenate([plain["inputs"], plain["targets"][:, -1:]], axis=1), eos)
    np.testing.assert_array_equal(packed["segment_ids"], ids[:, :-1])
    np.testing.assert_array_equal(packed["target_segment_ids"], ids[:, 1:])
    assert (ids[:, -1] > 0).any()  # some rows cross a document boundary
    half = data.train_rows(start=8, stop=16, eos=eos, **kw)
    np.testing.assert_array_equal(half["segment_ids"], packed["segment_ids"][8:])


CONFIG = """
def get_config(arg=None):
    return {{'model': dict(n_layer=1, d_model=32, n_head=2, max_len=32),
            'data': dict(tokenizer='byte', mixture={mixture!r}),
            'train': dict(steps={steps}, batch_size=8, log_every=1, eval_every=4, eval_batches=2, sample_tokens=0),
            'optimizer': dict(lr=3e-3, warmup_steps=2),
            'checkpoint': dict(every=100, async_save=False)}}
"""


def losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}, [r for r in rows if "val_loss" in r]


def test_mixture_trains_evaluates_each_source_and_resumes_from_8_devices_onto_4(sources, tmp_path):
    """Steps 1-4 on the session's 8 devices, then steps 5-8 in a process with 4: the same
    losses as 8 uninterrupted steps on 8 devices."""
    steps = 8
    cfg = tmp_path / "mix.py"
    cfg.write_text(CONFIG.format(mixture=mixture_of(sources, web=((0, 0.7), (4, 0.2))), steps=steps))
    config = load_config(str(cfg))
    straight = train(config, str(tmp_path / "straight"), progress=False, quiet=True)
    assert {"val_loss/web", "val_bpb/web", "val_loss/code", "val_bpb/code"} <= straight.keys()
    assert straight["val_bpb/code"] != straight["val_bpb/web"]
    assert min(straight["val_loss/web"], straight["val_loss/code"]) <= straight["val_loss"] \
        <= max(straight["val_loss/web"], straight["val_loss/code"])

    resumed = tmp_path / "resumed"
    train(load_config(str(cfg)), str(resumed), stop_at_step=4, progress=False, quiet=True)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4".strip()}
    run = subprocess.run([sys.executable, "-m", "lmjax.train", "--config", str(cfg), "--workdir", str(resumed),
                          "--no_progress"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming from step 4" in run.stdout and "data=4" in run.stdout, run.stdout
    assert "bpb by source: web" in run.stdout

    want, want_evals = losses(tmp_path / "straight")
    got, got_evals = losses(resumed)
    # (the first step of each process compiles, so it logs no loss: 1, and 5 after the resume)
    assert sorted(want) == list(range(2, steps + 1)) and sorted(got) == [2, 3, 4, 6, 7, 8]
    assert [got[s] for s in (2, 3, 4)] == [want[s] for s in (2, 3, 4)]  # same devices: bitwise
    # The resumed process's first logged loss averages its steps 5 and 6. 4 devices sum the
    # batch's gradient in another order than 8: equal to float32 rounding.
    np.testing.assert_allclose([2 * got[6] - want[6], got[7], got[8]], [want[5], want[7], want[8]], rtol=1e-5)
    last = {k: v for k, v in got_evals[-1].items() if k.startswith("val_")}
    assert got_evals[-1]["step"] == want_evals[-1]["step"] == steps
    np.testing.assert_allclose([last[k] for k in sorted(last)], [want_evals[-1][k] for k in sorted(last)], rtol=1e-5)
