"""FLOP counts against hand counts: layers, loops, linear algebra, and the training step
under either agent map."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from sjepa_jax import agents
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import flops
from sjepa_jax import train
from tests.conftest import init_agents


def test_a_dense_layer_costs_its_analytic_flops():
  x = jax.ShapeDtypeStruct((32, 64), jnp.float32)
  layer = nn.Dense(16)
  params = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert flops.count_flops(layer.apply, params, x) == flops.dense_flops(32, 64, 16)


def test_a_small_network_and_its_gradient_cost_what_the_layers_add_up_to():
  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(nn.relu(nn.Dense(48)(x)))

  x = jax.ShapeDtypeStruct((20, 30), jnp.float32)
  net = Mlp()
  params = jax.eval_shape(net.init, jax.random.key(0), x)
  matmuls = flops.dense_flops(20, 30, 48, bias=False) + flops.dense_flops(20, 48, 10, bias=False)
  forward = flops.count_flops(net.apply, params, x)
  # Two matmuls dominate; biases and the ReLU add one FLOP per output element at most.
  assert matmuls <= forward <= matmuls + 3 * 20 * (48 + 10)
  # The backward pass needs two matmuls per layer (one fewer for the first layer's input).
  loss = lambda p, x: jnp.sum(net.apply(p, x) ** 2)
  backward = flops.count_flops(jax.grad(loss), params, x)
  extra = flops.dense_flops(20, 48, 10, bias=False) + matmuls  # dW for both, dx for layer 2
  assert 0.95 * (matmuls + extra) <= backward <= 1.15 * (matmuls + extra)


def test_a_lax_map_of_k_matmuls_counts_k_matmuls_where_xla_counts_one():
  k, n = 5, 32
  w = jax.ShapeDtypeStruct((k, n, n), jnp.float32)
  v = jax.ShapeDtypeStruct((n, n), jnp.float32)
  fn = lambda w, v: jax.lax.map(lambda a: a @ v, w)
  assert flops.count_flops(fn, w, v) == k * 2 * n**3
  assert flops.xla_flops(fn, w, v) < 2 * 2 * n**3  # why XLA's count is not used
  fori = lambda v: jax.lax.fori_loop(0, k, lambda i, x: x @ v, v)
  assert flops.count_flops(fori, v) == k * (2 * n**3 + 1)  # + 1: the loop counter


def test_linear_algebra_counts_its_analytic_flops():
  m, n, r = 96, 64, 3
  a = jax.ShapeDtypeStruct((m, n), jnp.float32)
  square = jax.ShapeDtypeStruct((n, n), jnp.float32)
  rhs = jax.ShapeDtypeStruct((n, r), jnp.float32)
  thin_svd = lambda a: jnp.linalg.svd(a, full_matrices=False)
  assert flops.count_flops(thin_svd, a) == 14 * m * n**2 + 8 * n**3
  values = lambda a: jnp.linalg.svd(a, compute_uv=False)
  assert flops.count_flops(values, a) == 4 * m * n**2 - 4 * n**3 / 3
  # eigh symmetrises its input first: (a + a^T) / 2, two FLOPs per element.
  assert flops.count_flops(jnp.linalg.eigh, square) == 9 * n**3 + 2 * n**2
  # LU, then two triangular solves of r right-hand sides (plus a handful of index ops).
  solve = flops.count_flops(jnp.linalg.solve, square, rhs)
  assert 2 * n**3 / 3 + 2 * n**2 * r <= solve <= 2 * n**3 / 3 + 2 * n**2 * r + 10 * n * r
  batched = jax.ShapeDtypeStruct((4, m, n), jnp.float32)
  assert flops.count_flops(thin_svd, batched) == 4 * (14 * m * n**2 + 8 * n**3)


def test_a_while_loop_is_refused_not_undercounted():
  v = jax.ShapeDtypeStruct((4, 4), jnp.float32)
  loop = lambda v: jax.lax.while_loop(lambda x: x[0, 0] < 10.0, lambda x: x @ x, v)
  with pytest.raises(NotImplementedError, match="while_loop"):
    flops.count_flops(loop, v)


def test_the_training_step_costs_the_same_under_vmap_and_lax_map(config):
  """Agents one after another (lax.map) or batched (vmap): the same work, so the same count,
  twice one agent's (XLA's cost analysis counts the lax.map body once: one agent's)."""
  def args(views):
    state = jax.eval_shape(lambda: init_agents(config, views, 0))
    stacked = data.stack_views(data.source(config), views)
    return state, stacked, agents.agent_keys(0, views), 0, None

  learner = configs.learner_from_config(config)
  counts = {}
  for mode in ("vmap", "lax_map"):
    counts[mode] = flops.count_flops(train.step_function(learner, mode),
                                     *args(["mountain", "forest"]))
  assert abs(counts["lax_map"] / counts["vmap"] - 1) < 0.03, counts
  one = flops.count_flops(train.step_function(learner, num_agents=1), *args(["mountain"]))
  assert abs(counts["vmap"] / (2 * one) - 1) < 0.03, (counts, one)
