"""Multi-process runs: the local launcher, distributed init, tokenizing split over processes,
token shards read by ranges, and two real processes x 4 CPU devices training like one x 8.
"""
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lmjax import distributed
from lmjax.data import ByteTokenizer, eval_batches, prepare_tokens, text_source
from lmjax.data.batches import train_rows
from lmjax.data.shards import TokenFile, _load, _split_files
from lmjax.distributed import ProcessGroup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_launcher():
    spec = importlib.util.spec_from_file_location("lmjax_launch_local", os.path.join(ROOT, "launch", "local.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local = _load_launcher()


def write_corpus(root, n_files=7):
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_files):
        lines = [f"file {k} line {n}: the {'quick' if n % 2 else 'slow'} fox jumps {n * k} times.\n"
                 for n in range(40 + 30 * k)]
        (root / f"f{k}.txt").write_text("".join(lines))
    return root


# ---------------------------------------------------------------- tokenizing split over processes


class ThreadGroup(ProcessGroup):
    """N 'processes' as threads, for the collective protocol of prepare_tokens."""

    def __init__(self, index, shared):
        super().__init__(index, shared["count"])
        self.shared = shared

    def barrier(self, name):
        self.shared["barrier"].wait(timeout=30)

    def all_true(self, flag):
        self.shared["flags"][self.index] = bool(flag)
        self.barrier("flags")
        result = all(self.shared["flags"])
        self.barrier("flags-read")
        return result

    def broadcast(self, value):
        if self.index == 0:
            self.shared["value"] = value
        self.barrier("bcast")
        value = self.shared["value"]
        self.barrier("bcast-read")
        return value


def run_group(count, fn):
    shared = {"count": count, "barrier": threading.Barrier(count), "flags": [None] * count}
    results, errors = [None] * count, [None] * count

    def target(i):
        try:
            results[i] = fn(ThreadGroup(i, shared))
        except Exception as e:  # noqa: BLE001
            errors[i] = e

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a process hung"
    return results, errors


def test_split_tokenizing_equals_one_process(tmp_path):
    src = text_source(str(write_corpus(tmp_path / "corpus")))
    one = prepare_tokens(src, ByteTokenizer(), str(tmp_path / "single"), progress=False)
    cache = tmp_path / "shared"
    results, errors = run_group(3, lambda g: prepare_tokens(src, ByteTokenizer(), str(cache), progress=False, group=g))
    assert errors == [None] * 3
    for data in results:
        np.testing.assert_array_equal(data.train, one.train)
        np.testing.assert_array_equal(data.val, one.val)
        assert {k: v for k, v in data.meta.items() if k not in ("dir", "cached")} == \
               {k: v for k, v in one.meta.items() if k not in ("dir", "cached")}
        assert data.meta["cached"] is False
    assert os.listdir(cache) == [one.meta["key"]]  # no parts or probes left behind
    # a second run finds the entry, on every process
    results, _ = run_group(3, lambda g: prepare_tokens(src, ByteTokenizer(), str(cache), progress=False, group=g))
    assert all(r.meta["cached"] for r in results)


def test_split_without_a_shared_cache_tokenizes_on_each_process(tmp_path):
    src = text_source(str(write_corpus(tmp_path / "corpus", 3)))
    results, errors = run_group(2, lambda g: prepare_tokens(src, ByteTokenizer(), str(tmp_path / f"own{g.index}"),
                                                            progress=False, group=g))
    assert errors == [None, None]
    np.testing.assert_array_equal(results[0].train, results[1].train)
    assert results[0].meta["dir"] != results[1].meta["dir"]


def test_split_failure_on_one_process_fails_all_without_hanging(tmp_path):
    src = text_source(str(write_corpus(tmp_path / "corpus", 4)))

    class Crashing(ByteTokenizer):
        def encode_array(self, text, **kw):
            raise RuntimeError("simulated crash")

    cache = tmp_path / "cache"
    _, errors = run_group(2, lambda g: prepare_tokens(src, Crashing() if g.index == 1 else ByteTokenizer(),
                                                      str(cache), progress=False, group=g))
    assert "simulated crash" in str(errors[1]) and "another process" in str(errors[0])
    assert [n for n in os.listdir(cache) if not n.startswith(".")] == []


def test_file_split_is_contiguous_and_balanced():
    parts = _split_files([10, 10, 10, 10, 50, 10], 3)
    assert [list(r) for r in parts] == [[0, 1, 2, 3], [4], [5]]  # starts at bytes 0, >= 33, >= 67
    assert sum(len(r) for r in _split_files([1] * 5, 8)) == 5


def test_token_file_reads_like_the_memory_map(tmp_path):
    """Token shards on a bucket are read by byte ranges through etils.epath (here: a local path)."""
    src = text_source(str(write_corpus(tmp_path / "corpus", 3)))
    mapped = prepare_tokens(src, ByteTokenizer(), str(tmp_path / "cache"), progress=False)
    ranged = _load(mapped.meta["dir"], cached=True, mmap=False)
    assert isinstance(ranged.train, TokenFile) and len(ranged.train) == len(mapped.train)
    np.testing.assert_array_equal(ranged.train[5:40], mapped.train[5:40])
    assert ranged.train[-1] == mapped.train[-1]
    kw = dict(seed=3, step=2, batch_size=8, seq_len=16, start=2, stop=7)
    for k, v in train_rows(ranged.train, **kw).items():
        np.testing.assert_array_equal(v, train_rows(mapped.train, **kw)[k])
    a = list(eval_batches(ranged.val, batch_size=2, seq_len=16, max_batches=2))
    b = list(eval_batches(mapped.val, batch_size=2, seq_len=16, max_batches=2))
    np.testing.assert_array_equal(a[1]["targets"], b[1]["targets"])


# ---------------------------------------------------------------- distributed init


def test_explicit_args_from_flags_or_env():
    assert distributed.explicit_args(env={}) is None
    assert distributed.explicit_args("h:1", 2, 1, env={}) == {
        "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    env = {"LMJAX_COORDINATOR": "10.0.0.1:1234", "LMJAX_NUM_PROCESSES": "4", "LMJAX_PROCESS_ID": "3"}
    assert distributed.explicit_args(env=env)["process_id"] == 3
    assert distributed.explicit_args(process_id=0, env=env)["process_id"] == 0  # flags win
    with pytest.raises(ValueError, match="--num_processes / LMJAX_NUM_PROCESSES"):
        distributed.explicit_args("h:1", None, 0, env={})
    with pytest.raises(ValueError, match=r"--process_id 2 must be in \[0, --num_processes=2\)"):
        distributed.explicit_args("h:1", 2, 2, env={})
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.explicit_args("nohost", 2, 0, env={})


def test_auto_detect():
    assert distributed.auto_detect({}) is None
    assert distributed.auto_detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}) == "slurm"
    assert distributed.auto_detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.auto_detect({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == "tpu"
    assert distributed.auto_detect({"MEGASCALE_COORDINATOR_ADDRESS": "w0:8080"}) == "tpu"


def test_cli_rejects_partial_distributed_flags(capsys):
    from lmjax import commands

    code = commands.main(["train", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", "unused",
                     "--coordinator", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--num_processes" in err


# ---------------------------------------------------------------- the local launcher


def test_launcher_dry_run_prints_commands_and_environment(capsys):
    code = local.main(["--num_processes", "2", "--devices_per_process", "4", "--port", "23456", "--dry-run", "--",
                       "lmjax", "train", "--config", "configs/quickstart.py", "--workdir", "runs/q"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "# process 0" and out[2] == "# process 1"
    for i in (0, 1):
        line = out[2 * i + 1]
        assert line.startswith("JAX_PLATFORMS=cpu XLA_FLAGS=")
        assert "--xla_force_host_platform_device_count=4" in line
        assert "--xla_force_host_platform_device_count=8" not in line  # conftest's flag is replaced
        assert "LMJAX_COORDINATOR=127.0.0.1:23456 LMJAX_NUM_PROCESSES=2 " in line
        assert line.endswith("lmjax train --config configs/quickstart.py --workdir runs/q "
                             f"--coordinator 127.0.0.1:23456 --num_processes 2 --process_id {i}")
    # a command that is not `lmjax train` gets the env vars only
    assert local.plan(["python", "x.py"], 2, 1, 5)[1][0] == ["python", "x.py"]
    assert local.is_lmjax_train(["python", "-m", "lmjax", "train"]) and local.is_lmjax_train(["python", "-m", "lmjax.train"])


def test_launcher_stops_the_others_when_one_fails(capsys, tmp_path):
    # process 1 fails only once process 0 has spoken (a file says so): on a loaded machine
    # process 0 may otherwise be stopped before it has printed anything
    said = str(tmp_path / "said")
    script = ("import os, sys, time\n"
              "i = os.environ['LMJAX_PROCESS_ID']\n"
              "print('hello from', i, flush=True)\n"
              f"if i == '0': open({said!r}, 'w').close(); time.sleep(60)\n"
              f"deadline = time.time() + 20\n"
              f"while not os.path.exists({said!r}) and time.time() < deadline: time.sleep(0.05)\n"
              "sys.exit(3)\n")
    t0 = time.monotonic()
    code = local.run(local.plan([sys.executable, "-c", script], 2, 1, local.free_port()), grace=5)
    assert code == 3 and time.monotonic() - t0 < 30
    out = capsys.readouterr().out
    assert "[0] hello from 0" in out and "[1] hello from 1" in out and "process 1 exited with status 3" in out


# ---------------------------------------------------------------- two processes train like one


OVERRIDES = [  # the quickstart model, shrunk to keep the test short
    "model.n_layer=1", "model.d_model=64", "model.max_len=32", "train.steps=6", "train.batch_size=8",
    "train.log_every=1", "train.eval_every=100", "train.eval_batches=2", "checkpoint.every=3",
    "mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2",
]


def test_two_processes_train_like_one_save_and_resume(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 4)
    overrides = OVERRIDES + [f"data.source={corpus}"]
    # Every run compiles at -O0: these 6-step runs are mostly compiling, and the losses below
    # are compared to rtol 1e-5 (rounding differs far less).
    env = {**os.environ, "LMJAX_CACHE": str(tmp_path / "cache"),
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"}

    def launch(workdir, processes, *extra):
        cmd = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes", str(processes),
               "--devices_per_process", str(8 // processes), "--", sys.executable, "-m", "lmjax", "train",
               "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", str(workdir), "--no_progress",
               *[f"--config.{o}" for o in overrides], *extra]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    two = tmp_path / "two"
    # the DCN split puts data=2 across the two processes
    first = launch(two, 2, "--config.mesh.dcn_data=2", "--stop_at", "3")
    assert "mesh data=2xfsdp=2xtensor=2 over 2 processes" in first
    assert sorted(os.listdir(two / "checkpoints")) == ["3"]
    second = launch(two, 2, "--config.mesh.dcn_data=2")
    assert "[0] resuming from step 3" in second and "[1] resuming" not in second  # process 0 reports
    assert sorted(os.listdir(two / "checkpoints")) == ["3", "6"]

    # One process with the same 8 devices, straight through.
    one = tmp_path / "one"
    assert "mesh data=2xfsdp=2xtensor=2, " in launch(one, 1, "--config.mesh.data=2")

    def records(workdir):
        return [json.loads(line) for line in open(workdir / "metrics.jsonl")]

    two_rec, one_rec = records(two), records(one)
    two_loss = {r["step"]: r["loss"] for r in two_rec if "loss" in r}
    one_loss = {r["step"]: r["loss"] for r in one_rec if "loss" in r}
    # The first step of each run is logged with the second (its compile is kept out of tokens/s):
    # the stopped-and-resumed run logs 2, 3, 5, 6; the straight one 2, 3, 4, 5, 6.
    assert sorted(two_loss) == [2, 3, 5, 6] and sorted(one_loss) == [2, 3, 4, 5, 6]
    np.testing.assert_allclose([two_loss[s] for s in (2, 3, 6)], [one_loss[s] for s in (2, 3, 6)], rtol=1e-5)
    two_val = [r["val_loss"] for r in two_rec if "val_loss" in r]
    one_val = [r["val_loss"] for r in one_rec if "val_loss" in r]
    assert len(one_val) == 1 and two_val == pytest.approx(one_val, rel=1e-5)


def test_bucket_code_path_through_epath(tmp_path, monkeypatch):
    """The gs:// path of the token cache (build locally, upload with meta.json last, read by
    ranges), run on a local directory by treating it as remote: epath serves both."""
    import lmjax.data.shards as shards

    src = text_source(str(write_corpus(tmp_path / "corpus", 3)))
    local_data = prepare_tokens(src, ByteTokenizer(), str(tmp_path / "local"), progress=False)
    monkeypatch.setattr(shards, "is_local", lambda path: False)
    remote = prepare_tokens(src, ByteTokenizer(), str(tmp_path / "bucket"), progress=False)
    assert isinstance(remote.train, TokenFile) and remote.meta["cached"] is False
    np.testing.assert_array_equal(np.asarray(remote.val), local_data.val)
    assert sorted(os.listdir(tmp_path / "bucket" / remote.meta["key"])) == [
        "meta.json", "tokenizer.json", "train.bin", "val.bin"]
    again = prepare_tokens(src, ByteTokenizer(), str(tmp_path / "bucket"), progress=False)
    assert again.meta["cached"] is True


def test_metrics_for_a_bucket_workdir_go_through_a_local_mirror(tmp_path, monkeypatch):
    import lmjax.train.run_metrics as run_metrics

    monkeypatch.setattr(run_metrics, "is_local", lambda path: False)
    workdir = tmp_path / "bucket" / "run"
    cache = str(tmp_path / "cache")
    w = run_metrics.RunMetrics(str(workdir), cache)
    assert not w.local.startswith(str(tmp_path / "bucket"))
    w.write_scalars(1, {"loss": 2.0})
    w.flush()
    assert [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl")] == [2.0]
    w.close()
    w = run_metrics.RunMetrics(str(workdir), cache)  # a resumed run (on another machine) appends
    w.write_scalars(2, {"loss": 1.5})
    w.close()
    assert [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")] == [1, 2]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tb"))
