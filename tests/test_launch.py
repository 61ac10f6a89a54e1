"""The cluster launchers: exact --dry_run commands, input errors, the TPU launcher's preemption
loop (against a scripted fake gcloud) and the SLURM batch script run by bash under fake
srun/scontrol/python. No network, no gcloud, no SLURM, no JAX."""
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")


def _load(name, filename):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(LAUNCH, filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tpu = _load("tpu_pod", "tpu_pod.py")
slurm = _load("lmjax_launch_slurm", "slurm.py")

POD = ["--name", "lm-v5e16", "--zone", "us-west4-a", "--project", "my-proj", "--accelerator_type", "v5litepod-16"]
RUN = ["run", *POD, "--workdir", "gs://bkt/runs/lm", "--config", "configs/quickstart.py"]
WHERE = "--zone=us-west4-a --project=my-proj"
KEEPALIVE = "--ssh-flag=-oServerAliveInterval=60 --ssh-flag=-oServerAliveCountMax=10"


def dry_run(module, argv, capsys):
    cut = argv.index("--") if "--" in argv else len(argv)  # after `--` all goes to lmjax train
    assert module.main(argv[:cut] + ["--dry_run"] + argv[cut:]) == 0
    return capsys.readouterr().out


# ---- TPU pod launcher: dry run ----------------------------------------------------------

def test_tpu_dry_run_prints_exact_commands(capsys):
    out = dry_run(tpu, RUN + ["--spot", "--source", ROOT, "--", "--config.mesh.fsdp=16"], capsys)
    tarball = os.path.join(tempfile.gettempdir(), "lmjax-src-lm-v5e16.tar.gz")
    assert out.splitlines() == [
        f"gcloud compute tpus tpu-vm describe lm-v5e16 {WHERE} '--format=value(state)'",
        f"gcloud compute tpus tpu-vm create lm-v5e16 {WHERE} --accelerator-type=v5litepod-16 "
        "--version=v2-alpha-tpuv5-lite --spot",
        f"gcloud compute tpus tpu-vm describe lm-v5e16 {WHERE} '--format=value(state)'",
        f"tar -czf {tarball} --exclude=.git --exclude=__pycache__ '--exclude=*.egg-info' --exclude=./runs "
        f"-C {shlex.quote(ROOT)} .",
        f"gcloud compute tpus tpu-vm scp {tarball} lm-v5e16:lmjax-src.tar.gz {WHERE} --worker=all",
        f"gcloud compute tpus tpu-vm ssh lm-v5e16 {WHERE} --worker=all {KEEPALIVE} \"--command=set -e; "
        "rm -rf lmjax && mkdir -p lmjax && tar -xzf lmjax-src.tar.gz -C lmjax && "
        "python3 -m pip install --quiet 'jax[tpu]' -e ./lmjax\"",
        f"gcloud compute tpus tpu-vm ssh lm-v5e16 {WHERE} --worker=all {KEEPALIVE} '--command=cd lmjax && "
        "python3 -m lmjax train --config configs/quickstart.py --workdir gs://bkt/runs/lm --no_progress "
        "--config.mesh.fsdp=16'",
    ]


def _remote_train_argv(line):
    """The `lmjax train` argv that a dry-run ssh line runs on every worker, as the shell would split it."""
    words = shlex.split(line)
    assert words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in words
    [command] = [w[len("--command="):] for w in words if w.startswith("--command=")]
    remote = shlex.split(command)
    assert remote[:3] == ["cd", "lmjax", "&&"]
    return remote[3:]


@pytest.mark.parametrize("override", [
    "--config.data.source=gs://bkt/my corpus/*.txt",  # a space and a glob
    "--config.train.sample_prompt=it's $HOME `x` \\n",  # a single quote and shell metacharacters
])
def test_tpu_dry_run_passes_overrides_through_both_shells(capsys, override):
    out = dry_run(tpu, RUN + ["--env", "LIBTPU_INIT_ARGS=--xla_tpu_x=1 --y", "--", override,
                              "--config.mesh.data", "4", "--config.mesh.fsdp=4"], capsys)
    argv = _remote_train_argv(out.splitlines()[-1])
    assert argv == ["LIBTPU_INIT_ARGS=--xla_tpu_x=1 --y", "python3", "-m", "lmjax", "train", "--config",
                    "configs/quickstart.py", "--workdir", "gs://bkt/runs/lm", "--no_progress", override,
                    "--config.mesh.data", "4", "--config.mesh.fsdp=4"]


def test_tpu_dry_run_queued_spot_from_git(capsys):
    out = dry_run(tpu, RUN + ["--queued", "--spot", "--repo", "https://github.com/me/lmjax.git", "--rev", "v0.1",
                              "--version", "v2-alpha-tpuv5-lite"], capsys)
    lines = out.splitlines()
    assert lines[0] == (f"gcloud compute tpus queued-resources describe lm-v5e16 {WHERE} "
                        "'--format=value(state.state)'")
    assert lines[1] == (f"gcloud compute tpus queued-resources create lm-v5e16 --node-id=lm-v5e16 {WHERE} "
                        "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot")
    assert lines[3] == (f"gcloud compute tpus tpu-vm ssh lm-v5e16 {WHERE} --worker=all {KEEPALIVE} "
                        "\"--command=set -e; rm -rf lmjax && git clone --quiet https://github.com/me/lmjax.git "
                        "lmjax && git -C lmjax checkout --quiet v0.1 && python3 -m pip install --quiet "
                        "'jax[tpu]' -e ./lmjax\"")
    assert len(lines) == 5 and not any(line.startswith(("tar ", "gcloud compute tpus tpu-vm scp")) for line in lines)
    assert _remote_train_argv(lines[4])[:4] == ["python3", "-m", "lmjax", "train"]


def test_tpu_dry_run_down(capsys):
    assert dry_run(tpu, ["down", "--name", "lm", "--zone", "z1", "--queued"], capsys) == \
        "gcloud compute tpus queued-resources delete lm --zone=z1 --quiet --force\n"
    assert dry_run(tpu, ["down", "--name", "lm", "--zone", "z1"], capsys) == \
        "gcloud compute tpus tpu-vm delete lm --zone=z1 --quiet\n"


def test_tpu_dry_run_as_a_script():
    out = subprocess.run([sys.executable, os.path.join(LAUNCH, "tpu_pod.py"), *RUN, "--dry_run"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert len(out.splitlines()) == 7 and "--worker=all" in out.splitlines()[-1]


@pytest.mark.parametrize("acc, shape", [
    ("v5litepod-16", (16, 4)), ("v5litepod-8", (8, 1)), ("v6e-256", (256, 64)), ("v4-32", (16, 4)),
    ("v4-8", (4, 1)), ("v5p-128", (64, 16)), ("v3-8", (8, 1)), ("v2-32", (32, 4)), ("v9x-8", (None, None)),
])
def test_tpu_shape(acc, shape):
    assert tpu.tpu_shape(acc) == shape


@pytest.mark.parametrize("argv, message", [
    (["--workdir", "runs/lm"], "--workdir: v5litepod-16 spans 4 hosts, so the workdir must be a gs://"),
    (["--accelerator_type", "v5e16"], "--accelerator_type: expected a Cloud TPU type"),
    (["--name", "My_TPU"], "--name: lowercase letters"),
    (["--config", "configs/nope.py"], "--config: configs/nope.py not found"),
    (["--max_restarts", "-1"], "--max_restarts: must be >= 0"),
    (["--env", "1X=2"], "--env: expected KEY=VALUE"),
    (["--accelerator_type", "v9x-8"], "--version: no default TPU runtime for v9x"),
    (["--", "--config.mesh.fsdp=3"], "--config.mesh: fsdp=3 = 3 devices does not fit the 16 devices of v5litepod-16"),
    (["--", "--config.mesh.dcn_data=3"], "--config.mesh: dcn_data=3 = 3 devices does not fit"),
    (["--", "--config.mesh.dcn_data=8", "--config.mesh.fsdp=2"], "does not divide the 4 processes (hosts)"),
    (["--", "--config.mesh.tensor=two"], "--config.mesh.tensor: expected an integer"),
])
def test_tpu_bad_input_names_the_option(capsys, argv, message):
    base = list(RUN)
    for flag, value in zip(argv[::2], argv[1::2]):  # replace a flag's value, or append it
        if flag in base:
            base[base.index(flag) + 1] = value
        elif flag != "--":
            base += [flag, value]
    if "--" in argv:
        base += argv[argv.index("--"):]
    with pytest.raises(SystemExit) as e:
        tpu.main(["--dry_run"] + base)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_tpu_single_host_local_workdir_only_warns(capsys):
    argv = ["run", "--name", "one", "--zone", "z", "--accelerator_type", "v5litepod-8", "--workdir", "runs/x",
            "--config", "configs/quickstart.py", "--dry_run"]
    assert tpu.main(argv) == 0
    assert "lost when it is preempted" in capsys.readouterr().err


# ---- TPU pod launcher: the preemption loop against a scripted gcloud ------------------------

class FakeGcloud:
    """Answers `describe` from a script of states (None = not found) and the training ssh with
    scripted exit codes; records every command. Everything scripted must be used up."""

    def __init__(self, states, train_rcs):
        self.states, self.train_rcs, self.calls = list(states), list(train_rcs), []

    def __call__(self, argv, capture=False):
        self.calls.append(list(argv))
        if "describe" in argv:
            state = self.states.pop(0)
            return tpu.Result(1) if state is None else tpu.Result(0, state + "\n")
        if any(w.startswith("--command=cd ") for w in argv):
            return tpu.Result(self.train_rcs.pop(0))
        return tpu.Result(0)

    def verbs(self):
        """The sequence of actions, e.g. ['describe', 'create', 'describe', 'setup', 'train']."""
        out = []
        for argv in self.calls:
            if argv[0] == "tar" or "scp" in argv or any(w.startswith("--command=set -e") for w in argv):
                if not out or out[-1] != "setup":
                    out.append("setup")
            elif any(w.startswith("--command=cd ") for w in argv):
                out.append("train")
            else:
                out.append(argv[4])  # describe / create / delete
        return out

    def used_up(self):
        return not self.states and not self.train_rcs


def _pod(extra, fake):
    args = tpu.parse_args(RUN + extra)
    sleeps = []
    return tpu.Pod(args, fake, sleep=sleeps.append, log=lambda msg: None), sleeps


def test_preempted_vm_is_recreated_and_training_rerun():
    fake = FakeGcloud(states=[None, "READY", "PREEMPTED", "READY"], train_rcs=[255, 0])
    pod, sleeps = _pod(["--spot"], fake)
    assert pod.run() == 0
    assert fake.verbs() == ["describe", "create", "describe", "setup", "train",
                            "describe", "delete", "create", "describe", "setup", "train"]
    assert fake.used_up() and sleeps == []
    creates = [c for c in fake.calls if c[4] == "create"]
    assert all("--spot" in c and "--accelerator-type=v5litepod-16" in c for c in creates)


def test_queued_resource_waits_in_queue_and_restarts_after_suspension():
    states = [None, "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE",  # queued, then granted
              "SUSPENDED", "ACCEPTED", "ACTIVE",  # preempted: delete + create, queued again
              "FAILED", "ACTIVE"]  # setup failed because the slice failed: again
    fake = FakeGcloud(states=states, train_rcs=[1, 0])
    fake_setup_fails_once = {"done": False}

    def runner(argv, capture=False):
        if argv[0] == "tar" and fake.verbs().count("train") == 1 and not fake_setup_fails_once["done"]:
            fake_setup_fails_once["done"] = True
            fake.calls.append(list(argv))
            return tpu.Result(255)
        return fake(argv, capture)

    pod, sleeps = _pod(["--queued", "--spot", "--poll_seconds", "7"], runner)
    assert pod.run() == 0
    assert fake.verbs() == ["describe", "create", "describe", "describe", "describe", "setup", "train",
                            "describe", "delete", "create", "describe", "describe", "setup",
                            "describe", "delete", "create", "describe", "setup", "train"]
    assert sleeps == [7, 7, 7] and fake.used_up()
    deletes = [c for c in fake.calls if c[4] == "delete"]
    assert all(c[:4] == ["gcloud", "compute", "tpus", "queued-resources"] and "--force" in c for c in deletes)


def test_restarts_stop_at_max_restarts(capsys):
    fake = FakeGcloud(states=[None, "READY"] + ["PREEMPTED", "READY"] * 2 + ["PREEMPTED"], train_rcs=[255] * 3)
    assert tpu.main(RUN + ["--max_restarts", "2"], runner=fake, sleep=lambda s: None) == 1
    assert fake.verbs().count("train") == 3 and fake.verbs().count("create") == 3
    assert fake.used_up()
    assert "--max_restarts=2 reached" in capsys.readouterr().err


def test_failure_on_a_healthy_tpu_is_not_retried(capsys):
    fake = FakeGcloud(states=["READY", "READY"], train_rcs=[1])
    assert tpu.main(RUN, runner=fake, sleep=lambda s: None) == 1
    assert fake.verbs() == ["describe", "setup", "train", "describe"] and fake.used_up()
    assert "not a preemption, so not restarting" in capsys.readouterr().err


def test_ready_tpu_is_reused_and_lost_one_replaced():
    fake = FakeGcloud(states=["READY"], train_rcs=[0])
    assert _pod([], fake)[0].run() == 0
    assert fake.verbs() == ["describe", "setup", "train"]
    fake = FakeGcloud(states=["TERMINATED", "CREATING", "READY"], train_rcs=[0])
    assert _pod(["--skip_setup"], fake)[0].run() == 0
    assert fake.verbs() == ["describe", "delete", "create", "describe", "describe", "train"]


# ---- SLURM launcher ----------------------------------------------------------------------

SLURM = ["--nodes", "2", "--gpus_per_node", "8", "--partition", "gpu", "--time", "24:00:00", "--account", "acct",
         "--job_name", "lm", "--chdir", ROOT, "--config", "configs/quickstart.py", "--workdir", "/shared/runs/lm"]


def test_slurm_dry_run_script(capsys):
    out = dry_run(slurm, SLURM + ["--", "--config.mesh.dcn_data=2", "--config.mesh.fsdp=8",
                                  "--config.data.source=/shared/my corpus/*.txt"], capsys)
    lines = out.splitlines()
    assert lines[0] == "cat > lm.sbatch <<'LMJAX_SBATCH_EOF'" and lines[1] == "#!/bin/bash"
    assert lines[-2:] == ["LMJAX_SBATCH_EOF", "sbatch lm.sbatch"]
    assert [x for x in lines if x.startswith("#SBATCH")] == [
        "#SBATCH --job-name=lm", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=64", "#SBATCH --partition=gpu", "#SBATCH --time=24:00:00",
        "#SBATCH --account=acct", f"#SBATCH --chdir={ROOT}", "#SBATCH --output=%x-%j.out",
        "#SBATCH --open-mode=append", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"]
    assert 'COORDINATOR_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in lines
    assert 'COORDINATOR="$COORDINATOR_HOST:$((20000 + SLURM_JOB_ID % 20000))"' in lines
    assert ("srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --cpus-per-task=64 --kill-on-bad-exit=1 "
            "--label \\") in lines
    assert '  scontrol requeue "$SLURM_JOB_ID"' in lines
    start = lines.index("TRAIN=(python -m lmjax train --config configs/quickstart.py --workdir /shared/runs/lm "
                        "--no_progress")
    assert lines[start + 1:start + 6] == [
        '       --coordinator "$COORDINATOR" --num_processes "$SLURM_NNODES"',
        "       --config.mesh.dcn_data=2", "       --config.mesh.fsdp=8",
        "       '--config.data.source=/shared/my corpus/*.txt'", "      )"]


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "0"], "--nodes: must be >= 1, got 0"),
    (["--gpus_per_node", "0"], "--gpus_per_node: must be >= 1"),
    (["--time", "1 day"], "--time: expected minutes"),
    (["--time", "2"], "--time 2 leaves no time before the --signal_seconds=120 warning"),
    (["--workdir", "/tmp/run"], "--workdir: /tmp/run is node-local"),
    (["--config", "configs/nope.py"], "--config: configs/nope.py not found under --chdir"),
    (["--sbatch", "exclusive"], "--sbatch: expected one option"),
    (["--job_name", "my job"], "--job_name: no whitespace"),
    (["--", "--config.mesh.fsdp=6"], "--config.mesh: fsdp=6 = 6 devices does not fit the 16 devices of 2 node(s)"),
])
def test_slurm_bad_input_names_the_option(capsys, argv, message):
    base = list(SLURM)
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag in base:
            base[base.index(flag) + 1] = value
        elif flag != "--":
            base += [flag, value]
    if "--" in argv:
        base += argv[argv.index("--"):]
    with pytest.raises(SystemExit) as e:
        slurm.main(["--dry_run"] + base)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("spec, seconds", [
    ("90", 5400), ("90:30", 5430), ("24:00:00", 86400), ("2-00", 172800), ("1-02:03", 93780), ("1-0:0:5", 86405)])
