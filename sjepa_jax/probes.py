"""Probes on frozen latents: what a latent lets a linear read-out recover, label by label.

A label of integer class ids is read by multinomial logistic regression (L-BFGS) and scored
by accuracy; a label of float values (a position, a colour) by closed-form ridge regression
and scored by R^2. Features are standardised with the fitting set's statistics, which the
fitted ``Probe`` carries, so it applies to new latents as they come. A one-hidden-layer
MLP probe (``mlp_accuracy``) is a diagnostic only: where it finds a class a linear probe
misses, the latent holds it nonlinearly; where it does not, the latent does not hold it.

Zero-shot transfer applies agent A's probe to agent B's latents mapped into A's space.

Shapes: N = examples, D = latent size, C = classes or regression targets.
"""

import functools
from typing import Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from sjepa_jax import align
from sjepa_jax import errors


@flax.struct.dataclass
class Probe:
  """A linear read-out ``outputs(z) = ((z - mean) / std) @ w + b``: class logits when
  ``classes`` (``predict`` gives the class, ``score`` the accuracy), else regressed values
  (``predict`` gives them, ``score`` the R^2)."""
  mean: jax.Array  # (D,)
  std: jax.Array  # (D,)
  w: jax.Array  # (D, C)
  b: jax.Array  # (C,)
  classes: bool = flax.struct.field(pytree_node=False, default=False)

  def outputs(self, z_NxD: jax.Array) -> jax.Array:
    """Logits or regressed values, (N, C)."""
    if z_NxD.shape[-1] != self.w.shape[0]:
      raise errors.UserError(f"This probe reads latents of size {self.w.shape[0]}, got "
                             f"{z_NxD.shape[-1]}: map them into its agent's space first.")
    return ((z_NxD - self.mean) / self.std) @ self.w + self.b

  def predict(self, z_NxD: jax.Array) -> jax.Array:
    """Class ids (N,) or values (N, C)."""
    out = self.outputs(z_NxD)
    return jnp.argmax(out, -1) if self.classes else out

  def score(self, z_NxD: jax.Array, y_N: jax.Array) -> jax.Array:
    """Accuracy against class ids, or R^2 against values."""
    if self.classes:
      return jnp.mean(self.predict(z_NxD) == y_N)
    return align.r2_score(self.outputs(z_NxD), y_N.reshape(y_N.shape[0], -1))


