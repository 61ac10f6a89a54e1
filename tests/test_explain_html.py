"""`lmjax explain` end to end: train a tiny hybrid model (a Mamba layer, then attention) with
`lmjax train`, explain a prompt against a corrupted twin that flips the answer, and open
the report in a real headless Chromium (Debian's `chromium`, installed by .ci/run): no
console errors, every section and figure in the DOM, the page's own script ran (it marks
<body data-rendered="ok"> and counts decoded images).

The commands run in one subprocess on one CPU device (tests/_one_device.py): training
compiles (and checkpoints) several times faster there, and `explain` reuses what `train`
compiled.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from _one_device import outputs, run_lmjax
from lmjax import commands

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
    cfg.write_text(  # layers: Mamba then attention; the associative scan compiles fastest
        "def get_config(arg=None):\n"
        "    return {'model': dict(n_layer=2, d_model=32, n_head=4, max_len=32, layer_pattern='MA', d_state=4,\n"
        "                          ssm_scan='associative'),\n"
        f"            'data': dict(source={str(corpus)!r}),\n"
        "            'optimizer': dict(lr=1e-2, warmup_steps=10),\n"
        "            'train': dict(steps=40, batch_size=16, eval_every=40, eval_batches=1, sample_tokens=0)}\n")
    workdir, out = str(tmp / "w"), str(tmp / "report.html")
    codes, stdout, stderr = run_lmjax(
        ["train", "--config", str(cfg), "--workdir", workdir, "--no_progress"],
        # "m" -> "a" (mat) and "l" -> "o" (log): the corruption flips the answer.
        ["explain", "--workdir", workdir, "--prompt", "The dog sat on the m", "--corrupt", "The dog sat on the l",
         "--target", "a", "--contrast", "o", "--out", out],
        ["explain", "--workdir", workdir, "--prompt", "The cat", "--corrupt", "A", "--out", str(tmp / "x.html")])
    assert codes[:2] == [0, 0], stderr[-3000:]
    return {"path": out, "codes": codes, "stdout": outputs(stdout), "stderr": outputs(stderr)}


def test_report_is_self_contained(report):
    printed = report["stdout"][1]
    # the 40 steps taught the model the answer that the report explains, and the corruption flips
    assert "The model's next-token choice: 'a'" in printed and f"wrote {report['path']}" in printed
    text = open(report["path"], encoding="utf-8").read()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text
    # no network: nothing fetched from anywhere (images are data: URIs, CSS and JS inline)
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert text.count('src="data:image/png;base64,') >= 6
    # the corruption matters, so both patching heatmaps are drawn
    assert 'alt="patching heatmap"' in text and 'alt="head patching heatmap"' in text
    # the Mamba layer is a "head": its implicit attention drawn and scored, its ablation listed
    assert 'alt="L0ssm attention pattern"' in text and "implicit attention" in text
    assert text.count("<td>L0ssm</td>") >= 2  # ablation and detector tables
    assert 'alt="L1H' in text  # and attention heads of the attention layer


def test_explain_errors_are_one_line(report, tmp_path, capsys):
    assert report["codes"][2] == 2
    assert report["stderr"][2].strip().splitlines() == [
        "lmjax explain: error: the corrupted prompt is 2 tokens and the prompt 8: patching needs prompts of the "
        "same length (--corrupt)"]
    assert commands.main(["explain", "--workdir", str(tmp_path / "none"), "--prompt", "x"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lmjax explain: error: ") and "no checkpoint" in line


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (CI installs Debian's chromium in .ci/run)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = "file://" + os.path.abspath(report["path"])
    run = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no JS errors, no console output at all
    dom = run.stdout
    assert 'data-rendered="ok"' in dom, dom[:500]
    total, decoded = map(int, re.search(r'data-images="(\d+)/(\d+)"', dom).groups())
    assert total >= 6 and decoded == total
    assert f'data-sections="{len(SECTIONS)}"' in dom
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, *FLAGS, "--window-size=1200,1600", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.stat().st_size > 10_000
