#!/usr/bin/env python3
"""Write (and with --submit, sbatch) a SLURM batch script that runs `lmjax train` on GPU nodes.

    python launch/slurm.py --nodes 2 --gpus_per_node 8 --partition gpu --time 24:00:00 \\
        --config configs/quickstart.py --workdir /shared/runs/lm --submit -- --config.mesh.fsdp=8

One process per node drives all of that node's GPUs (srun --ntasks-per-node=1). The
coordinator for jax.distributed is the job's first node, computed inside the job with
`scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1`, and passed explicitly with
--coordinator/--num_processes/--process_id (process id = $SLURM_PROCID).

Preemption and time limits: the job is requeueable (#SBATCH --requeue). Slurm signals the
batch shell --signal_seconds before the time limit (USR1); the script sends SIGTERM to the
training processes, which save a checkpoint and exit, then requeues the job (at most
--max_requeues times). A requeued job runs the same command and resumes from the workdir's
latest checkpoint. A scheduler preemption or scancel (TERM) is passed on the same way.

Everything after `--` is passed to `lmjax train` unchanged (config overrides).
Options are spelled with underscores; the hyphenated spellings (--dry-run, ...) are aliases.
--dry_run prints the exact shell commands that write the script and submit it, and does
neither. Standard library only.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpu_pod import mesh_overrides_error  # noqa: E402  (one mesh check for both launchers)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOF_MARK = "LMJAX_SBATCH_EOF"


class LaunchError(Exception):
    """Bad input: reported in one line naming the option."""


def time_limit_seconds(spec: str) -> int:
    """SLURM --time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> seconds."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", spec)
    if not m:
        raise LaunchError(f"--time: expected minutes, HH:MM:SS or D-HH:MM:SS, got {spec!r}")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # H:M:S
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)  # M[:S]


def render(a: argparse.Namespace) -> str:
    """The batch script's text."""
    sb = [f"--job-name={a.job_name}", f"--nodes={a.nodes}", "--ntasks-per-node=1", f"--gpus-per-node={a.gpus_per_node}"]
    sb += [f"--cpus-per-task={a.cpus_per_task}"] if a.cpus_per_task else []
    sb += [f"--partition={a.partition}"] if a.partition else []
    sb += [f"--time={a.time}"] if a.time else []
    sb += [f"--account={a.account}"] if a.account else []
    sb += [f"--chdir={a.chdir}", f"--output={a.output}", "--open-mode=append", "--requeue",
           f"--signal=B:USR1@{a.signal_seconds}", *a.sbatch]
    train = ["python", "-m", "lmjax", "train", "--config", a.config, "--workdir", a.workdir, "--no_progress"]
    srun = ["srun", f"--nodes={a.nodes}", "--ntasks-per-node=1", f"--gpus-per-node={a.gpus_per_node}"]
    srun += [f"--cpus-per-task={a.cpus_per_task}"] if a.cpus_per_task else []
    srun += ["--kill-on-bad-exit=1", "--label"]
    port = f"{a.port}" if a.port else "$((20000 + SLURM_JOB_ID % 20000))"
    lines = [
        "#!/bin/bash",
        f"# lmjax train on {a.nodes} node(s) x {a.gpus_per_node} GPU(s): one process per node.",
        "# Written by launch/slurm.py. Requeued jobs resume from the workdir's latest checkpoint.",
        *(f"#SBATCH {x}" for x in sb),
        "set -o pipefail",
        "export PYTHONUNBUFFERED=1",
        *(f"export {k}={shlex.quote(v)}" for k, v in a.env),
        *a.setup,
        "set -u  # after --setup lines: activation scripts may read unset variables",
        "",
        "# jax.distributed coordinator: the first node of the job; the port follows from the job id.",
        'COORDINATOR_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'COORDINATOR="$COORDINATOR_HOST:{port}"',
        f"TRAIN=({shlex.join(train)}",
        '       --coordinator "$COORDINATOR" --num_processes "$SLURM_NNODES"',
        *(f"       {shlex.quote(o)}" for o in a.overrides),
        "      )",
        'echo "lmjax: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, '
        'coordinator $COORDINATOR"',
        "",
        "# USR1 (time limit near): training gets SIGTERM, saves a checkpoint and exits; then requeue.",
        "# TERM (preemption, scancel): pass it on so the training saves before it is killed.",
        "REQUEUE=0",
        "STOP=0",
        "SRUN_PID=",
        'stop_training() { STOP=1; [ -n "$SRUN_PID" ] && kill -TERM "$SRUN_PID" 2>/dev/null; }',
        "trap 'echo \"lmjax: time limit near: checkpoint, then requeue\"; REQUEUE=1; stop_training' USR1",
        "trap 'echo \"lmjax: SIGTERM: checkpoint and stop\"; stop_training' TERM",
        "",
        f"{shlex.join(srun)} \\",
        '  bash -c \'exec "$@" --process_id "$SLURM_PROCID"\' lmjax-train "${TRAIN[@]}" &',
        "SRUN_PID=$!",
        '[ "$STOP" = 1 ] && stop_training  # a signal that came before the pid was known',
        "# A trapped signal interrupts `wait`; keep waiting until srun itself has exited.",
        'while true; do wait "$SRUN_PID"; RC=$?; kill -0 "$SRUN_PID" 2>/dev/null || break; done',
        f'if [ "$REQUEUE" = 1 ] && [ "${{SLURM_RESTART_COUNT:-0}}" -lt {a.max_requeues} ]; then',
        '  echo "lmjax: requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$RC"',
    ]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slurm.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1, help="nodes; one lmjax process on each")
    p.add_argument("--gpus_per_node", "--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus_per_task", "--cpus-per-task", type=int, default=None,
                   help="CPU cores for each node's process (default 8 per GPU; 0 = leave to the cluster)")
    p.add_argument("--partition", default="")
    p.add_argument("--time", default="", help="time limit, e.g. 24:00:00 or 2-00:00:00")
    p.add_argument("--account", default="")
    p.add_argument("--job_name", "--job-name", default="lmjax")
    p.add_argument("--config", required=True, help="configs/NAME.py[:variant], relative to --chdir")
    p.add_argument("--workdir", required=True, help="on a filesystem every node shares (or gs://)")
    p.add_argument("--chdir", default=REPO_ROOT, help="the lmjax checkout on the cluster (default: this one)")
    p.add_argument("--output", default="%x-%j.out", help="log file (relative to --chdir)")
    p.add_argument("--port", type=int, default=0, help="coordinator port (default: 20000 + job id mod 20000)")
    p.add_argument("--signal_seconds", "--signal-seconds",
                   type=int, default=120, help="checkpoint this long before the time limit")
    p.add_argument("--max_requeues", "--max-requeues",
                   type=int, default=20, help="requeue after a time limit at most this often")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="exported in the script")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="shell line run first, e.g. 'source ~/venvs/lmjax/bin/activate' (repeatable)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH option, e.g. --exclusive or --qos=high (repeatable)")
    p.add_argument("--script", default="", help="where to write the script (default: JOB_NAME.sbatch)")
    p.add_argument("--submit", action="store_true", help="sbatch the script")
    p.add_argument("--dry_run", "--dry-run",
                   action="store_true", help="print the commands, write and submit nothing")
    return p


