"""One house style: yapf formatting and ruff's pyflakes rules, as pyproject.toml sets them.

To fix a failure: ``yapf -i -r -p fedras_jax experiments tests`` reformats in place;
``ruff check fedras_jax experiments tests`` lists the lint findings to fix.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ("fedras_jax", "experiments", "tests")


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  if importlib.util.find_spec(module) is None:
    pytest.skip(f"{module} is not installed (the test extra pins it: pip install -e '.[test]')")
  return subprocess.run([sys.executable, "-m", module, *args],
                        cwd=ROOT,
                        capture_output=True,
                        text=True)


def test_formatting():
  res = _run("yapf", "--diff", "--recursive", "--parallel", "--style",
             os.path.join(ROOT, "pyproject.toml"), *PATHS)
  files = sorted(set(re.findall(r"^--- (\S+)\s+\(original\)$", res.stdout, re.M)))
  assert res.returncode == 0, (f"yapf would reformat {len(files)} file(s): {' '.join(files)}\n"
                               f"fix with: yapf -i -r -p {' '.join(PATHS)}\n" + res.stderr
                               + res.stdout[:5000])


def test_lint():
  res = _run("ruff", "check", "--no-cache", "--output-format", "concise", *PATHS)
  assert res.returncode == 0, "ruff check found problems:\n" + res.stdout + res.stderr
