"""Shared fixtures: a tiny configuration that trains in well under a second per step.

The persistent compilation cache is on for every test process (and the subprocesses that
import this module or run an experiments/ command), so a rerun skips recompiling.

Tests check behaviour at tiny shapes, where compiling is nearly all of the time, so every
test process (and, through the environment, every subprocess) compiles with XLA's cheap
CPU backend passes (``FAST_COMPILE_FLAGS``): about half the CPU time of LLVM's full
optimisation (docs/performance.md). Users' runs compile fully optimised.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Before anything imports JAX: XLA reads the flags when its CPU backend starts.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

import pytest  # pylint: disable=g-import-not-at-top

from experiments import common  # pylint: disable=g-import-not-at-top
from experiments.configs import smoke  # pylint: disable=g-import-not-at-top

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


def init_agents(config, views, seeds=0):
  """Fresh stacked agents of the run ``config`` describes."""
  from sjepa_jax import agents  # pylint: disable=g-import-not-at-top
  from sjepa_jax import configs  # pylint: disable=g-import-not-at-top
  return agents.init_agents(configs.learner_from_config(config), views, seeds)