def test_slurm_time_limits(spec, seconds):
    assert slurm.time_limit_seconds(spec) == seconds


FAKES = {
    # srun: drop its options, start SLURM_NNODES tasks, forward TERM to them, exit with the worst status.
    "srun": r"""#!/bin/bash
while [ "${1#--}" != "$1" ]; do shift; done
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done
touch "$FAKE_LOG/srun_ready"
rc=0
for p in "${pids[@]}"; do
  while true; do wait "$p"; r=$?; kill -0 "$p" 2>/dev/null || break; done
  [ "$r" -ne 0 ] && rc=$r
done
exit $rc
""",
    "scontrol": r"""#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-node-07\ngpu-node-08\n'; exit 0; fi
echo "$*" >> "$FAKE_LOG/scontrol"
""",
    # python: record argv; in "wait" mode run until SIGTERM, then "save" and exit 0.
    "python": r"""#!/bin/bash
printf '%s\n' "$@" > "$FAKE_LOG/argv.$SLURM_PROCID"
if [ "${FAKE_MODE:-}" = wait ]; then
  trap 'echo saved > "$FAKE_LOG/saved.$SLURM_PROCID"; exit 0' TERM
  touch "$FAKE_LOG/started.$SLURM_PROCID"
  for i in $(seq 1 400); do sleep 0.05; done
  exit 3
fi
""",
    "sbatch": r"""#!/bin/bash
echo "$*" >> "$FAKE_LOG/sbatch"
""",
}


