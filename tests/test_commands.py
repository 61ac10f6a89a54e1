"""The command line keeps its promise: bad input and known failures are one line on stderr,
`lmjax CMD: error: ...`, exit status 2, no traceback; so is an OSError on a path the user
gave. A bug (any other exception) keeps its traceback. Plus the flag and --out rules."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess
import sys

import pytest

from lmjax import commands
from lmjax.commands import main
from lmjax.errors import LmjaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")


def assert_one_line(code: int, err: str, command: str, *expected) -> str:
    """Exit status 2 and exactly one line on stderr, `lmjax COMMAND: error: ...`, holding `expected`."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"lmjax {command}: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def error_line(capsys, argv, *expected) -> str:
    """Run `lmjax ARGV`; it must fail with one line on stderr containing `expected`."""
    code = main(argv)
    return assert_one_line(code, capsys.readouterr().err, argv[0], *expected)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    corpus = tmp / "text.txt"
    corpus.write_text("".join(f"The cat sat on the mat {i % 7}.\n" for i in range(200)))
    cfg = tmp / "cfg.py"
    cfg.write_text(
        "def get_config(arg=None):\n"
        "    return {'model': dict(n_layer=1, d_model=16, n_head=2, max_len=16),\n"
        f"            'data': dict(source={str(corpus)!r}),\n"
        "            'train': dict(steps=4, batch_size=8, log_every=1, eval_every=100, eval_batches=1,\n"
        "                          sample_tokens=0),\n"
        "            'checkpoint': dict(every=2, keep=10)}\n")
    return str(cfg)


# ---- bad input: one line ------------------------------------------------------------------

def test_config_with_a_bad_key(capsys, tmp_path):
    error_line(capsys, ["train", "--config", QUICKSTART, "--workdir", str(tmp_path / "w"), "--config.model.nope=3"],
               "model.nope")
    assert not (tmp_path / "w").exists()  # refused before any work


def test_missing_config_file(capsys, tmp_path):
    error_line(capsys, ["train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")],
               "nope.py", "not found")


def test_repro_names_its_variant_after_a_colon(capsys, tmp_path):
    """NAME:variant reaches the reproduction's config (an unknown variant is refused there,
    naming the allowed ones), and an unknown NAME is refused before anything is imported."""
    error_line(capsys, ["repro", "grokking:nosuch", "--out", str(tmp_path / "g")], "unknown variant 'nosuch'", "small")
    error_line(capsys, ["repro", "nosuch:small"], "unknown reproduction 'nosuch'")
    assert not (tmp_path / "g").exists()


def test_eval_on_an_empty_workdir(capsys, tmp_path):
    error_line(capsys, ["eval", "--workdir", str(tmp_path / "empty")], "no checkpoint")


def test_workdir_under_a_regular_file(capsys, tmp_path, tiny_config):
    (tmp_path / "file").write_text("not a directory")
    workdir = str(tmp_path / "file" / "w")
    line = error_line(capsys, ["train", "--config", tiny_config, "--workdir", workdir, "--no_progress"], workdir)
    assert "directory" in line.lower()


def test_unwritable_output_path(capsys):
    # root may write almost anywhere; sysfs refuses new entries even to root
    parent = "/sys/lmjax-test-out"
    with pytest.raises(PermissionError):
        os.makedirs(parent)
    out = f"{parent}/sweep.json"
    line = error_line(capsys, ["scaling", "sweep", "--config", QUICKSTART, "--isoflop", "1e13,3e13,1e14",
                               "--out", out], f"--out {out}", parent)
    assert os.strerror(errno.EPERM) in line or os.strerror(errno.EACCES) in line


def test_missing_input_file(capsys, tmp_path):
    error_line(capsys, ["scaling", "fit", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "fit.json")],
               "runs.csv", "no such file")


def test_corrupt_sweep_plan(capsys, tmp_path):
    for name, text in (("truncated.json", '{"config": "configs/quickstart.py", "ru'), ("list.json", "[1, 2]"),
                       ("other.json", '{"runs": []}')):
        (tmp_path / name).write_text(text)
        error_line(capsys, ["scaling", "run", str(tmp_path / name), "--workdir", str(tmp_path / "w")],
                   name, "not a sweep plan")
    assert not (tmp_path / "w").exists()


def test_chinchilla_data_needs_the_variable_or_the_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LMJAX_DATA", raising=False)
    error_line(capsys, ["scaling", "chinchilla", "--out", str(tmp_path / "c")], "LMJAX_DATA", "--data")
    assert not (tmp_path / "c").exists()


# ---- a known failure during training, and an output that is a directory ---------------------

@pytest.fixture(scope="module")
def diverged(tmp_path_factory, tiny_config):
    """(workdir, exit status, stderr) of a run whose loss turns non-finite: lr 1e30 after a
    warmup whose first step has lr 0, so that step's checkpoint holds healthy parameters."""
    workdir = str(tmp_path_factory.mktemp("diverged") / "w")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--config", tiny_config, "--workdir", workdir, "--no_progress",
                     "--config.optimizer.lr=1e30", "--config.optimizer.warmup_steps=2",
                     "--config.optimizer.clip_norm=0.0"])
    return workdir, code, err.getvalue()


