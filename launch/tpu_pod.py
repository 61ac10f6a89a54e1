#!/usr/bin/env python3
"""Run `lmjax train` on every worker of a Cloud TPU VM slice, and keep it running through preemptions.

    python launch/tpu_pod.py run --name lm-v5e16 --zone us-west4-a --accelerator_type v5litepod-16 --spot \\
        --workdir gs://BUCKET/runs/lm --config configs/quickstart.py -- --config.mesh.fsdp=16

Subcommands:
  up    create the TPU VM (or, with --queued, a queued resource) unless one of that name is
        already READY, then copy the code to every worker and install it there
  run   `up`, then `lmjax train` on all workers at once (`ssh --worker=all`). When the run
        fails because the TPU was preempted (VM state PREEMPTED/TERMINATED, queued resource
        SUSPENDED/FAILED, or gone), delete and recreate it, reinstall and rerun, at most
        --max_restarts times; training resumes from the latest checkpoint in the gs:// workdir.
        A failure on a healthy TPU is a bug, not a preemption: it is reported, not retried.
  down  delete the TPU VM (with --queued: the queued resource and its node)

Everything after `--` is passed to `lmjax train` unchanged (config overrides).
Options are spelled with underscores; the hyphenated spellings (--dry-run, ...) are aliases.
--dry_run prints the commands (one per line, shell-quoted) that a fresh project, where the
TPU does not exist yet, would run, and runs nothing. Standard library only; the real thing
needs the Google Cloud CLI (`gcloud`) on PATH.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

READY = {"READY", "ACTIVE"}  # a usable TPU VM / queued resource
LOST = {  # preempted or otherwise gone for good: delete and recreate
    "vm": {"PREEMPTED", "TERMINATED"},
    "queued": {"SUSPENDING", "SUSPENDED", "FAILED"},
}
DEFAULT_RUNTIME = {  # TPU VM software version per accelerator family
    "v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e",
}
TARBALL = "lmjax-src.tar.gz"  # name of the source tarball on each worker (in $HOME)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LaunchError(Exception):
    """A problem the user must fix (or a run that cannot be continued): one line, no traceback."""


@dataclass
class Result:
    returncode: int
    stdout: str = ""


Runner = Callable[..., Result]  # runner(argv, capture=False) -> Result


def quote(word: str) -> str:
    """shlex.quote, but double quotes around a word whose only special character inside is `'`.

    Both read back the same through a POSIX shell and shlex.split; the double-quoted form keeps
    a remote `--command=...` that itself quotes an override readable.
    """
    quoted = shlex.quote(word)
    if "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return quoted


def join(argv: list[str]) -> str:
    return " ".join(quote(w) for w in argv)


def subprocess_runner(argv: list[str], capture: bool = False) -> Result:
    """Run a command for real, echoing it to stderr first."""
    print("+ " + join(argv), file=sys.stderr, flush=True)
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.DEVNULL if capture else None, text=True)
    except FileNotFoundError:
        raise LaunchError(f"{argv[0]} not found on PATH (install the Google Cloud CLI, or use --dry_run)") from None
    return Result(done.returncode, done.stdout or "")


class DryRunner:
    """Prints each command instead of running it; answers `describe` as a fresh project would."""

    def __init__(self, out=None):
        self.out, self.exists = out or sys.stdout, False

    def __call__(self, argv: list[str], capture: bool = False) -> Result:
        print(join(argv), file=self.out)
        verb = argv[4] if argv[:3] == ["gcloud", "compute", "tpus"] and len(argv) > 4 else ""
        if verb == "describe":
            if not self.exists:
                return Result(1)
            return Result(0, "ACTIVE" if argv[3] == "queued-resources" else "READY")
        if verb in ("create", "delete"):
            self.exists = verb == "create"
        return Result(0)


def tpu_shape(accelerator_type: str) -> tuple[int | None, int | None]:
    """(JAX devices, hosts) of an accelerator type such as v5litepod-16 or v4-32; None where unknown."""
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type)
    if not m:
        raise LaunchError(f"--accelerator_type: expected a Cloud TPU type such as v5litepod-16, v4-32 or "
                          f"v6e-8, got {accelerator_type!r}")
    family, n = m.group(1), int(m.group(2))
    if family in ("v5litepod", "v6e"):  # n chips, one device each; 4 chips per host above 8
        return n, 1 if n <= 8 else n // 4
    if family in ("v2", "v3"):  # n TensorCores, one device each; 8 per host
        return n, max(1, n // 8)
    if family in ("v4", "v5p"):  # n TensorCores, 2 per chip (one megacore device); 4 chips per host
        return max(1, n // 2), max(1, n // 8)
    return None, None


def mesh_overrides_error(overrides: list[str], n_devices: int, n_processes: int | None, what: str) -> str | None:
    """Why the `--config.mesh.*` sizes among `overrides` cannot fit the machine, or None.

    Only what the overrides alone decide is checked (the config file may set other sizes):
    the fixed sizes must divide the device count, the fixed dcn_* sizes the process count
    (a DCN group is a host, or a TPU slice), and all six fixed must multiply to the devices.
    """
    sizes, i = {}, 0
    while i < len(overrides):
        m = re.fullmatch(r"--config\.mesh\.((?:dcn_)?(?:data|fsdp|tensor))(?:=(.*))?", overrides[i])
        if m:
            value = m.group(2) if m.group(2) is not None else (overrides[i + 1] if i + 1 < len(overrides) else "")
            i += m.group(2) is None
            try:
                sizes[m.group(1)] = int(value)
            except ValueError:
                return f"--config.mesh.{m.group(1)}: expected an integer (-1 = fill), got {value!r}"
        i += 1
    fixed = {k: v for k, v in sizes.items() if v > 0}
    dcn = {k: v for k, v in fixed.items() if k.startswith("dcn_")}

    def prod(d):
        out = 1
        for v in d.values():
            out *= v
        return out

    def shown(d):
        return " x ".join(f"{k}={v}" for k, v in d.items())

    if n_devices % prod(fixed) or (len(fixed) == 6 and prod(fixed) != n_devices):
        return f"--config.mesh: {shown(fixed)} = {prod(fixed)} devices does not fit the {n_devices} devices of {what}"
    if n_processes and n_processes % prod(dcn):
        return (f"--config.mesh: {shown(dcn)} = {prod(dcn)} DCN groups does not divide the {n_processes} "
                f"processes (hosts) of {what}")
    return None


class Pod:
    """One TPU VM slice (optionally behind a queued resource) and the lmjax run on it."""

    def __init__(self, args, runner: Runner, sleep: Callable[[float], None] = time.sleep, log=None):
        self.a, self.run_cmd, self.sleep = args, runner, sleep
        self.log = log or (lambda msg: print(f"tpu_pod: {msg}", file=sys.stderr, flush=True))
        self.kind = "queued" if args.queued else "vm"

    # -- the gcloud commands -------------------------------------------------------------
    def _where(self) -> list[str]:
        return [f"--zone={self.a.zone}"] + ([f"--project={self.a.project}"] if self.a.project else [])

    def _api(self) -> list[str]:
        return ["gcloud", "compute", "tpus", "queued-resources" if self.a.queued else "tpu-vm"]

    def describe_cmd(self) -> list[str]:
        fmt = "value(state.state)" if self.a.queued else "value(state)"
        return self._api() + ["describe", self.a.name, *self._where(), f"--format={fmt}"]

    def create_cmd(self) -> list[str]:
        a = self.a
        if a.queued:
            cmd = self._api() + ["create", a.name, f"--node-id={a.name}", *self._where(),
                                 f"--accelerator-type={a.accelerator_type}", f"--runtime-version={a.version}"]
        else:
            cmd = self._api() + ["create", a.name, *self._where(),
                                 f"--accelerator-type={a.accelerator_type}", f"--version={a.version}"]
        return cmd + (["--spot"] if a.spot else [])

    def delete_cmd(self) -> list[str]:
        return self._api() + ["delete", self.a.name, *self._where(), "--quiet"] + (["--force"] if self.a.queued else [])

    def ssh_cmd(self, command: str) -> list[str]:
        # Keepalives: a worker that vanishes (preemption) ends the ssh in ~10 minutes, not hours.
        return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.a.name, *self._where(), "--worker=all",
                "--ssh-flag=-oServerAliveInterval=60", "--ssh-flag=-oServerAliveCountMax=10",
                f"--command={command}"]

    def setup_cmds(self) -> list[list[str]]:
        """Put the code on every worker (a tarball of --source, or a clone of --repo) and pip-install it."""
        a, rdir = self.a, shlex.quote(self.a.remote_dir)
        install = f"python3 -m pip install --quiet {shlex.quote(a.jax)} -e {shlex.quote(os.path.join('.', a.remote_dir))}"
        if a.repo:
            fetch = f"rm -rf {rdir} && git clone --quiet {shlex.quote(a.repo)} {rdir}"
            if a.rev:
                fetch += f" && git -C {rdir} checkout --quiet {shlex.quote(a.rev)}"
            return [self.ssh_cmd(f"set -e; {fetch} && {install}")]
        local = os.path.join(tempfile.gettempdir(), f"lmjax-src-{a.name}.tar.gz")
        tar = ["tar", "-czf", local, "--exclude=.git", "--exclude=__pycache__", "--exclude=*.egg-info",
               "--exclude=./runs", "-C", a.source, "."]
        scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{a.name}:{TARBALL}", *self._where(),
               "--worker=all"]
        unpack = f"rm -rf {rdir} && mkdir -p {rdir} && tar -xzf {TARBALL} -C {rdir}"
        return [tar, scp, self.ssh_cmd(f"set -e; {unpack} && {install}")]

    def train_argv(self) -> list[str]:
        a = self.a
        return ["python3", "-m", "lmjax", "train", "--config", a.config, "--workdir", a.workdir,
                "--no_progress", *a.overrides]

    def train_cmd(self) -> list[str]:
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in self.a.env)
        return self.ssh_cmd(f"cd {shlex.quote(self.a.remote_dir)} && {env}{shlex.join(self.train_argv())}")

    # -- state and lifecycle -------------------------------------------------------------
    def state(self) -> str | None:
        """READY, PREEMPTED, ACTIVE, SUSPENDED, ...; None when it does not exist."""
        res = self.run_cmd(self.describe_cmd(), capture=True)
        if res.returncode != 0:
            return None
        return res.stdout.strip().upper() or None

    def _must(self, argv: list[str], what: str) -> None:
        rc = self.run_cmd(argv).returncode
        if rc:
            raise LaunchError(f"{what} failed (exit {rc}): {join(argv)}")

    def ensure_ready(self, state: str | None = "?") -> None:
        """Reuse a READY/ACTIVE TPU, else (delete it if lost and) create one; wait until usable."""
        state = self.state() if state == "?" else state
        created, waited = False, 0.0
        while state not in READY:
            if state is None or state in LOST[self.kind]:
                if created:
                    raise LaunchError(f"{self.a.name} went {state or 'missing'} while coming up; "
                                      "rerun the same command to try again")
                if state is not None:
                    self.log(f"{self.a.name} is {state}: deleting it")
                    self._must(self.delete_cmd(), "delete")
                self.log(f"creating {self.a.accelerator_type} {self.a.name}")
                self._must(self.create_cmd(), "create")
                created = True
            else:
                if self.a.timeout_minutes and waited >= self.a.timeout_minutes * 60:
                    raise LaunchError(f"{self.a.name} still {state} after --timeout_minutes={self.a.timeout_minutes}")
                self.log(f"{self.a.name} is {state}; waiting {self.a.poll_seconds}s")
                self.sleep(self.a.poll_seconds)
                waited += self.a.poll_seconds
            state = self.state()
        if not created:
            self.log(f"reusing {self.a.name} ({state})")

    def setup(self) -> int:
        for argv in self.setup_cmds():
            rc = self.run_cmd(argv).returncode
            if rc:
                return rc
        return 0

    def up(self) -> int:
        self.ensure_ready()
        rc = self.setup()
        if rc:
            raise LaunchError(f"installing the code on {self.a.name} failed (exit {rc})")
        return 0

    def down(self) -> int:
        self._must(self.delete_cmd(), "delete")
        return 0

    def run(self) -> int:
        """up + train on all workers; recreate and rerun after each preemption (<= --max_restarts)."""
        self.ensure_ready()
        restarts = 0
        while True:
            rc = 0 if self.a.skip_setup else self.setup()
            if rc == 0:
                rc = self.run_cmd(self.train_cmd()).returncode
            if rc == 0:
                self.log(f"training finished; checkpoints in {self.a.workdir}. `down` deletes the TPU.")
                return 0
            state = self.state()
            if state is not None and state not in LOST[self.kind]:
                raise LaunchError(f"the run exited with status {rc} while {self.a.name} is {state}: not a "
                                  "preemption, so not restarting. Fix the cause and rerun the same command; "
                                  f"it resumes from the latest checkpoint in {self.a.workdir}")
            if restarts >= self.a.max_restarts:
                raise LaunchError(f"{self.a.name} is {state or 'gone'} again after {restarts} restart(s): "
                                  f"--max_restarts={self.a.max_restarts} reached. Rerun to continue from the "
                                  f"latest checkpoint in {self.a.workdir}")
            restarts += 1
            self.log(f"{self.a.name} is {state or 'gone'} (preempted): restart {restarts}/{self.a.max_restarts}")
            self.ensure_ready(state)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpu_pod.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("up", "run", "down"))
    p.add_argument("--name", required=True, help="TPU VM name (and queued resource id with --queued)")
    p.add_argument("--zone", required=True, help="e.g. us-west4-a")
    p.add_argument("--project", default="", help="default: gcloud's configured project")
    p.add_argument("--accelerator_type", "--accelerator-type",
                   default="", help="e.g. v5litepod-16 (4 hosts x 4 v5e chips), v4-32")
    p.add_argument("--version", default="", help="TPU runtime; default by family, e.g. v2-alpha-tpuv5-lite for v5e")
    p.add_argument("--queued", action="store_true", help="request it as a queued resource and wait in the queue")
    p.add_argument("--spot", action="store_true", help="Spot capacity: cheaper, preemptible")
    p.add_argument("--workdir", default="", help="gs://BUCKET/PATH: checkpoints and metrics, shared by all workers")
    p.add_argument("--config", default="", help="configs/NAME.py[:variant], relative to the source tree")
    code = p.add_mutually_exclusive_group()
    code.add_argument("--source", default=None, help="local tree to copy to the workers (default: this checkout)")
    code.add_argument("--repo", default="", help="git URL to clone on the workers instead of copying")
    p.add_argument("--rev", default="", help="with --repo: commit, tag or branch to check out")
    p.add_argument("--jax", default="jax[tpu]", help="pip requirement for JAX on the workers")
    p.add_argument("--remote_dir", "--remote-dir",
                   default="lmjax", help="where the code goes on each worker (relative to $HOME)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the run")
    p.add_argument("--max_restarts", "--max-restarts",
                   type=int, default=10, help="recreate+rerun at most this many times")
    p.add_argument("--poll_seconds", "--poll-seconds",
                   type=float, default=30.0, help="between state checks while waiting")
    p.add_argument("--timeout_minutes", "--timeout-minutes",
                   type=float, default=0.0, help="give up waiting for READY (0 = never)")
    p.add_argument("--skip_setup", "--skip-setup", action="store_true", help="run: the code is already installed")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the commands, run nothing")
    return p


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
    return a


def _validate(a: argparse.Namespace) -> None:
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", a.name):
        raise LaunchError(f"--name: lowercase letters, digits and '-', starting with a letter; got {a.name!r}")
    if a.max_restarts < 0:
        raise LaunchError(f"--max_restarts: must be >= 0, got {a.max_restarts}")
    if a.poll_seconds <= 0:
        raise LaunchError(f"--poll_seconds: must be > 0, got {a.poll_seconds}")
    env = []
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env: expected KEY=VALUE, got {item!r}")
        env.append((key, value))
    a.env = env
    if a.action == "down":
        return
    if not a.accelerator_type:
        raise LaunchError("--accelerator_type is required, e.g. v5litepod-16")
    devices, hosts = tpu_shape(a.accelerator_type)
    family = a.accelerator_type.rsplit("-", 1)[0]
    a.version = a.version or DEFAULT_RUNTIME.get(family, "")
    if not a.version:
        raise LaunchError(f"--version: no default TPU runtime for {family}; pass one (see "
                          "`gcloud compute tpus tpu-vm versions list`)")
    if a.rev and not a.repo:
        raise LaunchError("--rev needs --repo")
    if not a.repo:
        a.source = a.source or os.path.relpath(REPO_ROOT)
        if not os.path.isfile(os.path.join(a.source, "setup.py")):
            raise LaunchError(f"--source: {a.source!r} is not an lmjax tree (no setup.py there)")
    if a.action == "up":
        return
    if not a.config or not a.workdir:
        raise LaunchError("run needs --config configs/NAME.py and --workdir gs://BUCKET/PATH")
    if os.path.isabs(a.config.partition(":")[0]):
        raise LaunchError(f"--config: give the path relative to the source tree, got {a.config!r}")
    if not a.repo and not os.path.isfile(os.path.join(a.source, a.config.partition(":")[0])):
        raise LaunchError(f"--config: {a.config.partition(':')[0]} not found in the source tree {a.source!r}")
    if not a.workdir.startswith("gs://"):
        if hosts is None or hosts > 1:
            raise LaunchError(f"--workdir: {a.accelerator_type} spans {hosts or 'several'} hosts, so the workdir "
                              f"must be a gs:// bucket path that every worker shares and that outlives a "
                              f"preemption; got {a.workdir!r}")
        print(f"tpu_pod: warning: --workdir {a.workdir!r} lives on the TPU VM's disk and is lost when it is "
              "preempted or deleted; use gs://BUCKET/PATH to resume after preemption", file=sys.stderr)
    if devices is not None:
        problem = mesh_overrides_error(a.overrides, devices, hosts, a.accelerator_type)
        if problem:
            raise LaunchError(problem)


def main(argv: list[str] | None = None, runner: Runner | None = None, sleep=time.sleep) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    quiet = (lambda msg: None) if a.dry_run and runner is None else None
    pod = Pod(a, runner or (DryRunner() if a.dry_run else subprocess_runner), sleep=sleep, log=quiet)
    try:
        return {"up": pod.up, "run": pod.run, "down": pod.down}[a.action]()
    except LaunchError as e:
        print(f"tpu_pod: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