def _validate(a: argparse.Namespace) -> None:
    if a.nodes < 1:
        raise LaunchError(f"--nodes: must be >= 1, got {a.nodes}")
    if a.gpus_per_node < 1:
        raise LaunchError(f"--gpus_per_node: must be >= 1, got {a.gpus_per_node}")
    if a.cpus_per_task is None:
        a.cpus_per_task = 8 * a.gpus_per_node
    if a.cpus_per_task < 0:
        raise LaunchError(f"--cpus_per_task: must be >= 0, got {a.cpus_per_task}")
    if a.signal_seconds < 1:
        raise LaunchError(f"--signal_seconds: must be >= 1, got {a.signal_seconds}")
    if a.time and time_limit_seconds(a.time) <= a.signal_seconds:
        raise LaunchError(f"--time {a.time} leaves no time before the --signal_seconds={a.signal_seconds} warning")
    if a.max_requeues < 0:
        raise LaunchError(f"--max_requeues: must be >= 0, got {a.max_requeues}")
    if not 0 <= a.port < 65536:
        raise LaunchError(f"--port: must be in 1..65535 (or 0 = from the job id), got {a.port}")
    for opt, value in (("--job_name", a.job_name), ("--partition", a.partition), ("--account", a.account),
                       ("--time", a.time), ("--chdir", a.chdir), ("--output", a.output)):
        if re.search(r"\s", value):
            raise LaunchError(f"{opt}: no whitespace allowed in #SBATCH values, got {value!r}")
    for extra in a.sbatch:
        if not extra.startswith("--") or re.search(r"\s", extra):
            raise LaunchError(f"--sbatch: expected one option like --exclusive or --qos=high, got {extra!r}")
    env = []
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env: expected KEY=VALUE, got {item!r}")
        env.append((key, value))
    a.env = env
    config_path = a.config.partition(":")[0]
    if os.path.isdir(a.chdir) and not os.path.isfile(os.path.join(a.chdir, config_path)):
        raise LaunchError(f"--config: {config_path} not found under --chdir {a.chdir}")
    if a.nodes > 1 and re.match(r"/(tmp|dev/shm|scratch/local)(/|$)", a.workdir):
        raise LaunchError(f"--workdir: {a.workdir} is node-local, but {a.nodes} nodes must share the checkpoints; "
                          "use a shared filesystem path or gs://")
    problem = mesh_overrides_error(a.overrides, a.nodes * a.gpus_per_node, a.nodes,
                                   f"{a.nodes} node(s) x {a.gpus_per_node} GPU(s)")
    if problem:
        raise LaunchError(problem)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and validate; everything after `--` is passed to `lmjax train` (config overrides)."""
    overrides = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1:]
    p = _parser()
    a = p.parse_args(argv)
    a.overrides = overrides
    try:
        _validate(a)
    except LaunchError as e:
        p.error(str(e))
    a.script = a.script or f"{a.job_name}.sbatch"
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    text = render(a)
    if a.dry_run:
        print(f"cat > {shlex.quote(a.script)} <<'{EOF_MARK}'\n{text}{EOF_MARK}")
        print(shlex.join(["sbatch", a.script]))
        return 0
    tmp = a.script + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, a.script)
    if not a.submit:
        print(f"wrote {a.script}; submit it with: sbatch {shlex.quote(a.script)}")
        return 0
    print("+ " + shlex.join(["sbatch", a.script]), file=sys.stderr)
    try:
        return subprocess.run(["sbatch", a.script]).returncode
    except FileNotFoundError:
        print("slurm.py: error: sbatch not found on PATH (run this on the cluster's login node)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
