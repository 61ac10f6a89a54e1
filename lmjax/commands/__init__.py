"""`lmjax train | eval | sample | convert | explain | scaling | repro | sae`: the command line.

    lmjax train --config configs/quickstart.py --workdir runs/qs [--config.train.steps=100 ...]
                [--coordinator HOST:PORT --num_processes N --process_id I]
    lmjax eval --workdir runs/qs
    lmjax sample --workdir runs/qs --prompt "def " [--num_samples 4 --max_new_tokens 100 --temperature 0.8
                 --top_k 40 --top_p 0.95 --seed 0 --prompt_file prompts.txt]
    lmjax convert --from_hf HF_DIR --workdir runs/imported   |   lmjax convert --workdir runs/qs --to_hf HF_OUT

Config overrides are `--config.SECTION.KEY=VALUE`. Flags are spelled with underscores
(--stop_at, --from_hf); hyphenated spellings (--from-hf) are accepted as aliases.

--out: a command that writes one file takes --out FILE (explain, scaling fit / sweep /
emergence); a command that writes several takes --out DIR (scaling chinchilla, repro). A
--out of the other kind is an error.

Errors: bad input and known failures (lmjax.errors.LmjaxError) are reported as one line,
`lmjax CMD: error: ...`, exit status 2. So is an OSError on a path you gave (a flag's or
positional argument's value, a --config.* value, a flag's default such as explain's
report.html, a path inside one, or a parent directory being created for one): a missing
file, permission denied, a directory where a file belongs or the reverse, a path that
already exists, a read-only or full disk; the line names the flag, the path and the
reason. Anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Each command module imports the library inside its `run`: `lmjax --help` and a bad
# config answer at once, without loading JAX.
from lmjax.commands import convert, evaluate, explain, repro, sae, sample, scaling, train  # noqa: E402
from lmjax.errors import LmjaxError  # noqa: E402

COMMANDS = (train, evaluate, sample, convert, explain, scaling, repro, sae)


def split_overrides(argv):
    """Pull out `--config.a.b=v` (or `--config.a.b v`) from the rest of the arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body and i + 1 < len(argv):
                body, i = f"{body}={argv[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


# The --out rule: a command that writes one file takes --out FILE, one that writes several
# takes --out DIR. Checked here, for every command, before it runs.
OUT_KINDS = {
    "explain": {"out": "file"},
    "scaling fit": {"out": "file", "plots": "dir"},
    "scaling sweep": {"out": "file"},
    "scaling emergence": {"out": "file"},
    "scaling chinchilla": {"out": "dir"},
    "repro": {"out": "dir"},  # in the reproduction's own flags (args.rest)
    "sae train": {"out": "dir"},
    "sae dashboard": {"out": "file"},
}
FILE_SUFFIXES = (".json", ".csv", ".png", ".pdf", ".svg", ".html", ".txt")


def out_file(path: str, flag: str = "--out") -> str:
    """A --out FILE (a command that writes one file): not a directory."""
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        what = "is a directory" if os.path.isdir(path) else "names a directory (it ends in '/')"
        raise LmjaxError(f"{flag} {path} {what}; this command writes one file, so {flag} takes the file's path")
    return path


def out_dir(path: str, flag: str = "--out") -> str:
    """A --out DIR (a command that writes several files): not a file, nor a new name that looks like one."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise LmjaxError(f"{flag} {path} is a file; this command writes several files, so {flag} takes a directory")
    if not os.path.exists(path) and path.lower().endswith(FILE_SUFFIXES):
        raise LmjaxError(f"{flag} {path} looks like a file name; this command writes several files, so {flag} "
                         "takes a directory")
    return path


def _flag_value(argv, flag: str):
    """The value of `FLAG V` or `FLAG=V` in a list of arguments (the last one given), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def check_outputs(args) -> None:
    """Apply the --out rule (OUT_KINDS) to a parsed command line."""
    name = " ".join(n for n in (args.command, getattr(args, "scaling_command", None),
                                getattr(args, "sae_command", None)) if n)
    for dest, kind in OUT_KINDS.get(name, {}).items():
        flag = f"--{dest}"
        value = getattr(args, dest, None) if hasattr(args, dest) else _flag_value(getattr(args, "rest", []), flag)
        if value:
            (out_file if kind == "file" else out_dir)(value, flag)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmjax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)  # each sets its parser's `run`
    return p


def _given(argv, args):
    """(label, value) of each value on the command line (`--flag V`, `--flag=V`, a
    positional), then of each option's default that it did not set."""
    seen = set()
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            seen.add(value)
            yield flag, value
        elif not arg.startswith("-"):
            before = argv[i - 1] if i else ""
            seen.add(arg)
            yield (before if before.startswith("-") else ""), arg
    for dest, value in vars(args).items():
        if isinstance(value, str) and value not in seen and dest not in ("command", "scaling_command", "sae_command"):
            yield f"--{dest}", value


def _related(a: str, b: str) -> bool:
    """Is one of the two paths the other or inside it?"""
    a, b = os.path.abspath(a), os.path.abspath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def path_error_line(error: OSError, argv, args) -> str | None:
    """One line for an OSError on a path the user gave (see the module docstring), else None."""
    names = [n for n in (error.filename, error.filename2) if isinstance(n, (str, os.PathLike))]
    for name in map(os.fspath, names):
        for label, value in _given(argv, args):
            if value and _related(name, value):
                where = f"{label} {value}" if label else value
                reason = error.strerror or type(error).__name__
                same = os.path.abspath(name) == os.path.abspath(value)
                return f"{where}: {reason}" + ("" if same else f": {name}")
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    rest, overrides = split_overrides(argv)
    args = parser().parse_args(rest)
    try:
        check_outputs(args)
        from lmjax import compile_cache  # imports JAX: after the checks that need none

        compile_cache.enable()  # the next command on the same model loads its programs
        args.run(args, overrides)
    except LmjaxError as e:  # bad input or a known failure: one line, no traceback
        message = re.sub(r"\s*\n\s*", "; ", re.sub(r":\s*\n\s*", ": ", str(e).strip()))  # a list in one line
        print(f"lmjax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:
        line = path_error_line(e, rest + [f"--config.{o}" for o in overrides], args)
        if line is None:  # not about a path the user gave: a bug, keep the traceback
            raise
        print(f"lmjax {args.command}: error: {line}", file=sys.stderr)
        return 2
    return 0
