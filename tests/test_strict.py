"""tests/_strict.py: with LMJAX_STRICT=1 a skip fails (unless the test needs an accelerator);
without it, the same file skips."""
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

SAMPLE = '''
import pytest

def test_skips_inside():
    pytest.skip("no widget")

@pytest.mark.skipif(True, reason="widget missing")
def test_skipif():
    pass

@pytest.mark.accelerator
def test_needs_a_gpu():
    pytest.skip("no GPU")

def test_passes():
    pass
'''
MODULE_SKIP = 'import pytest\npytest.importorskip("lmjax_no_such_module")\n\ndef test_never():\n    pass\n'


def _pytest(tmp_path, **variables):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "LMJAX_STRICT", "PYTEST_ADDOPTS")}
    env.update(PYTHONPATH=TESTS, **variables)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-p", "_strict",
                          str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    return run.returncode, run.stdout.strip().splitlines()[-1], run.stdout


@pytest.mark.parametrize("variables", [{"LMJAX_STRICT": "1"}, {"CI": "true"}])
def test_strict_mode_turns_skips_into_failures(tmp_path, variables):
    code, summary, out = _pytest(tmp_path, **variables)
    assert code == 1, out
    # the two plain skips fail, the module that could not import its dependency is an
    # error while the others still ran, and only the accelerator test skips
    assert summary.startswith("1 failed, 1 passed, 1 skipped, 2 errors"), out
    assert "no widget" in out and "widget missing" in out and "lmjax_no_such_module" in out
    assert "SKIPPED [1] test_sample.py" in out and "no GPU" in out


def test_without_strict_mode_the_same_tests_skip(tmp_path):
    for variables in ({}, {"LMJAX_STRICT": "0"}, {"CI": "true", "LMJAX_STRICT": "0"}):
        code, summary, out = _pytest(tmp_path, **variables)
        assert code == 0, out
        assert summary.startswith("1 passed, 4 skipped"), out