def _standardise(z_NxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  return z_NxD.mean(0), z_NxD.std(0) + 1e-6


@jax.jit
def fit_regressor(z_NxD: jax.Array, y_NxC: jax.Array, l2: float = 1e-2) -> Probe:
  """Closed-form ridge regression of values on standardised latents (``align.ridge_weights``:
  ``l2`` relative to the mean eigenvalue of the Gram matrix)."""
  y_NxC = y_NxC.reshape(y_NxC.shape[0], -1)
  mean, std = _standardise(z_NxD)
  x = (z_NxD - mean) / std
  y_mean = y_NxC.mean(0)
  return Probe(mean, std, align.ridge_weights(x, y_NxC - y_mean, l2), y_mean)


def _logistic_loss(wb, x_NxD, labels_N, l2):
  logits = x_NxD @ wb[0] + wb[1]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_N).mean()
  return ce + l2 * jnp.sum(wb[0] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_classifier(z_NxD: jax.Array, labels_N: jax.Array, num_classes: int, steps: int = 500,
                   l2: float = 1e-4, tol: float = 1e-5) -> Probe:
  """Multinomial logistic regression, full batch, solved by L-BFGS (zoom line search) until
  the gradient norm of the objective is below ``tol`` or after ``steps`` iterations.

  The objective (mean cross-entropy + l2 |w|^2 on standardised features) is strongly
  convex, so a small gradient norm means the probe is at its optimum: a property of the
  latents, not of an optimiser's budget. ``classifier_grad_norm`` says how close it got.
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
  return Probe(mean, std, *wb, classes=True)


@jax.jit
def classifier_grad_norm(probe: Probe, z_NxD: jax.Array, labels_N: jax.Array,
                         l2: float = 1e-4) -> jax.Array:
  """Norm of the gradient of ``fit_classifier``'s objective at ``probe``'s weights: near 0
  at the optimum."""
  x = (z_NxD - probe.mean) / probe.std
  return optax.tree.norm(jax.grad(_logistic_loss)((probe.w, probe.b), x, labels_N, l2))


def _fit_mlp(x_NxD: jax.Array, out: int, loss_of_outputs, hidden: int, steps: int, lr: float,
             weight_decay: float, seed: int):
  """A one-hidden-layer MLP (GELU) trained full batch by AdamW on ``loss_of_outputs``;
  returns its forward function."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  d = x_NxD.shape[1]
  params = {"w1": jax.random.normal(k1, (d, hidden)) / jnp.sqrt(d), "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, out)) / jnp.sqrt(hidden), "b2": jnp.zeros(out)}
  forward = lambda p, x: jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  loss = lambda p: loss_of_outputs(forward(p, x_NxD))
  tx = optax.adamw(lr, weight_decay=weight_decay)

  def step(_, carry):
    p, opt = carry
    updates, opt = tx.update(jax.grad(loss)(p), opt, p)
    return optax.apply_updates(p, updates), opt

  params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
  return functools.partial(forward, params)


@functools.partial(jax.jit, static_argnames=("num_classes", "hidden", "steps"))
def mlp_accuracy(z_fit: jax.Array, labels_fit: jax.Array, z_test: jax.Array,
                 labels_test: jax.Array, num_classes: int, hidden: int = 256,
                 steps: int = 500, lr: float = 3e-3, weight_decay: float = 1e-4,
                 seed: int = 0) -> jax.Array:
  """Held-out accuracy of a one-hidden-layer MLP probe (GELU, full-batch AdamW): a
  diagnostic of whether a class is in the latent at all, not a linear read-out."""
  mean, std = _standardise(z_fit)
  loss = lambda logits: optax.softmax_cross_entropy_with_integer_labels(
      logits, labels_fit).mean()
  mlp = _fit_mlp((z_fit - mean) / std, num_classes, loss, hidden, steps, lr, weight_decay,
                 seed)
  return jnp.mean(jnp.argmax(mlp((z_test - mean) / std), -1) == labels_test)


@functools.partial(jax.jit, static_argnames=("hidden", "steps"))
def mlp_regress(x_fit: jax.Array, y_fit: jax.Array, x_test: jax.Array, hidden: int = 128,
                steps: int = 400, lr: float = 3e-3, weight_decay: float = 1e-4,
                seed: int = 0) -> jax.Array:
  """Predictions (N_test, C) of a one-hidden-layer MLP regressing Y on X, both standardised
  with the fitting rows' statistics: a nonlinear map between two agents, or from the
  world's state to a latent (what the state explains of it)."""
  y_fit = y_fit.reshape(y_fit.shape[0], -1)
  mean, std = _standardise(x_fit)
  y_mean, y_std = _standardise(y_fit)
  loss = lambda out: jnp.mean((out - (y_fit - y_mean) / y_std) ** 2)
  mlp = _fit_mlp((x_fit - mean) / std, y_fit.shape[1], loss, hidden, steps, lr, weight_decay,
                 seed)
  return mlp((x_test - mean) / std) * y_std + y_mean


def mlp_r2(x_fit: jax.Array, y_fit: jax.Array, x_test: jax.Array, y_test: jax.Array,
           **kwargs) -> jax.Array:
  """Held-out R^2 (``align.r2_score``) of ``mlp_regress``."""
  return align.r2_score(mlp_regress(x_fit, y_fit, x_test, **kwargs),
                        y_test.reshape(y_test.shape[0], -1))


def fit(z_NxD: jax.Array, labels: Mapping[str, jax.Array], num_classes: Mapping[str, int],
        steps: int = 500) -> dict[str, Probe]:
  """A probe per label: a classifier for each label named in ``num_classes`` (integer ids),
  a regressor for every other (float values)."""
  return {name: (fit_classifier(z_NxD, y, num_classes[name], steps=steps)
                 if name in num_classes else fit_regressor(z_NxD, y))
          for name, y in labels.items()}


# The world's probe scores in the order tables show them, with their short headings.
SCORE_HEADINGS = {"class_acc": "class", "shape_acc": "shape", "size_acc": "size",
                  "position_r2": "pos R2", "distractor_centroid_r2": "pucks R2",
                  "class_mlp_acc": "class MLP"}


def score_name(name: str, probe: Probe) -> str:
  """``<label>_acc`` for a classifier, ``<label>_r2`` for a regressor."""
  return f"{name}_{'acc' if probe.classes else 'r2'}"


def evaluate(z_NxD: jax.Array, labels: Mapping[str, jax.Array], n_fit: int,
             num_classes: Mapping[str, int], steps: int = 500, mlp: tuple[str, ...] = ()
             ) -> tuple[dict[str, Probe], dict[str, float]]:
  """Probes of every label fitted on the first ``n_fit`` rows, scored on the rest.

  Returns (probes by label, scores): ``<label>_acc`` or ``<label>_r2`` held out;
  ``class_probe_grad_norm``, how far the class probe's solver stopped from its optimum
  (near 0: converged); and ``<label>_mlp_acc`` for the class labels named in ``mlp``.
  """
  fitted = fit(z_NxD[:n_fit], {k: y[:n_fit] for k, y in labels.items()}, num_classes, steps)
  scores = {score_name(k, p): float(p.score(z_NxD[n_fit:], labels[k][n_fit:]))
            for k, p in fitted.items()}
  if "class" in fitted:
    scores["class_probe_grad_norm"] = float(classifier_grad_norm(
        fitted["class"], z_NxD[:n_fit], labels["class"][:n_fit]))
  for k in mlp:
    if k in labels:
      scores[f"{k}_mlp_acc"] = float(mlp_accuracy(
          z_NxD[:n_fit], labels[k][:n_fit], z_NxD[n_fit:], labels[k][n_fit:], num_classes[k]))
  return fitted, scores


def transfer(probe: Probe, target_to_source: align.LinearMap, z_target_NxE: jax.Array
             ) -> jax.Array:
  """Zero-shot transfer: the source agent's probe on the target agent's latents mapped into
  the source's space. No gradient step touches the target; (N, C) outputs."""
  return probe.outputs(target_to_source.apply(z_target_NxE))
