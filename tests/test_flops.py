"""XLA's FLOP counts against analytic counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from sjepa_jax import flops


def test_a_dense_layer_costs_its_analytic_flops():
  x = jax.ShapeDtypeStruct((32, 64), jnp.float32)
  layer = nn.Dense(16)
  params = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert flops.compiled_flops(layer.apply, params, x) == flops.dense_flops(32, 64, 16)


def test_a_small_network_and_its_gradient_cost_what_the_layers_add_up_to():
  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(nn.relu(nn.Dense(48)(x)))

  x = jax.ShapeDtypeStruct((20, 30), jnp.float32)
  net = Mlp()
  params = jax.eval_shape(net.init, jax.random.key(0), x)
  matmuls = flops.dense_flops(20, 30, 48, bias=False) + flops.dense_flops(20, 48, 10, bias=False)
  forward = flops.compiled_flops(net.apply, params, x)
  # Two matmuls dominate; biases and the ReLU add one FLOP per output element at most.
  assert matmuls <= forward <= matmuls + 3 * 20 * (48 + 10)
  # The backward pass needs two matmuls per layer (one fewer for the first layer's input).
  loss = lambda p, x: jnp.sum(net.apply(p, x) ** 2)
  backward = flops.compiled_flops(jax.grad(loss), params, x)
  extra = flops.dense_flops(20, 48, 10, bias=False) + matmuls  # dW for both, dx for layer 2
  assert 0.95 * (matmuls + extra) <= backward <= 1.15 * (matmuls + extra)
