"""Training end to end on a tiny corpus: loss falls, resume is exact, failures are safe."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lmjax import commands
from lmjax.config import ConfigError, config_from_dict
from lmjax.train.loop import NonFiniteLossError, train
from lmjax.train.steps import CPU_MICRO_BATCH_TOKENS, auto_grad_accum
from lmjax.train.workdir import open_workdir

TEXT = "".join(
    f"The {a} {b} jumps over the {c} dog {n} times.\n"
    for n in range(200)
    for a, b, c in [("quick", "brown", "lazy"), ("slow", "red", "happy")]
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(TEXT)
    return str(path)


def tiny(corpus, **sections):
    """A tiny config on the test corpus; `sections` = {"train": {...}, ...} overrides."""
    d = {
        "model": dict(n_layer=2, d_model=32, n_head=4, max_len=32),
        "data": dict(source=corpus, tokenizer="byte"),
        "train": dict(steps=40, batch_size=8, log_every=10, eval_every=20, eval_batches=2, sample_tokens=0),
        "optimizer": dict(lr=3e-3, end_lr=3e-4, warmup_steps=5),
        "checkpoint": dict(every=10, keep=3),
    }
    for section, values in sections.items():
        d.setdefault(section, {}).update(values)
    return config_from_dict(d)


def final_params(workdir):
    """The step and params of the newest checkpoint in a workdir, as numpy."""
    restored = open_workdir(workdir).restore(params_only=True)
    return restored.step, jax.tree.map(np.asarray, restored.params)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def test_loss_falls_and_metrics_are_written(corpus, tmp_path):
    summary = train(tiny(corpus, train=dict(steps=80)), str(tmp_path), progress=False, quiet=True)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[0] > 3.0 and losses[-1] < 0.6 * losses[0]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [20, 40, 60, 80]
    # byte tokenizer: every predicted token is one byte, so bits/byte = nats/token / ln 2
    assert evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] / math.log(2), rel=1e-6)
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows if "mfu" in r)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    assert summary["finished"] and summary["end_step"] == 80


def test_resume_is_bitwise_exact(corpus, tmp_path):
    """2N steps straight == N steps, stop, resume, N more (dropout on: its keys must match too)."""
    config = tiny(corpus, model=dict(dropout=0.1), train=dict(steps=30))
    train(config, str(tmp_path / "straight"), progress=False, quiet=True)
    first = train(config, str(tmp_path / "resumed"), stop_at_step=15, progress=False, quiet=True)
    assert first["end_step"] == 15 and not first["finished"]
    second = train(config, str(tmp_path / "resumed"), progress=False, quiet=True)
    assert second["start_step"] == 15 and second["finished"]
    step_a, a = final_params(tmp_path / "straight")
    step_b, b = final_params(tmp_path / "resumed")
    assert step_a == step_b == 30
    assert_trees_equal(a, b)


def test_sigterm_saves_and_resume_matches(corpus, tmp_path):
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "def get_config(arg=None):\n"
        "    return {'model': dict(n_layer=2, d_model=32, n_head=4, max_len=32),\n"
        f"            'data': dict(source={corpus!r}, tokenizer='byte'),\n"
        "            'train': dict(steps=100000, batch_size=8, log_every=1, eval_every=100000, eval_batches=1,\n"
        "                          sample_tokens=0),\n"
        "            'checkpoint': dict(every=100000)}\n"
    )
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmjax.train", "--config", str(config_file), "--workdir", str(workdir), "--no_progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by SIGTERM" in out
    step, params = final_params(workdir)
    assert 5 <= step < 100000

    # An uninterrupted run to the same step has the same parameters.
    straight = tmp_path / "straight"
    config = open_workdir(workdir).config()
    train(config, str(straight), stop_at_step=step, progress=False, quiet=True)
    assert_trees_equal(final_params(straight)[1], params)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    config = tiny(corpus, optimizer=dict(lr=1e12, end_lr=1e11, clip_norm=0.0, warmup_steps=0),
                  train=dict(steps=200, log_every=1), checkpoint=dict(every=1, keep=200))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train(config, str(tmp_path), progress=False, quiet=True)
    steps = open_workdir(tmp_path).steps()
    assert steps, "the healthy first steps were checkpointed"
    step, params = final_params(tmp_path)
    assert step == steps[-1]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_resume_with_a_different_model_is_an_error(corpus, tmp_path):
    train(tiny(corpus, train=dict(steps=10)), str(tmp_path), progress=False, quiet=True)
    with pytest.raises(ConfigError, match="d_model"):
        train(tiny(corpus, model=dict(d_model=64), train=dict(steps=20)), str(tmp_path), progress=False, quiet=True)
    # the checkpoint is untouched
    assert open_workdir(tmp_path).latest_step() == 10


def test_grad_accumulation_matches_one_big_batch(corpus, tmp_path):
    a = train(tiny(corpus, train=dict(steps=5, eval_every=5, grad_accum=1)), str(tmp_path / "a"),
              progress=False, quiet=True)
    b = train(tiny(corpus, train=dict(steps=5, eval_every=5, grad_accum=2)), str(tmp_path / "b"),
              progress=False, quiet=True)
    pa, pb = final_params(tmp_path / "a")[1], final_params(tmp_path / "b")[1]
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(x, y, atol=2e-5)
    assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)



@pytest.mark.parametrize("data_parallel", [1, 2, 8])
def test_auto_grad_accum_takes_the_fewest_micro_batches_within_the_cpu_budget(data_parallel):
    budget = CPU_MICRO_BATCH_TOKENS
    for rows in (1, 8, 12, 16, 64):  # per device
        for seq in (32, 64, 256, 1024):
            batch = rows * data_parallel
            a = auto_grad_accum(batch, seq, data_parallel, platform="cpu")
            assert rows % a == 0, (batch, seq, a)  # micro-batches split evenly over the devices
            micro_tokens = rows // a * seq
            assert micro_tokens <= budget or rows // a == 1, (batch, seq, a)
            fewer = [k for k in range(1, a) if rows % k == 0]
            assert all(rows // k * seq > budget for k in fewer), (batch, seq, a)
            assert auto_grad_accum(batch, seq, data_parallel, platform="gpu") == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_entropy_matches_optax_in_value_and_gradient(dtype):
    """The hand-written backward = autodiff of optax's loss on float32 logits, rounded to
    the logits' dtype; the loss itself is the same float32 number."""
    import jax.numpy as jnp
    import optax

    from lmjax.train.loss import cross_entropy

    k1, k2 = jax.random.split(jax.random.key(3))
    logits = (4 * jax.random.normal(k1, (3, 9, 61))).astype(dtype)
    targets = jax.random.randint(k2, (3, 9), 0, 61)
    reference = lambda z: optax.softmax_cross_entropy_with_integer_labels(z.astype(jnp.float32), targets).mean()
    loss, grad = jax.value_and_grad(cross_entropy)(logits, targets)
    want_loss, want_grad = jax.value_and_grad(reference)(logits)
    assert loss.dtype == jnp.float32 and grad.dtype == logits.dtype
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    tol = 1e-7 if dtype == "float32" else 2e-3  # bf16: one rounding of values <= 1/n
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(want_grad, np.float32), atol=tol)