@pytest.fixture
def fake_slurm(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(log),
               SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu-node-[07-08]", SLURM_NNODES="2")
    env.pop("SLURM_RESTART_COUNT", None)
    return tmp_path, log, env


def _write_script(tmp_path, env, capsys, overrides=("--config.mesh.dcn_data=2", "--config.mesh.fsdp=8")):
    """Run the dry run's own output in bash: it must write the script and call sbatch on it."""
    out = dry_run(slurm, SLURM + ["--", *overrides], capsys)
    subprocess.run(["bash", "-c", out], cwd=tmp_path, env=env, check=True)
    script = tmp_path / "lm.sbatch"
    assert script.read_text() == slurm.render(slurm.parse_args(SLURM + ["--", *overrides]))
    assert (tmp_path / "log" / "sbatch").read_text() == "lm.sbatch\n"
    return script


def test_slurm_script_runs_one_process_per_node(fake_slurm, capsys):
    tmp_path, log, env = fake_slurm
    override = "--config.data.source=/shared/my corpus/*.txt"
    script = _write_script(tmp_path, env, capsys, overrides=("--config.mesh.fsdp=8", override))
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    for rank in (0, 1):
        argv = (log / f"argv.{rank}").read_text().splitlines()
        assert argv == ["-m", "lmjax", "train", "--config", "configs/quickstart.py", "--workdir", "/shared/runs/lm",
                        "--no_progress", "--coordinator", "gpu-node-07:24242", "--num_processes", "2",
                        "--config.mesh.fsdp=8", override, "--process_id", str(rank)]
    assert not (log / "scontrol").exists()  # finished: no requeue


@pytest.mark.parametrize("sig, restart_count, requeued", [
    (signal.SIGUSR1, "0", True),  # time limit near: checkpoint, requeue
    (signal.SIGUSR1, "20", False),  # --max_requeues reached
    (signal.SIGTERM, "0", False),  # preemption / scancel: checkpoint, Slurm decides
])
def test_slurm_signal_checkpoints_then_requeues(fake_slurm, capsys, sig, restart_count, requeued):
    tmp_path, log, env = fake_slurm
    script = _write_script(tmp_path, env, capsys)
    env.update(FAKE_MODE="wait", SLURM_RESTART_COUNT=restart_count)
    proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 20
    while not all((log / name).exists() for name in ("started.0", "started.1", "srun_ready")):
        assert time.time() < deadline and proc.poll() is None, "training never started"
        time.sleep(0.02)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert (log / "saved.0").exists() and (log / "saved.1").exists()  # both processes checkpointed
    assert (log / "scontrol").exists() == requeued
    if requeued:
        assert (log / "scontrol").read_text() == "requeue 4242\n"


def test_slurm_writes_the_script_without_dry_run(tmp_path, capsys):
    path = tmp_path / "job.sbatch"
    assert slurm.main(SLURM + ["--script", str(path)]) == 0
    assert path.read_text() == slurm.render(slurm.parse_args(SLURM + ["--script", str(path)]))
    assert os.access(path, os.X_OK) and f"sbatch {path}" in capsys.readouterr().out


def test_slurm_dry_run_as_a_script():
    out = subprocess.run([sys.executable, os.path.join(LAUNCH, "slurm.py"), *SLURM, "--dry_run"],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "sbatch lm.sbatch"


# ---- launch/README.md shows what the launchers really print ---------------------------------

def _readme_blocks():
    """(language, text) of each fenced block in launch/README.md."""
    with open(os.path.join(LAUNCH, "README.md"), encoding="utf-8") as f:
        parts = f.read().split("```")
    return [(b.split("\n", 1)[0], b.split("\n", 1)[1]) for b in parts[1::2]]


@pytest.mark.parametrize("module_name", ["tpu_pod.py", "slurm.py"])
def test_readme_examples_match_the_dry_run(capsys, monkeypatch, module_name):
    monkeypatch.chdir(ROOT)  # the examples run from the checkout's root
    blocks = _readme_blocks()
    [i] = [i for i, (_, text) in enumerate(blocks) if text.startswith(f"python launch/{module_name} ")]
    argv = shlex.split(blocks[i][1].replace("\\\n", " "))[2:]
    module = tpu if module_name == "tpu_pod.py" else slurm
    out = dry_run(module, argv, capsys).replace(tempfile.gettempdir() + "/", "/tmp/")
    assert out == blocks[i + 1][1]


# ---- one flag style: underscores, with the hyphenated spellings kept as aliases ------------

TPU_FLAGS = [("--accelerator_type", "v5litepod-8", "v5litepod-8"), ("--remote_dir", "src", "src"),
             ("--max_restarts", "3", 3), ("--poll_seconds", "5", 5.0), ("--timeout_minutes", "2", 2.0),
             ("--skip_setup", None, True), ("--dry_run", None, True)]
SLURM_FLAGS = [("--gpus_per_node", "4", 4), ("--cpus_per_task", "16", 16), ("--job_name", "j", "j"),
               ("--signal_seconds", "90", 90), ("--max_requeues", "3", 3), ("--dry_run", None, True)]
TPU_BASE = ["run", "--name", "one", "--zone", "z", "--workdir", "gs://b/r", "--config", "configs/quickstart.py"]
SLURM_BASE = ["--chdir", ROOT, "--config", "configs/quickstart.py", "--workdir", "/shared/r"]


def _spelled(flags, hyphens: bool) -> list[str]:
    argv = []
    for flag, value, _ in flags:
        argv += [flag.replace("_", "-") if hyphens else flag] + ([] if value is None else [value])
    return argv


@pytest.mark.parametrize("module, base, flags", [(tpu, TPU_BASE, TPU_FLAGS), (slurm, SLURM_BASE, SLURM_FLAGS)],
                         ids=["tpu_pod", "slurm"])
def test_underscore_flags_and_hyphenated_aliases_parse_alike(monkeypatch, module, base, flags):
    monkeypatch.chdir(ROOT)
    underscores = module.parse_args(base + _spelled(flags, hyphens=False))
    hyphens = module.parse_args(base + _spelled(flags, hyphens=True))
    assert vars(underscores) == vars(hyphens)
    for flag, _, want in flags:
        assert getattr(underscores, flag[2:]) == want, flag
    # the documented (first) spelling of every multi-word option is the underscore one
    for action in module._parser()._actions:
        long = [s for s in action.option_strings if s.startswith("--")]
        if any("-" in s[2:] or "_" in s[2:] for s in long):
            assert "_" in long[0][2:] and "-" not in long[0][2:], long


def test_local_launcher_dry_run_alias(capsys):
    local = _load("lmjax_launch_local", "local.py")
    outs = []
    for flag in ("--dry_run", "--dry-run"):
        assert local.main(["--num_processes", "2", "--port", "12000", flag, "--", "lmjax", "train"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and "--process_id 1" in outs[0]
