"""`lmjax explain` end to end: train a tiny model with `lmjax train`, explain a prompt with a
corrupted twin, and open the report in a real headless Chromium (Debian's `chromium`,
installed by .ci/run): no console errors, every section and figure in the DOM, the
page's own script ran (it marks <body data-rendered="ok"> and counts decoded images).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from lmjax import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-extensions", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
SECTIONS = ["summary", "prediction", "logit-lens", "dla", "heads", "patching"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    corpus = tmp / "text.txt"
    corpus.write_text("".join(f"The cat sat on the mat {i % 7}. The dog sat on the log {i % 5}.\n" for i in range(300)))
    cfg = tmp / "cfg.py"
    cfg.write_text(
        "def get_config(arg=None):\n"
        "    return {'model': dict(n_layer=2, d_model=32, n_head=4, max_len=32),\n"
        f"            'data': dict(source={str(corpus)!r}),\n"
        "            'train': dict(steps=30, batch_size=8, eval_every=30, eval_batches=1, sample_tokens=0)}\n")
    workdir = str(tmp / "w")
    assert cli.main(["train", "--config", str(cfg), "--workdir", workdir, "--no_progress"]) == 0
    out = str(tmp / "report.html")
    assert cli.main(["explain", "--workdir", workdir, "--prompt", "The cat sat on the m", "--corrupt",
                     "The dog sat on the m", "--target", "a", "--contrast", "o", "--out", out]) == 0
    return out


def test_report_is_self_contained(report, capsys):
    text = open(report, encoding="utf-8").read()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text
    # no network: nothing fetched from anywhere (images are data: URIs, CSS and JS inline)
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert text.count('src="data:image/png;base64,') >= 5
    assert "restoring" in text.lower() or "patching" in text.lower()


def test_explain_errors_are_one_line(report, tmp_path, capsys):
    workdir = os.path.dirname(report) + "/w"
    assert cli.main(["explain", "--workdir", workdir, "--prompt", "The cat", "--corrupt", "A", "--out",
                     str(tmp_path / "x.html")]) == 2
    assert "same length" in capsys.readouterr().err
    assert cli.main(["explain", "--workdir", str(tmp_path / "none"), "--prompt", "x"]) == 2


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (CI installs Debian's chromium in .ci/run)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = "file://" + os.path.abspath(report)
    run = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no JS errors, no console output at all
    dom = run.stdout
    assert 'data-rendered="ok"' in dom, dom[:500]
    total, decoded = map(int, re.search(r'data-images="(\d+)/(\d+)"', dom).groups())
    assert total >= 5 and decoded == total
    assert f'data-sections="{len(SECTIONS)}"' in dom
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, *FLAGS, "--window-size=1200,1600", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.stat().st_size > 10_000