def test_non_finite_loss_during_training(diverged):
    workdir, code, err = diverged
    line = assert_one_line(code, err, "train", "non-finite loss", "optimizer.lr", "last good checkpoint")
    assert os.listdir(os.path.join(workdir, "checkpoints")), line  # the healthy step was kept


def test_explain_out_is_a_directory(capsys, tmp_path, diverged):
    workdir = diverged[0]
    out = tmp_path / "report"
    out.mkdir()
    line = error_line(capsys, ["explain", "--workdir", workdir, "--prompt", "The cat", "--out", str(out)], str(out))
    assert "directory" in line.lower()
    assert os.listdir(out) == []


# ---- --out: FILE for one file, DIR for several ------------------------------------------------

def test_out_of_the_wrong_kind(capsys, tmp_path):
    csv_path = tmp_path / "runs.csv"
    csv_path.write_text("N,D,loss\n1e8,1e9,3.0\n")
    a_dir, a_file = tmp_path / "d", tmp_path / "f.json"
    a_dir.mkdir()
    a_file.write_text("{}")
    error_line(capsys, ["scaling", "fit", str(csv_path), "--out", str(a_dir)], "is a directory", "one file")
    error_line(capsys, ["scaling", "sweep", "--config", QUICKSTART, "--isoflop", "1e13", "--out", str(a_dir)],
               "is a directory")
    error_line(capsys, ["scaling", "emergence", str(csv_path), "--out", str(a_dir)], "is a directory")
    error_line(capsys, ["scaling", "fit", str(csv_path), "--out", str(tmp_path / "fit.json"), "--plots", str(a_file)],
               "--plots", "is a file")
    error_line(capsys, ["scaling", "chinchilla", "--out", str(a_file)], "is a file", "several files")
    error_line(capsys, ["scaling", "chinchilla", "--out", str(tmp_path / "fit.json")], "looks like a file name")
    error_line(capsys, ["repro", "grokking", "--out", str(a_file)], "is a file")
    assert sorted(os.listdir(tmp_path)) == ["d", "f.json", "runs.csv"] and a_file.read_text() == "{}"


def test_every_out_flag_is_under_the_rule():
    """A command with an --out option is in OUT_KINDS, so its kind is checked and documented."""
    import argparse

    def commands_with_out(parser, prefix=""):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands_with_out(sub, f"{prefix} {name}".strip())
            elif "--out" in action.option_strings:
                yield prefix

    found = set(commands_with_out(commands.parser()))
    assert found and found <= set(commands.OUT_KINDS), found - set(commands.OUT_KINDS)


# ---- what is caught, and what is not ----------------------------------------------------------

def test_multi_line_message_prints_as_one_line(capsys, monkeypatch):
    def fails(args, overrides):
        raise LmjaxError("cannot import d:\n  missing tensor 'a'\n  unexpected tensor 'b'")

    monkeypatch.setattr(commands.evaluate, "run", fails)
    assert error_line(capsys, ["eval", "--workdir", "w"]).endswith("cannot import d: missing tensor 'a'; "
                                                                   "unexpected tensor 'b'")


def test_os_error_on_a_given_path_is_one_line_but_elsewhere_a_bug(capsys, monkeypatch, tmp_path):
    def refused(path):
        def run(args, overrides):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return run

    given = tmp_path / "w"
    monkeypatch.setattr(commands.evaluate, "run", refused(str(given / "checkpoints" / "x")))  # inside the workdir
    error_line(capsys, ["eval", "--workdir", str(given)], f"--workdir {given}", os.strerror(errno.EACCES))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(commands.explain, "run", refused("report.html"))  # --out's default, not given
    error_line(capsys, ["explain", "--workdir", "w", "--prompt", "x"], "--out report.html")
    monkeypatch.setattr(commands.evaluate, "run", refused("/var/lib/lmjax-internal"))  # no path the user gave
    with pytest.raises(PermissionError):
        main(["eval", "--workdir", str(given)])
    monkeypatch.setattr(commands.evaluate, "run", lambda args, overrides: open(os.devnull).read(1 / 0))
    with pytest.raises(ZeroDivisionError):
        main(["eval", "--workdir", str(given)])


def test_a_bug_shows_its_traceback():
    code = ("import lmjax.commands as c\n"
            "c.evaluate.run = lambda args, overrides: 1 / 0\n"
            "raise SystemExit(c.main(['eval', '--workdir', 'w']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 1
    assert "Traceback" in run.stderr and "ZeroDivisionError" in run.stderr


# ---- one flag style ----------------------------------------------------------------------------

@pytest.mark.parametrize("way, value", [("from", "hf_dir"), ("to", "hf_out")])
def test_convert_flags_underscores_and_hyphenated_aliases(way, value):
    parse = commands.parser().parse_args
    underscore = parse(["convert", "--workdir", "w", f"--{way}_hf", value])
    hyphen = parse(["convert", "--workdir", "w", f"--{way}-hf", value])
    assert vars(underscore) == vars(hyphen) and getattr(underscore, f"{way}_hf") == value
