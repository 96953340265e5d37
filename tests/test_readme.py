"""The README cannot rot: its library example runs on a trained run, and its results table
is the one the committed reports make."""

import os
import re
import subprocess
import sys

import pytest

from experiments import results_table
from sjepa_jax import train
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


@pytest.mark.slow
def test_the_library_example_runs_on_a_trained_run(tmp_path):
  example = re.search(r"<!-- library example.*?-->\n```python\n(.*?)```", _readme(), re.S)
  assert example, "README.md lost its library example block"
  code = example.group(1)
  assert len(code.strip().splitlines()) <= 10
  config = tiny_config()
  config.data.image_size = 32  # the size sj.world_pairs renders by default
  workdir = str(tmp_path / "mf")
  train.train_and_evaluate(config, workdir, "mountain,forest")
  out = subprocess.run([sys.executable, "-c", code.replace("/tmp/mf", workdir)],
                       cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-3000:]
  scores = [float(line.split(":")[-1]) for line in out.stdout.splitlines()]
  assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
  saved = tmp_path / "forest_to_mountain.npz"
  assert saved.exists() and saved.stat().st_size < 64_000


def test_the_results_table_is_the_reports_table():
  made = results_table.table(os.path.join(ROOT, "docs"))
  assert results_table.block(_readme()) == made
  assert made.count("\n") >= 2  # a header, its rule and at least one goal
