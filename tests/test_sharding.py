"""Several devices (4 fake CPU devices, in a subprocess): sharded steps equal unsharded ones."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a subprocess on 4 fake devices: a minute or more

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import sys
sys.path.insert(0, {root!r})
import chex, jax, pytest
from tests.conftest import tiny_config, init_agents
from sjepa_jax import agents, configs, data, train
assert jax.device_count() == 4, jax.devices()

def run(views, config, sharded, pixels=None):
  learner = configs.learner_from_config(config)
  state = agents.init_agents(learner, views, 0)
  stacked, keys = data.stack_views(data.source(config), views), agents.agent_keys(0, views)
  if sharded:
    agent_sh, batch_sh = train.shardings(len(views), config.data.batch_size)
    if agent_sh is not None:
      state, stacked, keys = jax.device_put((state, stacked, keys), agent_sh)
    if pixels is not None:
      pixels = jax.device_put(pixels, train.replicated(agent_sh or batch_sh))
    how = configs.agent_map(config, agent_sh is not None)
    step = train.make_step(learner, how, agent_sh, batch_sh, len(views))
  else:
    step = jax.jit(jax.vmap(lambda s, v, k, i, p: agents.train_step(learner, s, v, k, i,
                                                                    pixels=p),
                            in_axes=(0, 0, 0, None, None)))
  for i in range(4):  # step 0 has learning rate 0 (warmup_steps = 1): three real updates
    state, metrics = step(state, stacked, keys, i, pixels)
  return state, metrics

config = tiny_config()
config.optim.eps = 1e-3  # see test_agents: keep Adam from amplifying float rounding
# Four agents: one per device.
views = ["mountain", "forest", "drone", "river"]
sharded, _ = run(views, config, True)
assert len(jax.tree.leaves(sharded)[0].sharding.device_set) == 4
chex.assert_trees_all_close(sharded, run(views, config, False)[0], atol=1e-5, rtol=1e-5)
# Two agents, batch of 8 split over 4 devices: VICReg's and SIGReg's statistics must stay
# global (a per-shard statistic of 2 samples would differ).
views = ["mountain", "forest"]
for regularizer in ("vicreg", "sigreg"):
  config.objective.regularizer = regularizer
  a, ma = run(views, config, True)
  b, mb = run(views, config, False)
  assert any(k.startswith(regularizer) for k in ma), sorted(ma)
  chex.assert_trees_all_close(ma, mb, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(a, b, atol=1e-5, rtol=1e-5)
config.objective.regularizer = "vicreg"
# Four region agents of a dataset: the images are replicated, the agents split.
config.data.dataset = "in-memory"
pixels = jax.random.randint(jax.random.key(0), (32, 20, 20, 3), 0, 256).astype("uint8")
views = ["left", "right", "top", "bottom"]
chex.assert_trees_all_close(run(views, config, True, pixels)[0],
                            run(views, config, False, pixels)[0], atol=1e-5, rtol=1e-5)
# Neither agents nor batch divisible by 4 devices.
config.data.batch_size = 6
with pytest.raises(ValueError, match="batch of 6 over 4 devices"):
  train.shardings(2, 6)
print("SHARDING OK")
"""


def test_sharded_training_equals_single_device_training():
  env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"] +
             " --xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _CHILD.format(root=ROOT)], env=env,
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0 and "SHARDING OK" in out.stdout, out.stderr[-4000:]
