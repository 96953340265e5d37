"""Two sets of features of the same paired states compared: maps from the target's into the
source's, the source's probes carried across them with zero gradient steps, and the
shared-part decomposition (``shared.decompose``); with the features the study compares
beside the agents' (pixel PCA).

Shapes: N = paired states (fitting then held out), D = latent size.
"""

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sjepa_jax import align
from sjepa_jax import probes
from sjepa_jax import shared

CONTROL_FIELDS = ("r2_lstsq", "r2_identity", "r2_ridge", "r2_ridge_uniform", "r2_procrustes",
                  "isometry_gap", "isometry_gap_whitened", "cka_unbiased",
                  "native_acc", "transfer_acc", "native_position_r2", "transfer_position_r2")
# The maps of every studied pair that ``export`` writes as files.
EXPORTED_MAPS = ("ridge", "procrustes")


@functools.partial(jax.jit, static_argnames=("n_fit", "dim"))
def pixel_pca(obs_NxHxWx3: jax.Array, n_fit: int, dim: int, key: jax.Array) -> jax.Array:
  """Raw pixels projected on their top ``dim`` principal directions (fitted on the first
  ``n_fit`` rows): the no-learning baseline. Randomised range finder with power iterations.

  References: Halko, Martinsson and Tropp, arXiv 0909.4061.
  """
  x = obs_NxHxWx3.reshape(obs_NxHxWx3.shape[0], -1)
  mean = x[:n_fit].mean(0)
  fit = x[:n_fit] - mean
  q = jax.random.normal(key, (x.shape[1], dim + 16))
  for _ in range(4):
    q = jnp.linalg.qr(fit.T @ jnp.linalg.qr(fit @ q)[0])[0]
  components = jnp.linalg.svd(fit @ q, full_matrices=False)[2][:dim] @ q.T  # (dim, pixels)
  return (x - mean) @ components.T


@dataclasses.dataclass
class Space:
  """One set of features of the paired states, with its own probes already fitted."""
  z: jax.Array  # (N, D): the first n_fit rows fit maps and probes, the rest are held out
  probes: dict[str, probes.Probe]  # by label
  scores: dict[str, float]  # held-out: <label>_acc or <label>_r2, class_probe_grad_norm, ...


def make_space(z_NxD: jax.Array, labels: dict[str, jax.Array], n_fit: int,
               probe_steps: int, num_classes: dict[str, int], mlp: tuple[str, ...] = ()
               ) -> Space:
  """Fits every label's probe on the fitting rows and scores it on the held-out rows."""
  fitted, scores = probes.evaluate(z_NxD, labels, n_fit, num_classes, probe_steps, mlp=mlp)
  return Space(z_NxD, fitted, scores)


def _scored(prefix: str, name: str, probe: probes.Probe) -> str:
  """``<prefix>_acc`` for the class label (the headline), else ``<prefix>_<label>_<acc|r2>``
  (``native_position_r2``, ``transfer_joint_positions_r2``)."""
  return f"{prefix}_acc" if name == "class" else f"{prefix}_{probes.score_name(name, probe)}"


def _transfers(source: Space, outputs_of, labels: dict[str, jax.Array], n_fit: int,
               suffix: str = "") -> dict[str, float]:
  """The source's probe of every label scored on the target's held-out latents,
  ``outputs_of(probe)`` giving each probe's outputs there."""
  out = {}
  for name, p in source.probes.items():
    y = labels[name][n_fit:]
    got = outputs_of(p)
    out[_scored("transfer", name, p) + suffix] = float(
        jnp.mean(jnp.argmax(got, -1) == y) if p.classes
        else align.r2_score(got, y.reshape(y.shape[0], -1)))
  return out


def spaces(source: Space, target: Space, labels: dict[str, jax.Array], n_fit: int,
            shuffle_key: jax.Array | None = None) -> dict[str, Any]:
  """Maps target -> source, then transfers the source's probes to the target's latents.

  With ``shuffle_key`` the maps are fitted on pairs shuffled at random (a null control).
  The fitted ``maps`` (``EXPORTED_MAPS``) come back under that key, the shared-part
  decomposition (``shared.decompose``) under ``shared`` and its two spans under ``spans``.
  """
  x, y = target.z, source.z
  x_fit = x[:n_fit]
  if shuffle_key is not None:
    x_fit = x_fit[jax.random.permutation(shuffle_key, n_fit)]
  ev = align.evaluate_pair(x_fit, y[:n_fit], x[n_fit:], y[n_fit:])
  fitted = ev.pop("maps")
  out = {k: float(v) for k, v in ev.items() if jnp.ndim(v) == 0}
  decomposed = shared.decompose(x_fit, y[:n_fit], x[n_fit:], y[n_fit:], jax.random.key(0))
  out["shared"] = shared.summary(decomposed)
  out["spans"] = decomposed["spans"]
  out["singular_values"] = np.asarray(ev["singular_values"]).tolist()
  for name, p in target.probes.items():
    out[_scored("native", name, p)] = target.scores[probes.score_name(name, p)]
  if "class_acc" in source.scores:
    out["source_acc"] = source.scores["class_acc"]
  for suffix, kind in (("", "ridge"), ("_procrustes", "procrustes")):
    m = fitted[kind]
    out.update(_transfers(source, lambda p, m=m: probes.transfer(p, m, x[n_fit:]), labels,
                          n_fit, suffix))
  out["maps"] = {k: fitted[k] for k in EXPORTED_MAPS}
  return out


def identity_control(source: Space, target: Space, labels: dict[str, jax.Array],
                     n_fit: int) -> dict[str, float] | None:
  """The source's probes applied to the target's latents as they are (no map)."""
  if source.z.shape[1] != target.z.shape[1]:
    return None
  x, y = target.z[n_fit:], source.z[n_fit:]
  return {"r2_identity": float(align.r2_score(x, y)),
          **_transfers(source, lambda p: p.outputs(x), labels, n_fit)}


def control_figures(result: dict[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
  """A control's figures: ``CONTROL_FIELDS``, every label's native and transferred score, and
  the shared-part decomposition without its curves."""
  labelled = [k for k in result if k.startswith(("native_", "transfer_"))
              and not k.endswith("_procrustes")]
  out = {k: result[k] for k in (*CONTROL_FIELDS, *labelled) if k in result and k not in drop}
  out["shared"] = {k: v for k, v in result["shared"].items()
                   if k not in ("curve", "canonical_correlations_validation")}
  return out


def shared_transfers(source: Space, target: Space, spans: tuple[shared.Span, shared.Span],
                     labels: dict[str, jax.Array], n_fit: int, k: int, kind: str,
                     num_classes: dict[str, int], probe_steps: int) -> dict[str, Any] | None:
  """Probes of every label on the source's first ``k`` shared directions (``native_*``) and
  the target's through the ``kind`` map between the spans (``transfer_*``): what the shared
  part carries, and what crosses through it. None when ``k`` is 0."""
  if k < 1:
    return None
  span_t, span_s = spans
  cx, cy = span_t.coords(target.z, k), span_s.coords(source.z, k)
  m = shared.span_maps(cx[:n_fit], cy[:n_fit], k)[kind]
  on_span = make_space(cy, labels, n_fit, probe_steps, num_classes)
  out = {"k": k, "map": kind}
  out.update({_scored("native", name, p): on_span.scores[probes.score_name(name, p)]
              for name, p in on_span.probes.items()})
  out.update(_transfers(on_span, lambda p: p.outputs(m.apply(cx[n_fit:])), labels, n_fit))
  return out
