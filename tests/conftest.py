"""Shared fixtures: a tiny configuration that trains in well under a second per step.

The persistent compilation cache is on for every test process (and the subprocesses that
import this module or run an experiments/ command), so a rerun skips recompiling.
"""

import pytest

from experiments import common
from experiments.configs import smoke

common.enable_compilation_cache()


def tiny_config():
  """Smaller than the smoke config: 16x16 images, batch 8, a handful of steps."""
  c = smoke.get_config()
  c.num_train_steps = 4
  c.log_every = 2
  c.checkpoint_every = 2
  c.model.dim = 16
  c.model.width = 16
  c.model.patch = 4
  c.model.predictor_hidden = 32
  c.data.batch_size = 8
  c.data.image_size = 16
  c.optim.warmup_steps = 1
  c.eval.probe_train = 48
  c.eval.probe_test = 16
  c.eval.alignment_pairs = 16
  c.eval.probe_steps = 10
  return c


@pytest.fixture
def config():
  return tiny_config()
