"""Probes on frozen latents: multinomial logistic regression (L-BFGS) and closed-form ridge,
and zero-shot transfer of a probe to another agent through a linear map.

Features are standardised with the training set's statistics, which the fitted probe
carries, so a probe applies to new latents as they come.

Shapes: N = examples, D = latent size, C = classes.
"""

import functools
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
  """Closed-form ridge regression of targets (e.g. one-hot classes) on standardised latents
  (``align.ridge_weights``: ``l2`` relative to the mean eigenvalue of the Gram matrix)."""
  mean, std = _standardise(z_NxD)
  x = (z_NxD - mean) / std
  y_mean = y_NxC.mean(0)
  return LinearProbe(mean, std, align.ridge_weights(x, y_NxC - y_mean, l2), y_mean)


def _logistic_loss(wb, x_NxD, labels_N, l2):
  logits = x_NxD @ wb[0] + wb[1]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_N).mean()
  return ce + l2 * jnp.sum(wb[0] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logistic(z_NxD: jax.Array, labels_N: jax.Array, num_classes: int, steps: int = 500,
                 l2: float = 1e-4, tol: float = 1e-5) -> LinearProbe:
  """Multinomial logistic regression, full batch, solved by L-BFGS (zoom line search) until
  the gradient norm of the objective is below ``tol`` or after ``steps`` iterations.

  The objective (mean cross-entropy + l2 |w|^2 on standardised features) is strongly
  convex, so a small gradient norm means the probe is at its optimum: a property of the
  latents, not of an optimiser's budget. ``logistic_grad_norm`` says how close it got.
  """
  mean, std = _standardise(z_NxD)
  x = (z_NxD - mean) / std
  loss = functools.partial(_logistic_loss, x_NxD=x, labels_N=labels_N, l2=l2)
  init = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    wb, state = carry
    value, grad = value_and_grad(wb, state=state)
    updates, state = solver.update(grad, state, wb, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(wb, updates), state

  def going(carry):
    count = optax.tree.get(carry[1], "count")
    grad_norm = optax.tree.norm(optax.tree.get(carry[1], "grad"))
    return (count == 0) | ((count < steps) & (grad_norm >= tol))

  wb, _ = jax.lax.while_loop(going, step, (init, solver.init(init)))
  return LinearProbe(mean, std, *wb)


@jax.jit
def logistic_grad_norm(probe: LinearProbe, z_NxD: jax.Array, labels_N: jax.Array,
                       l2: float = 1e-4) -> jax.Array:
  """Norm of the gradient of ``fit_logistic``'s objective at ``probe``'s weights: near 0 at
  the optimum."""
  x = (z_NxD - probe.mean) / probe.std
  return optax.tree.norm(jax.grad(_logistic_loss)((probe.w, probe.b), x, labels_N, l2))


def evaluate(z_NxD: jax.Array, labels: dict[str, jax.Array], n_fit: int, num_classes: int,
             steps: int = 500) -> tuple[LinearProbe, LinearProbe | None, dict[str, float]]:
  """The probes of every study: the class probe (logistic) and, where the labels have a
  ``position`` (the world), the position probe (ridge), fitted on the first ``n_fit`` rows.

  Returns (class probe, position probe or None, scores): ``class_acc`` and
  ``position_r2`` on the held-out rows, and ``class_probe_grad_norm``, how far the class
  probe's solver stopped from the optimum (near 0: converged). Where the labels have a
  ``distractor_centroid`` (the world), a ridge probe on it adds ``distractor_r2``: a
  diagnostic of what else the latents keep.
  """
  cls, pos = labels["class"], labels.get("position")
  clf = fit_logistic(z_NxD[:n_fit], cls[:n_fit], num_classes, steps=steps)
  scores = {"class_acc": float(accuracy(clf, z_NxD[n_fit:], cls[n_fit:])),
            "class_probe_grad_norm": float(logistic_grad_norm(clf, z_NxD[:n_fit], cls[:n_fit]))}
  if pos is None:
    return clf, None, scores
  reg = fit_ridge(z_NxD[:n_fit], pos[:n_fit])
  scores["position_r2"] = float(align.r2_score(apply(reg, z_NxD[n_fit:]), pos[n_fit:]))
  others = labels.get("distractor_centroid")
  if others is not None:
    others_probe = fit_ridge(z_NxD[:n_fit], others[:n_fit])
    scores["distractor_r2"] = float(align.r2_score(apply(others_probe, z_NxD[n_fit:]),
                                                   others[n_fit:]))
  return clf, reg, scores


def accuracy(probe: LinearProbe, z_NxD: jax.Array, labels_N: jax.Array) -> jax.Array:
  """Fraction of examples whose highest probe output is the true class."""
  return jnp.mean(jnp.argmax(apply(probe, z_NxD), -1) == labels_N)


def transfer(probe: LinearProbe, target_to_source: align.LinearMap,
             z_target_NxE: jax.Array) -> jax.Array:
  """Zero-shot transfer: the source agent's probe on the target agent's latents mapped into
  the source's space. No gradient step touches the target; (N, C) outputs."""
  return apply(probe, align.apply_map(target_to_source, z_target_NxE))
