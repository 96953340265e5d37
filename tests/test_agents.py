"""The vmapped step: equal to training agents one by one, compiled once, keyed by view."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sjepa_jax import agents
from sjepa_jax import configs
from sjepa_jax import models
from sjepa_jax import objectives
from sjepa_jax import world


def _init(config, views, seed=0):
  return agents.init_agents(configs.learner_from_config(config), views, seed)


def _train(config, views, steps, seed=0):
  learner = configs.learner_from_config(config)
  state = agents.init_agents(learner, views, seed)
  step = jax.jit(jax.vmap(functools.partial(agents.train_step, learner),
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
  _assert_moved(_init(config, ["mountain", "forest"], 0).params, together.params)
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
  learner = configs.learner_from_config(config)
  state = agents.init_agents(learner, views, 0)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, stacked, keys, i):
    return jax.vmap(functools.partial(agents.train_step, learner),
                    in_axes=(0, 0, 0, None))(state, stacked, keys, i)

  stacked, keys = world.stack_views(views), agents.agent_keys(0, views)
  for i in range(3):
    state, _ = step(state, stacked, keys, jnp.int32(i))


def test_ema_target_follows_the_encoder(config):
  config.objective.target = "ema"
  config.objective.ema_decay = 0.5
  views = ["drone"]
  learner = configs.learner_from_config(config)
  state = agents.init_agents(learner, views, 0)
  step = jax.jit(jax.vmap(functools.partial(agents.train_step, learner),
                          in_axes=(0, 0, 0, None)))
  stacked, keys = world.stack_views(views), agents.agent_keys(0, views)
  for i in range(REAL_STEPS + 1):
    new, _ = step(state, stacked, keys, i)
    expected = jax.tree.map(lambda t, p: 0.5 * t + 0.5 * p, state.target, new.params["encoder"])
    chex.assert_trees_all_close(new.target, expected, atol=1e-6)
    state = new
  _assert_moved(_init(config, views, 0).params["encoder"], state.params["encoder"])
  _assert_moved(state.params["encoder"], state.target)  # lags behind: not a copy


def test_autoencoder_objective_learns_to_reconstruct(config):
  config.objective.kind = "autoencoder"
  config.num_train_steps = 12  # the learning-rate schedule spans the steps taken
  config.optim.lr = 3e-3
  state = _init(config, ["mountain"], 0)
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
  state = _init(config, ["mountain"], 0)
  assert "head" in state.params and "decoder" not in state.params
  _, first = _train(config, ["mountain"], steps=1)
  _, last = _train(config, ["mountain"], steps=80)
  assert set(first) >= {"class_xent", "position_mse", "class_acc", "embedding_std"}
  assert float(last["position_mse"][0]) < 0.35 * float(first["position_mse"][0])


def test_bad_objective_settings_are_clear_errors(config):
  config.objective.kind = "mae"
  with pytest.raises(ValueError, match="'mae'; valid: jepa, autoencoder"):
    configs.validate(config)
  config.objective.kind = "jepa"
  config.objective.regularizer = "barlow"
  with pytest.raises(ValueError, match="'barlow'; valid: vicreg, sigreg, none"):
    configs.validate(config)
  config.objective.regularizer = "vicreg"
  config.objective.target = "teacher"
  with pytest.raises(ValueError, match="'teacher'; valid: ema, online"):
    configs.validate(config)
  config.objective.target = "online"
  config.data.frames = 1
  with pytest.raises(ValueError, match="frames must be at least 2"):
    configs.validate(config)


def test_single_agent_step_equals_the_vmapped_step(config):
  from sjepa_jax import train  # pylint: disable=g-import-not-at-top
  config.optim.eps = 1e-3  # see test_vmapped_agents_equal_agents_trained_alone
  views = ["forest"]
  stacked, keys = world.stack_views(views), agents.agent_keys(0, views)
  plain = train.make_step(configs.learner_from_config(config), "vmap", num_agents=1)
  state = _init(config, views, 0)
  for i in range(REAL_STEPS + 1):
    state, metrics = plain(state, stacked, keys, i)
  vmapped, vmetrics = _train(config, views, steps=REAL_STEPS + 1)
  _assert_moved(_init(config, views, 0).params, vmapped.params)
  chex.assert_trees_all_close(state, vmapped, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(metrics, vmetrics, atol=1e-5, rtol=1e-5)


def test_lax_map_over_agents_equals_vmap(config):
  from sjepa_jax import train  # pylint: disable=g-import-not-at-top
  config.optim.eps = 1e-3  # see test_vmapped_agents_equal_agents_trained_alone
  views = ["mountain", "forest"]
  stacked, keys = world.stack_views(views), agents.agent_keys(0, views)
  results = []
  for agent_map in ("vmap", "lax_map"):
    step = train.make_step(configs.learner_from_config(config), agent_map, num_agents=2)
    state = _init(config, views, 0)
    for i in range(REAL_STEPS + 1):
      state, metrics = step(state, stacked, keys, i)
    results.append((state, metrics))
  _assert_moved(_init(config, views, 0).params, results[0][0].params)
  chex.assert_trees_all_close(results[0], results[1], atol=1e-5, rtol=1e-5)


def test_auto_agent_map_is_lax_map_on_cpu_and_vmap_on_accelerators(config, monkeypatch):
  assert config.agent_map == "auto"  # the default
  assert configs.agent_map(config) == "lax_map"  # this suite runs on CPU
  for backend, expected in (("gpu", "vmap"), ("tpu", "vmap"), ("cpu", "lax_map")):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert configs.agent_map(config) == expected
  assert configs.agent_map(config, agents_sharded=True) == "vmap"  # one agent per device
  config.agent_map = "vmap"
  assert configs.agent_map(config) == "vmap"  # an explicit choice is kept on every backend
  config.agent_map = "pmap"
  with pytest.raises(ValueError, match="'pmap'; valid: auto, vmap, lax_map"):
    configs.validate(config)
  with pytest.raises(ValueError, match="'pmap'; valid: auto, vmap, lax_map"):
    configs.agent_map(config)


def test_motion_blocks_fall_where_the_frames_change():
  """A planted change in one patch: every block is centred on it (with one block of 3 x 3
  tokens the mask is exactly its neighbourhood), and the masks differ per sample."""
  obs = jnp.zeros((2, 2, 16, 16, 3))
  obs = obs.at[0, 1, 8:12, 4:8].set(1.0)  # sample 0: patch (row 2, col 1) of a 4 x 4 grid
  obs = obs.at[1, 1, 0:4, 12:16].set(1.0)  # sample 1: patch (0, 3), a corner
  mask = objectives.motion_blocks(jax.random.key(0), obs, patch=4, blocks=1, size=3)
  grid = np.asarray(mask).reshape(2, 4, 4)
  expected0 = np.zeros((4, 4), bool)
  expected0[1:4, 0:3] = True
  np.testing.assert_array_equal(grid[0], expected0)
  expected1 = np.zeros((4, 4), bool)
  expected1[0:3, 1:4] = True  # clipped inside the grid
  np.testing.assert_array_equal(grid[1], expected1)


@pytest.mark.parametrize("context,horizon,blocks", [("tokens", 0, 2), ("latent", 1, 0)])
def test_token_prediction_learns_its_targets(config, context, horizon, blocks):
  """The token term is in the loss and falls with training (I-JEPA: masked blocks of the same
  frame from the visible tokens; across time: the next frame's tokens from the latent and
  the action); the encoder carries a mask token only when it is given masks."""
  config.objective.token_weight = 1.0
  config.objective.token_context = context
  config.objective.token_horizon = horizon
  config.objective.mask_blocks = blocks
  config.num_train_steps = 30
  config.optim.lr = 3e-3
  state = _init(config, ["mountain"])
  assert "token_predictor" in state.params
  assert ("mask_token" in state.params["encoder"]) == (blocks > 0)
  _, first = _train(config, ["mountain"], steps=1)
  _, last = _train(config, ["mountain"], steps=30)
  assert 0 < float(first["masked_fraction"][0]) <= 1
  assert float(last["token_prediction"][0]) < 0.7 * float(first["token_prediction"][0])


def test_seq_jepa_aggregates_and_predicts_the_last_latent(config):
  config.objective.seq_weight = 1.0
  config.data.frames = 4
  state = _init(config, ["forest"])
  assert state.params["aggregator"]["pos"].shape == (1, 3, config.model.width)  # A, L - 1, W
  _, metrics = _train(config, ["forest"], steps=2)
  assert np.isfinite(float(metrics["seq_prediction"][0])) and float(
      metrics["seq_prediction"][0]) > 0


def test_seq_jepa_predicts_the_last_target_latent_from_the_earlier_frames_alone(config):
  """Planted: a target whose last latent is the aggregator's prediction costs exactly 0, and
  one shifted by 1 in every dimension costs exactly 1 (the mean squared error per dimension);
  the last frame's online latent and the earlier targets are not inputs, the first frame
  is; and the term enters the loss with its weight."""
  config.objective.seq_weight = 1.0
  config.data.frames = 4
  learner = configs.learner_from_config(config)
  params = agents.init_agent(learner, agents.agent_keys(0, ["forest"])[0]).params
  k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
  z = jax.random.normal(k1, (8, 4, config.model.dim))
  actions = jax.random.normal(k2, (8, 3, 2))
  _, pred = learner.model.apply({"params": params}, z[:, :-1], actions,
                                method=learner.model.aggregate)
  target = jax.random.normal(k3, z.shape).at[:, -1].set(pred)
  seq = lambda z, target: float(objectives.seq_loss(learner.model, params, z, target, actions)[0])
  assert seq(z, target) < 1e-10
  np.testing.assert_allclose(seq(z, target.at[:, -1].add(1.0)), 1.0, rtol=1e-5)
  assert seq(z.at[:, -1].set(0.0), target.at[:, :-1].set(0.0)) < 1e-10
  assert seq(z.at[:, 0].set(z[:, 1]), target) > 1e-4  # (a shift: layer-normalised away)
  batch = learner.sample(jax.random.key(1), world.get_view("forest"), None)
  loss = lambda weight: objectives.jepa_loss(
      learner.model, learner.objective, params, params["encoder"], batch, jax.random.key(2),
      hparams={"objective.seq_weight": weight})
  (without, _), (with_three, metrics) = loss(0.0), loss(3.0)
  np.testing.assert_allclose(with_three - without, 3 * metrics["seq_prediction"], rtol=1e-4)


@pytest.mark.slow
def test_a_bfloat16_step_stays_close_to_the_float32_step(config):
  """Mixed precision: the networks compute in bfloat16 (their matmuls are bf16), while the
  parameters, optimiser state and metrics stay float32, and one step moves the parameters
  about as the float32 step does (bf16 keeps 8 bits of mantissa: loss within 2%, the update
  within 10% of its size)."""
  config.model.compute_dtype = "float32"
  f32 = configs.learner_from_config(config)
  config.model.compute_dtype = "bfloat16"
  bf16 = configs.learner_from_config(config)
  view, key = world.get_view("forest"), agents.agent_keys(0, ["forest"])[0]
  state = agents.init_agent(f32, key)
  chex.assert_trees_all_equal(state, agents.init_agent(bf16, key))  # same float32 params
  step = lambda learner, s, i: agents.train_step(learner, s, view, key, i)
  assert "bf16[" in str(jax.make_jaxpr(functools.partial(step, bf16))(state, 1))
  assert "bf16[" not in str(jax.make_jaxpr(functools.partial(step, f32))(state, 1))
  s32, s16 = state, state
  for i in range(2):  # step 0 has learning rate 0
    s32, m32 = jax.jit(functools.partial(step, f32))(s32, i)
    s16, m16 = jax.jit(functools.partial(step, bf16))(s16, i)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((s16, m16))
             if jnp.issubdtype(x.dtype, jnp.floating))
  np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=0.02)
  moved = jax.tree.map(lambda a, b: a - b, s32.params, state.params)
  off = jax.tree.map(lambda a, b: a - b, s16.params, s32.params)
  norm = lambda t: float(optax.tree.norm(t))
  assert 0 < norm(off) < 0.1 * norm(moved), (norm(off), norm(moved))
  z = models.encode_chunked(bf16.model, s16.params["encoder"],
                            jnp.zeros((20, config.data.image_size, config.data.image_size, 3)))
  assert z.dtype == jnp.float32  # what the maps and probes are given
  from sjepa_jax import align  # pylint: disable=g-import-not-at-top
  fit_and_score = lambda x, y: align.evaluate_pair(x[:12], y[:12], x[12:], y[12:], rank=2, k=2)
  has_bf16 = lambda z: "bf16" in str(jax.make_jaxpr(fit_and_score)(z, z))
  assert not has_bf16(z)  # the bfloat16 agent's latents are mapped and scored in float32
  assert has_bf16(z.astype(jnp.bfloat16))  # where bfloat16 latents would show
