"""kill -9 at random moments, inside async saves too, then the same command: the run goes on
from the last committed step and ends bitwise equal to an uninterrupted run.

Every run is a real `python -m lmjax train` process on one CPU device. A persistent JAX
compilation cache (in the test's tmp dir) lets restarts load the steps the first run
compiled. Kills come in three kinds: right after a save's temporary directory appears
(inside the save), shortly after a new step is committed, and at a random time from the
start (import, setup, restore or training), up to a little past when a run starts saving.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from lmjax.train.workdir import open_workdir

STEPS, KILLS = 60, 20
TEXT = "".join(f"A {w} sat on the mat {n}.\n" for n in range(150) for w in ("cat", "dog", "fox"))
TMP = ".orbax-checkpoint-tmp"


def _config(tmp_path, every: int) -> str:
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    path = tmp_path / f"cfg_{every}.py"
    path.write_text(
        "def get_config(arg=None):\n"
        "    return {'model': dict(n_layer=1, d_model=16, n_head=2, max_len=16, dropout=0.1),\n"
        f"            'data': dict(source={str(corpus)!r}, tokenizer='byte'),\n"
        f"            'train': dict(steps={STEPS}, batch_size=4, log_every=1, eval_every=1000, eval_batches=1,\n"
        "                          sample_tokens=0),\n"
        "            'optimizer': dict(warmup_steps=2),\n"
        f"            'checkpoint': dict(every={every}, keep=2, async_save=True)}}\n")
    return str(path)


def _env(tmp_path) -> dict:
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    return {**os.environ, "XLA_FLAGS": flags, "LMJAX_CACHE": str(tmp_path / "tokens"),
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "compiled"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _command(config: str, workdir) -> list[str]:
    return [sys.executable, "-m", "lmjax", "train", "--config", config, "--workdir", str(workdir), "--no_progress"]


def _entries(directory) -> set[str]:
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def _newest(entries) -> int:
    return max((int(e) for e in entries if e.isdigit()), default=0)


def _wait_for(condition, proc, timeout=60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.003)
    return False


def _state(workdir):
    restored = open_workdir(workdir).restore()
    return restored.step, jax.tree.map(np.asarray, restored.state)


def test_kill_9_anywhere_then_resume_is_bitwise_an_uninterrupted_run(tmp_path):
    env, rng = _env(tmp_path), random.Random(17)
    # The uninterrupted run: one checkpoint at the end (checkpointing does not change the numbers).
    straight = tmp_path / "straight"
    done = subprocess.run(_command(_config(tmp_path, every=STEPS), straight), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    config, workdir = _config(tmp_path, every=1), tmp_path / "killed"
    checkpoints = workdir / "checkpoints"
    kinds, inside_save, stderr, startup = [], 0, [], []
    for i in range(KILLS):
        before = _entries(checkpoints)
        log = tmp_path / f"run_{i}.log"
        with open(log, "w") as out:
            start = time.monotonic()
            proc = subprocess.Popen(_command(config, workdir), env=env, stdout=out, stderr=subprocess.STDOUT)
            kind = ("in_save", "after_commit", "any")[i % 3]
            if kind == "any":  # anywhere up to a little past the first save (a run's time to start varies)
                _wait_for(lambda: False, proc, timeout=rng.uniform(0.0, 1.2 * float(np.median(startup))))
            else:
                new = (lambda e: TMP in e) if kind == "in_save" else str.isdigit
                if _wait_for(lambda: any(map(new, _entries(checkpoints) - before)), proc):
                    startup.append(time.monotonic() - start)
                time.sleep(rng.uniform(0.0, 0.02 if kind == "in_save" else 0.2))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        text = log.read_text()
        assert proc.returncode in (0, -signal.SIGKILL), text[-3000:]
        resumed = re.search(r"resuming from step (\d+)", text)
        if resumed:  # from the newest committed step, as it was when the run started
            assert int(resumed[1]) == _newest(before), (sorted(before), text[-3000:])
        stderr.append(text)
        kinds.append((kind, proc.returncode))
        inside_save += proc.returncode == -signal.SIGKILL and any(TMP in e for e in _entries(checkpoints))
        if proc.returncode == 0:  # finished before the kill came: nothing left to test
            break
    assert sum(code == -signal.SIGKILL for _, code in kinds) == KILLS, kinds
    assert inside_save >= 3, f"only {inside_save} kills landed inside a save"

    before = _entries(checkpoints)
    last = subprocess.run(_command(config, workdir), env=env, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-3000:]
    resumed_from = int(re.search(r"resuming from step (\d+)", last.stdout)[1])
    # the kills left progress behind, and work to do
    assert resumed_from == _newest(before) and 0 < resumed_from < STEPS, (sorted(before), last.stdout)
    # A killed save never looked committed: no run found an unreadable checkpoint.
    assert not any("unreadable" in err for err in stderr + [last.stderr]), [e for e in stderr if "unreadable" in e]
    assert not [e for e in _entries(checkpoints) if TMP in e]  # the last run cleaned up after the killed saves
    for line in open(workdir / "metrics.jsonl"):  # no half-written line survives a resume
        json.loads(line)

    step_a, a = _state(straight)
    step_b, b = _state(workdir)
    assert step_a == step_b == STEPS
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()
