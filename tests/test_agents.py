"""The vmapped step: equal to training agents one by one, compiled once, keyed by view."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjepa_jax import agents
from sjepa_jax import world


def _train(config, views, steps, seed=0):
  state = agents.init_agents(config, views, seed)
  step = jax.jit(jax.vmap(functools.partial(agents.train_step, config=config),
                          in_axes=(0, 0, 0, None)))
  stacked, keys = world.stack_views(views), agents.agent_keys(seed, views)
  for i in range(steps):
    state, metrics = step(state, stacked, keys, i)
  return state, metrics


# warmup_steps = 1 (tiny_config): step 0 has learning rate 0, so comparisons of trained
# states take REAL_STEPS more steps and check that the parameters moved.
REAL_STEPS = 3


def _assert_moved(before, after, at_least=1e-4):
  """Some parameter of ``after`` differs from ``before`` by more than ``at_least`` (a
  learning rate of 0, or a missing update, leaves them equal)."""
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  assert moved > at_least, f"parameters moved by at most {moved:.1e}"


@pytest.mark.parametrize("regularizer,target", [("vicreg", "online"), ("sigreg", "ema")])
def test_vmapped_agents_equal_agents_trained_alone(config, regularizer, target):
  config.objective.regularizer = regularizer
  config.objective.target = target
  # vmap batches matmuls differently, so results differ by float rounding (~1e-7); Adam's
  # first steps divide by sqrt(v) and would blow that up for near-zero gradients.
  config.optim.eps = 1e-3
  together, metrics = _train(config, ["mountain", "forest"], steps=REAL_STEPS + 1)
  chex.assert_tree_all_finite(metrics)
  _assert_moved(agents.init_agents(config, ["mountain", "forest"], 0).params, together.params)
  for a, view in enumerate(["mountain", "forest"]):
    alone, _ = _train(config, [view], steps=REAL_STEPS + 1)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[a], together),
                                jax.tree.map(lambda x: x[0], alone), atol=1e-5, rtol=1e-5)


def test_agents_differ_and_share_nothing(config):
  state, _ = _train(config, ["mountain", "forest"], steps=1)
  kernel = state.params["encoder"]["Dense_0"]["kernel"]
  assert not np.allclose(kernel[0], kernel[1])  # own init keys
  keys = agents.agent_keys(0, ["mountain", "forest"])
  assert not np.array_equal(jax.random.key_data(keys[0]), jax.random.key_data(keys[1]))
  np.testing.assert_array_equal(jax.random.key_data(agents.agent_keys(0, ["forest"])[0]),
                                jax.random.key_data(keys[1]))  # a view's key is its own


def test_step_compiles_once(config):
  views = ["mountain", "forest"]
  state = agents.init_agents(config, views, 0)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, stacked, keys, i):
    return jax.vmap(functools.partial(agents.train_step, config=config),
                    in_axes=(0, 0, 0, None))(state, stacked, keys, i)

  stacked, keys = world.stack_views(views), agents.agent_keys(0, views)
  for i in range(3):
    state, _ = step(state, stacked, keys, jnp.int32(i))


def test_ema_target_follows_the_encoder(config):
  config.objective.target = "ema"
  config.objective.ema_decay = 0.5
  views = ["drone"]
  state = agents.init_agents(config, views, 0)
  step = jax.jit(jax.vmap(functools.partial(agents.train_step, config=config),
                          in_axes=(0, 0, 0, None)))
  stacked, keys = world.stack_views(views), agents.agent_keys(0, views)
  for i in range(REAL_STEPS + 1):
    new, _ = step(state, stacked, keys, i)
    expected = jax.tree.map(lambda t, p: 0.5 * t + 0.5 * p, state.target, new.params["encoder"])
    chex.assert_trees_all_close(new.target, expected, atol=1e-6)
    state = new
  _assert_moved(agents.init_agents(config, views, 0).params["encoder"], state.params["encoder"])
  _assert_moved(state.params["encoder"], state.target)  # lags behind: not a copy


def test_autoencoder_objective_learns_to_reconstruct(config):
  config.objective.kind = "autoencoder"
  config.num_train_steps = 12  # the learning-rate schedule spans the steps taken
  config.optim.lr = 3e-3
  state = agents.init_agents(config, ["mountain"], 0)
  assert "decoder" in state.params  # JEPA agents have none
  _, first = _train(config, ["mountain"], steps=1)
  _, last = _train(config, ["mountain"], steps=12)
  assert set(first) >= {"reconstruction", "embedding_std"}
  assert float(last["reconstruction"][0]) < 0.7 * float(first["reconstruction"][0])


def test_supervised_objective_learns_the_labels(config):
  """The ceiling's objective reads the focal position off the latent: in 80 steps its
  position error falls below 0.35 of the untrained head's (measured 2.43 -> 0.63, 0.26;
  with the position term dropped from the loss it only falls to 1.11, 0.46, and this test
  fails)."""
  config.objective.kind = "supervised"
  config.num_train_steps = 80
  config.optim.lr = 3e-3
  state = agents.init_agents(config, ["mountain"], 0)
  assert "head" in state.params and "decoder" not in state.params
  _, first = _train(config, ["mountain"], steps=1)
  _, last = _train(config, ["mountain"], steps=80)
  assert set(first) >= {"class_xent", "position_mse", "class_acc", "embedding_std"}
  assert float(last["position_mse"][0]) < 0.35 * float(first["position_mse"][0])


def test_bad_objective_settings_are_clear_errors(config):
  config.objective.kind = "mae"
  with pytest.raises(ValueError, match="'mae'; valid: jepa, autoencoder"):
    agents.validate(config)
  config.objective.kind = "jepa"
  config.objective.regularizer = "barlow"
  with pytest.raises(ValueError, match="'barlow'; valid: vicreg, sigreg, none"):
    agents.validate(config)
  config.objective.regularizer = "vicreg"
  config.objective.target = "teacher"
  with pytest.raises(ValueError, match="'teacher'; valid: ema, online"):
    agents.validate(config)
  config.objective.target = "online"
  config.data.frames = 1
  with pytest.raises(ValueError, match="frames must be at least 2"):
    agents.validate(config)


def test_single_agent_step_equals_the_vmapped_step(config):
  from sjepa_jax import train  # pylint: disable=g-import-not-at-top
  config.optim.eps = 1e-3  # see test_vmapped_agents_equal_agents_trained_alone
  views = ["forest"]
  stacked, keys = world.stack_views(views), agents.agent_keys(0, views)
  plain = train.make_step(config, None, None, num_agents=1)
  state = agents.init_agents(config, views, 0)
  for i in range(REAL_STEPS + 1):
    state, metrics = plain(state, stacked, keys, i)
  vmapped, vmetrics = _train(config, views, steps=REAL_STEPS + 1)
  _assert_moved(agents.init_agents(config, views, 0).params, vmapped.params)
  chex.assert_trees_all_close(state, vmapped, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(metrics, vmetrics, atol=1e-5, rtol=1e-5)


def test_lax_map_over_agents_equals_vmap(config):
  from sjepa_jax import train  # pylint: disable=g-import-not-at-top
  config.optim.eps = 1e-3  # see test_vmapped_agents_equal_agents_trained_alone
  views = ["mountain", "forest"]
  stacked, keys = world.stack_views(views), agents.agent_keys(0, views)
  results = []
  for agent_map in ("vmap", "lax_map"):
    config.agent_map = agent_map
    step = train.make_step(config, None, None, num_agents=2)
    state = agents.init_agents(config, views, 0)
    for i in range(REAL_STEPS + 1):
      state, metrics = step(state, stacked, keys, i)
    results.append((state, metrics))
  _assert_moved(agents.init_agents(config, views, 0).params, results[0][0].params)
  chex.assert_trees_all_close(results[0], results[1], atol=1e-5, rtol=1e-5)


def test_auto_agent_map_is_lax_map_on_cpu_and_vmap_on_accelerators(config, monkeypatch):
  assert config.agent_map == "auto"  # the default
  assert agents.agent_map(config) == "lax_map"  # this suite runs on CPU
  for backend, expected in (("gpu", "vmap"), ("tpu", "vmap"), ("cpu", "lax_map")):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert agents.agent_map(config) == expected
  assert agents.agent_map(config, agents_sharded=True) == "vmap"  # one agent per device
  config.agent_map = "vmap"
  assert agents.agent_map(config) == "vmap"  # an explicit choice is kept on every backend
  config.agent_map = "pmap"
  with pytest.raises(ValueError, match="'pmap'; valid: auto, vmap, lax_map"):
    agents.validate(config)
  with pytest.raises(ValueError, match="'pmap'; valid: auto, vmap, lax_map"):
    agents.agent_map(config)
