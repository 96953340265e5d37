"""What a training run measures of its agents as it trains and when it ends: the latents'
spectra beside isotropic latents', CKA between agents, and linear (and MLP) probes of the
trained and random-init agents and of pixel PCA on held-out paired states, with the labels
the agents read no better than pixels.

Shapes: A = agents, N = paired states, D = latent size, U = views.
"""

from typing import Sequence

import jax
import ml_collections
import numpy as np

from sjepa_jax import agents
from sjepa_jax import align
from sjepa_jax import compare
from sjepa_jax import data
from sjepa_jax import losses
from sjepa_jax import models
from sjepa_jax import probes
from sjepa_jax import summaries


def make_encoder(model: models.WorldModel):
  """``(params, obs (U, N, H, W, 3), index (A,)) -> (A, N, D)``: agent ``a`` encodes the
  states as seen from view ``index[a]`` (``models.encode_chunked``)."""
  return lambda params, obs, index: models.encode_chunked(model, params["encoder"], obs, index)


# Rank metrics need many more states than dimensions: N = 8 D keeps isotropic Gaussian
# latents' effective rank above 0.9 D (at N = D / 2 it is below D / 2).
RANK_STATES_PER_DIM = 8


def eval_set_size(config: ml_collections.ConfigDict) -> int:
  """Paired states for the running evaluation: ``eval.alignment_pairs``, or 8 D if more."""
  return max(config.eval.alignment_pairs, RANK_STATES_PER_DIM * config.model.dim)


@jax.jit
def _spectra(z_AxNxD):
  return jax.vmap(losses.spectrum_stats)(z_AxNxD)


def spectrum(z_NxD: jax.Array) -> dict[str, float]:
  """Effective rank, participation ratio and RankMe of held-out latents, and under
  ``isotropic_<name>`` those of isotropic Gaussian latents of the same N and D: what fully
  used latents score on so many states."""
  out = {k: float(v) for k, v in losses.spectrum_stats(z_NxD).items()}
  reference = losses.isotropic_reference(*z_NxD.shape)
  return {**out, **{f"isotropic_{k}": v for k, v in reference.items()}}


def spectrum_scalars(z_AxNxD: jax.Array, names: Sequence[str],
                     reference: dict[str, float]) -> dict[str, float]:
  """Each agent's ``losses.spectrum_stats`` on the evaluation states, and beside them under
  ``train/isotropic_reference/`` ``reference``: those of isotropic Gaussian latents of the
  same N and D (``losses.isotropic_reference``, computed once per run), as ``spectrum``
  gives one latent's."""
  stats = jax.device_get(_spectra(z_AxNxD))
  out = {f"train/agent_{v}/{k}": float(x[a]) for k, x in stats.items()
         for a, v in enumerate(names)}
  out.update({f"train/isotropic_reference/{k}": x for k, x in reference.items()})
  return out


def alignment_scores(z_AxNxD: jax.Array, names: Sequence[str]) -> dict[str, float]:
  """Unbiased linear CKA between every pair of agents on the paired set."""
  scores = {}
  for a in range(len(names)):
    for b in range(a + 1, len(names)):
      cka = float(align.linear_cka_unbiased(z_AxNxD[a], z_AxNxD[b]))
      scores[f"align/{names[a]}_to_{names[b]}/cka"] = cka
  return scores


# The labels the nonlinear (MLP) probe also reads: a diagnostic of what a linear probe misses.
MLP_PROBED = ("class",)


def probe_report(config: ml_collections.ConfigDict, encode_all, state: agents.AgentState,
                 initial: agents.AgentState, probe_set: data.PairedSet, n_fit: int,
                 index: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
  """``probes.evaluate`` of every agent, trained vs random-init vs its view's pixels on their
  top D principal directions (``pixel_pca``, the no-learning floor): each label's held-out
  score (the world's class, shape, size, position and distractors; a recording's labels; a
  dataset's class), the class probe's final gradient norm and, for the trained agents, the
  MLP probe's class accuracy (a diagnostic); agent ``a`` sees the probe states from view
  ``index[a]`` of ``probe_set``, whose first ``n_fit`` fit the probes."""
  fit = lambda z, mlp=(): probes.evaluate(z, probe_set.labels, n_fit, probe_set.num_classes,
                                          config.eval.probe_steps, mlp=mlp)[1]
  report = {}
  for name, s in (("trained", state), ("random_init", initial)):
    z = encode_all(s.params, probe_set.obs, index)
    for a, view in enumerate(names):
      scores = fit(z[a], MLP_PROBED if name == "trained" else ())
      report.setdefault(view, {}).update({f"{name}/{k}": v for k, v in scores.items()})
  key = jax.random.key(config.eval.seed)
  for a, view in enumerate(names):
    pixels = compare.pixel_pca(probe_set.obs[index[a]], n_fit, config.model.dim, key)
    report[view].update({f"pixel_pca/{k}": v for k, v in fit(pixels).items()})
  return report


# A score at or above this has nothing left to learn: ties with pixels up here are not a
# warning.
READ_FULLY = 0.99


def below_pixels(report: dict[str, dict[str, float]]) -> list[tuple[str, str, float, float]]:
  """(agent, score, trained, pixel PCA) for every label pixel PCA reads (R^2 above
  ``GOALS['pixels_read_r2_min']``, or accuracy ``GOALS['pixels_read_acc_margin']`` above the
  random-init encoder's) that the trained agent reads no better: where it learned less
  than its pixels hold."""
  found = []
  for agent, r in report.items():
    for key, pca in r.items():
      kind, _, score = key.partition("/")
      if kind != "pixel_pca" or not score.endswith(("_acc", "_r2")) or "_mlp_" in score:
        continue
      jepa = r[f"trained/{score}"]
      if (summaries.pixels_read(score, pca, r[f"random_init/{score}"]) and jepa <= pca
          and jepa < READ_FULLY):
        found.append((agent, score, jepa, pca))
  return found


def below_pixels_warning(report: dict[str, dict[str, float]]) -> str | None:
  """One line naming every label ``below_pixels`` finds, and where the levers are; None if
  there is none."""
  below = below_pixels(report)
  if not below:
    return None
  return ("Warning: learned less than pixels: " + ", ".join(
      f"{agent} {score} {jepa:.2f} (pixel PCA {pca:.2f})" for agent, score, jepa, pca in below)
      + "; docs/recordings.md, 'When the agents learn less than pixels', says what to try.")


def probe_train_size(config: ml_collections.ConfigDict, available: int) -> int:
  """Probe training states out of ``available``: ``eval.probe_train``, or the same share of
  a dataset split smaller than ``eval.probe_train + eval.probe_test``."""
  e = config.eval
  if available >= e.probe_train + e.probe_test:
    return e.probe_train
  return int(available * e.probe_train / (e.probe_train + e.probe_test))
