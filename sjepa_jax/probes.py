"""Probes on frozen latents: multinomial logistic regression (optax) and closed-form ridge,
and zero-shot transfer of a probe to another agent through a linear map.

Features are standardised with the training set's statistics, which the fitted probe
carries, so a probe applies to new latents as they come.

Shapes: N = examples, D = latent size, C = classes.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sjepa_jax import align


class LinearProbe(NamedTuple):
  """``predict(z) = ((z - mean) / std) @ w + b``."""
  mean: jax.Array  # (D,)
  std: jax.Array  # (D,)
  w: jax.Array  # (D, C)
  b: jax.Array  # (C,)


def _standardise(z_NxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  return z_NxD.mean(0), z_NxD.std(0) + 1e-6


def apply(probe: LinearProbe, z_NxD: jax.Array) -> jax.Array:
  """Probe outputs (logits or regression values), (N, C)."""
  return ((z_NxD - probe.mean) / probe.std) @ probe.w + probe.b


def fit_ridge(z_NxD: jax.Array, y_NxC: jax.Array, l2: float = 1e-2) -> LinearProbe:
  """Closed-form ridge regression of targets (e.g. one-hot classes) on latents."""
  mean, std = _standardise(z_NxD)
  x = (z_NxD - mean) / std
  y_mean = y_NxC.mean(0)
  n, d = x.shape
  w = jnp.linalg.solve(x.T @ x + l2 * n * jnp.eye(d), x.T @ (y_NxC - y_mean))
  return LinearProbe(mean, std, w, y_mean)


def fit_logistic(z_NxD: jax.Array, labels_N: jax.Array, num_classes: int, steps: int = 500,
                 lr: float = 0.05, l2: float = 1e-4) -> LinearProbe:
  """Multinomial logistic regression, full batch, Adam for ``steps`` steps."""
  mean, std = _standardise(z_NxD)
  x = (z_NxD - mean) / std
  init = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))

  def loss(wb):
    logits = x @ wb[0] + wb[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_N).mean()
    return ce + l2 * jnp.sum(wb[0] ** 2)

  tx = optax.adam(lr)
  def body(carry, _):
    wb, opt = carry
    grads = jax.grad(loss)(wb)
    updates, opt = tx.update(grads, opt)
    return (optax.apply_updates(wb, updates), opt), None
  (wb, _), _ = jax.lax.scan(body, (init, tx.init(init)), None, length=steps)
  return LinearProbe(mean, std, *wb)


def accuracy(probe: LinearProbe, z_NxD: jax.Array, labels_N: jax.Array) -> jax.Array:
  """Fraction of examples whose highest probe output is the true class."""
  return jnp.mean(jnp.argmax(apply(probe, z_NxD), -1) == labels_N)


def transfer(probe: LinearProbe, target_to_source: align.LinearMap,
             z_target_NxE: jax.Array) -> jax.Array:
  """Zero-shot transfer: the source agent's probe on the target agent's latents mapped into
  the source's space. No gradient step touches the target; (N, C) outputs."""
  return apply(probe, align.apply_map(target_to_source, z_target_NxE))