def _greedy(model, params, tokenizer, prompt: str, n: int) -> str:
    """The greedy continuation by full forward passes (no cache): independent of lmjax.sample."""
    import jax.numpy as jnp

    # causal: padding after the last real token leaves its logits as they are (one compile)
    logits_at = jax.jit(lambda p, ids, last: model.apply({"params": p}, ids)[0, last])
    ids, new = tokenizer.encode(prompt), []
    for _ in range(n):
        window = ids + new
        padded = jnp.asarray([window + [0] * (model.cfg.max_len - len(window))], jnp.int32)
        token = int(jnp.argmax(logits_at(params, padded, len(window) - 1)))
        if token == tokenizer.eos_id:
            break
        new.append(token)
    return tokenizer.decode(new)


def test_cli_train_eval_sample(corpus, tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "def get_config(arg=None):\n"
        "    return {'model': dict(n_layer=2, d_model=32, n_head=4, max_len=32),\n"
        f"            'data': dict(source={corpus!r}),\n"
        "            'train': dict(steps=30, batch_size=8, eval_every=30, eval_batches=2, sample_tokens=20,\n"
        "                          sample_prompt='The ', sample_temperature=0.0)}\n"
    )
    workdir = str(tmp_path / "w")
    assert commands.main(["train", "--config", str(cfg), "--workdir", workdir, "--no_progress"]) == 0
    out = capsys.readouterr().out
    model, params, tokenizer = open_workdir(workdir).load()
    # temperature 0: the printed samples are the trained model's greedy continuations
    assert f"sample:\nThe {_greedy(model, params, tokenizer, 'The ', 20)}\n" in out
    final_loss = re.search(r"final: val loss (\d+\.\d+) nats/token", out)[1]
    assert commands.main(["eval", "--workdir", workdir]) == 0
    assert f"step 30: val_loss {final_loss}," in capsys.readouterr().out  # the same checkpoint, the same val batches
    assert commands.main(["sample", "--workdir", workdir, "--prompt", "The", "--max_new_tokens", "10",
                          "--temperature", "0"]) == 0
    assert capsys.readouterr().out == f"The{_greedy(model, params, tokenizer, 'The', 10)}\n"
    assert commands.main(["eval", "--workdir", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("tokenizer", ["char", "sentencepiece"])
def test_trained_tokenizer_travels_with_the_checkpoint(corpus, tmp_path, tokenizer):
    config = tiny(corpus, data=dict(tokenizer=tokenizer, spm_vocab_size=400), train=dict(steps=5, eval_every=5))
    summary = train(config, str(tmp_path), progress=False, quiet=True)
    original = summary["run"].tokenizer
    restored = open_workdir(tmp_path).tokenizer()
    text = "The quick brown dog jumps 7 times."
    assert restored.kind == tokenizer and restored.encode(text) == original.encode(text)
    assert restored.decode(restored.encode(text)) == text
    assert summary["run"].model.cfg.vocab_size == original.vocab_size


@pytest.mark.parametrize("before,kept", [
    ('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', [(1, 2.0)]),  # a run killed inside a write
    ('{"step": 1, "loss": 2.0}\n', [(1, 2.0)]),
    ('{"step": 1, "lo', []),
])
def test_a_half_written_metrics_line_is_dropped_when_a_run_resumes(tmp_path, before, kept):
    from lmjax.train.run_metrics import RunMetrics

    (tmp_path / "metrics.jsonl").write_text(before)
    writer = RunMetrics(str(tmp_path), str(tmp_path / "cache"))
    writer.write_scalars(2, {"loss": 1.5})
    writer.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["loss"]) for r in rows] == kept + [(2, 1.5)]
