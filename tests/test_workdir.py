"""lmjax.train.workdir: one spelling of a workdir's paths, its config (overrides validated),
its checkpoints restored onto the current mesh, and the failure modes of resuming: an
unreadable newest checkpoint, a second run, a changed config, a workdir that is a file.

Training runs are `lmjax` subprocesses on one CPU device sharing a persistent compilation
cache; reading a workdir happens here, on the session's 8 simulated devices.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lmjax import commands
from lmjax.config import ConfigError
from lmjax.errors import LmjaxError
from lmjax.train.loop import ResumeChangedError, train
from lmjax.train.workdir import Workdir, WorkdirBusyError, WorkdirError, open_workdir, resolve

TEXT = "".join(f"A {w} sat on the mat {n}.\n" for n in range(150) for w in ("cat", "dog", "fox"))
STEPS = 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("env")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    return {**os.environ, "XLA_FLAGS": flags, "JAX_COMPILATION_CACHE_DIR": str(tmp / "compiled"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def lmjax(env, *args, ok=True):
    """(exit status, stdout, stderr) of `python -m lmjax ARGS` on one CPU device."""
    run = subprocess.run([sys.executable, "-m", "lmjax", *map(str, args)], env=env, capture_output=True, text=True,
                         timeout=300)
    if ok:
        assert run.returncode == 0, run.stderr[-3000:]
    return run.returncode, run.stdout, run.stderr


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("lmjax ")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(f"lmjax {command}: error: "), err
    return lines[0]


def state_of(workdir, step=None):
    restored = open_workdir(workdir).restore(step=step)
    return restored.step, jax.tree.map(np.asarray, restored.state)


def assert_bitwise(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def files_under(path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_size for p in Path(path).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """A workdir trained STEPS steps (checkpoints at 2, 4, 6), its config file, and its states."""
    tmp = tmp_path_factory.mktemp("trained")
    (tmp / "text.txt").write_text(TEXT)
    (tmp / "other.txt").write_text(TEXT.replace("mat", "rug"))
    cfg = tmp / "cfg.py"
    cfg.write_text(
        "def get_config(arg=None):\n"
        "    return {'model': dict(n_layer=1, d_model=16, n_head=2, max_len=16),\n"
        f"            'data': dict(source={str(tmp / 'text.txt')!r}, tokenizer='byte'),\n"
        f"            'train': dict(steps={STEPS}, batch_size=8, log_every=1, eval_every=1000, eval_batches=1,\n"
        "                          sample_tokens=0),\n"
        "            'optimizer': dict(warmup_steps=2),\n"
        "            'checkpoint': dict(every=2, keep=5)}\n")
    workdir = tmp / "w"
    lmjax(env, "train", "--config", cfg, "--workdir", workdir, "--no_progress")
    states = {s: state_of(workdir, s)[1] for s in (2, 4, 6)}
    return {"dir": tmp, "cfg": str(cfg), "workdir": workdir, "states": states}


@pytest.fixture
def copy(trained, tmp_path):
    """A private copy of the trained workdir."""
    workdir = tmp_path / "w"
    shutil.copytree(trained["workdir"], workdir)
    return workdir


# ---------------------------------------------------------------- paths


def test_one_spelling_of_the_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert str(resolve("runs/qs")) == str(tmp_path / "runs" / "qs")  # Orbax refuses relative paths
    assert str(resolve("~/runs/qs")) == str(tmp_path / "home" / "runs" / "qs")
    assert str(resolve("gs://bucket/runs/qs")) == "gs://bucket/runs/qs"
    wd = open_workdir("runs/qs")
    assert open_workdir(wd) is wd and wd.given == "runs/qs" and os.fspath(wd) == str(tmp_path / "runs" / "qs")
    assert (str(wd.checkpoints), str(wd.metrics), str(wd.tensorboard)) == tuple(
        str(tmp_path / "runs" / "qs" / name) for name in ("checkpoints", "metrics.jsonl", "tb"))
    assert not (tmp_path / "runs").exists()  # opening reads and creates nothing


def test_a_workdir_that_is_a_file_is_a_one_line_error(trained, tmp_path, capsys):
    (tmp_path / "file").write_text("not a workdir")
    with pytest.raises(WorkdirError, match="is a file"):
        Workdir(tmp_path / "file")
    for command in (["train", "--config", trained["cfg"], "--no_progress"], ["eval"], ["sample"]):
        assert commands.main([*command, "--workdir", str(tmp_path / "file")]) == 2
        line = one_error_line(capsys.readouterr().err, command[0])
        assert f"workdir {tmp_path / 'file'} is a file" in line
    assert (tmp_path / "file").read_text() == "not a workdir"


# ---------------------------------------------------------------- reading a workdir


def test_load_is_the_newest_checkpoint_params_only(trained):
    model, params, tokenizer = open_workdir(trained["workdir"]).load()
    assert_bitwise(jax.tree.map(np.asarray, params), trained["states"][6]["params"])
    assert tokenizer.kind == "byte" and model.cfg.vocab_size == tokenizer.vocab_size and model.cfg.d_model == 16
    restored = open_workdir(trained["workdir"]).restore(step=4, params_only=True)
    assert restored.step == 4 and set(restored.state) == {"params"}  # no optimizer state read
    assert_bitwise(jax.tree.map(np.asarray, restored.params), trained["states"][4]["params"])
    # onto the mesh the (overridden) config asks for, whatever mesh it was trained on
    _, sharded, _ = open_workdir(trained["workdir"]).load(["mesh.preset=fsdp"])
    kernel = sharded["blocks_0"]["attn"]["q"]["kernel"]
    assert kernel.sharding.mesh.shape["fsdp"] == jax.device_count() == 8 and "fsdp" in tuple(kernel.sharding.spec)
    assert_bitwise(np.asarray(kernel), trained["states"][6]["params"]["blocks_0"]["attn"]["q"]["kernel"])


def test_config_overrides_are_validated(trained):
    wd = open_workdir(trained["workdir"])
    assert wd.config().train.steps == STEPS
    assert wd.config(["model.dtype=bfloat16"]).model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="unknown config key 'model.nope'"):
        wd.config(["model.nope=1"])
    with pytest.raises(ConfigError, match="train.batch_size: expected int"):
        wd.config(["train.batch_size=abc"])


@pytest.mark.parametrize("command", [["eval"], ["sample"], ["explain", "--prompt", "A cat"]])
@pytest.mark.parametrize("override,expected", [("model.nope=1", "unknown config key 'model.nope'"),
                                               ("train.batch_size=abc", "train.batch_size: expected int"),
                                               ("model.norm=nope", "model.norm")])
def test_bad_overrides_to_commands_that_read_a_workdir_are_one_line(trained, tmp_path, capsys, command, override,
                                                                   expected):
    out = tmp_path / "report.html"
    argv = [command[0], "--workdir", str(trained["workdir"]), *command[1:], f"--config.{override}"]
    assert commands.main(argv + (["--out", str(out)] if command[0] == "explain" else [])) == 2
    assert expected in one_error_line(capsys.readouterr().err, command[0])
    assert not out.exists()


# ---------------------------------------------------------------- unreadable checkpoints


def _truncate_config(workdir, step):
    path = Path(workdir) / "checkpoints" / str(step) / "config" / "metadata"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)  # today's "Unterminated string starting at: line 1 column ..."


def _truncate_arrays(workdir, step):
    for path in (Path(workdir) / "checkpoints" / str(step) / "state").rglob("d/*"):
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_truncate_config, _truncate_arrays], ids=["config_json", "array_file"])
def test_an_unreadable_newest_checkpoint_falls_back_and_is_kept(trained, copy, env, capsys, damage):
    damage(copy, 6)
    bad = files_under(copy / "checkpoints" / "6")
    model, params, _ = open_workdir(copy).load()  # a reader: warns, uses step 4, touches nothing
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1 and "checkpoint step 6" in warning and "unreadable" in warning, warning
    assert "using step 4" in warning
    assert_bitwise(jax.tree.map(np.asarray, params), trained["states"][4]["params"])
    assert files_under(copy / "checkpoints" / "6") == bad

    # the same command resumes from step 4, keeps the bad step aside and ends where the run did
    _, out, err = lmjax(env, "train", "--config", trained["cfg"], "--workdir", copy, "--no_progress")
    assert "resuming from step 4" in out and "checkpoint step 6" in err and "6.unreadable" in err, err
    assert files_under(copy / "checkpoints" / "6.unreadable") == bad  # nothing deleted
    step, state = state_of(copy)
    assert step == 6
    assert_bitwise(state, trained["states"][6])


def test_no_readable_checkpoint_is_a_one_line_error_and_nothing_starts_over(trained, copy, env):
    for step in (2, 4, 6):
        _truncate_config(copy, step)
    before = files_under(copy)
    for command in (["eval"], ["train", "--config", trained["cfg"], "--no_progress"]):
        code, _, err = lmjax(env, *command, "--workdir", copy, ok=False)
        line = one_error_line(err, command[0])
        assert code == 2 and "no readable checkpoint" in line and all(f"step {s}" in line for s in (2, 4, 6)), line
    assert files_under(copy) == before  # not retrained from scratch, nothing moved or deleted


# ---------------------------------------------------------------- resuming with another config


def test_resuming_with_changed_data_or_schedule_names_the_fields(trained, copy, capsys):
    base = ["train", "--config", trained["cfg"], "--workdir", str(copy), "--no_progress"]
    other = trained["dir"] / "other.txt"
    for overrides, names in [
        (["train.batch_size=16"], ["train.batch_size 8 -> 16"]),
        (["train.steps=8"], ["train.steps 6 -> 8"]),
        ([f"data.source={other}", "data.seq_len=8", "data.tokenizer=char"],
         ["data.source", str(other), "data.seq_len 16 -> 8", "data.tokenizer 'byte' -> 'char'"]),
    ]:
        assert commands.main(base + [f"--config.{o}" for o in overrides]) == 2
        line = one_error_line(capsys.readouterr().err, "train")
        assert "--allow_changes" in line and all(name in line for name in names), line
    # the library says the same, before anything is compiled or written
    config = open_workdir(copy).config(["train.steps=8"])
    before = files_under(copy)
    with pytest.raises(ResumeChangedError, match="train.steps 6 -> 8"):
        train(config, str(copy), progress=False, quiet=True)
    assert files_under(copy) == before
    assert issubclass(ResumeChangedError, LmjaxError)


def test_eval_may_use_other_data_and_batches(trained, env):
    other = trained["dir"] / "other.txt"
    _, out, _ = lmjax(env, "eval", "--workdir", trained["workdir"], f"--config.data.source={other}",
                      "--config.train.batch_size=4", "--config.train.steps=100")
    assert re.search(r"^step 6: val_loss \d", out, re.MULTILINE), out  # evaluating continues no run


def test_allow_changes_resumes_with_the_new_config(trained, copy, env):
    _, out, _ = lmjax(env, "train", "--config", trained["cfg"], "--workdir", copy, "--no_progress",
                      "--config.train.steps=8", "--allow_changes")
    assert "resuming from step 6" in out
    restored = open_workdir(copy).restore(params_only=True)
    assert restored.step == 8 and restored.config.train.steps == 8  # later checkpoints carry the new config


# ---------------------------------------------------------------- one run per workdir


HOLDER = ("import sys, time\nfrom lmjax.train.workdir import open_workdir\n"
          "open_workdir(sys.argv[1]).lock().acquire()\nprint('locked', flush=True)\ntime.sleep(300)\n")


def test_a_second_run_is_refused_and_a_killed_run_holds_no_lock(trained, copy, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = files_under(copy)
        assert commands.main(["train", "--config", trained["cfg"], "--workdir", str(copy), "--no_progress",
                              "--config.train.steps=8", "--allow_changes"]) == 2
        line = one_error_line(capsys.readouterr().err, "train")
        assert f"workdir {copy} is in use by another `lmjax train` (pid {holder.pid} on " in line, line
        assert files_under(copy) == before  # refused before anything was written
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: no chance to clean up
        holder.wait()
    with open_workdir(copy).lock() as lock:  # the kernel released it with the process
        assert lock.path.exists()
        with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()} "):  # this process holds it now
            train(open_workdir(copy).config(), str(copy), progress=False, quiet=True)
    with open_workdir(copy).lock():  # released again on leaving the block
        pass


def test_a_bucket_workdir_is_not_locked():
    lock = open_workdir("gs://bucket-that-is-never-contacted/run").lock()
    assert lock.acquire() is False  # no lock an object store could give back after a crash
    lock.release()
