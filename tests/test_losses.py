"""Objectives and diagnostics, checked on data with known statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjepa_jax import losses

KEY = jax.random.key(0)


def test_vicreg_variance_penalises_collapse_only():
  wide = 2.0 * jax.random.normal(KEY, (512, 16))
  assert float(losses.vicreg_variance(wide)) == 0.0
  collapsed = jnp.ones((512, 16)) + 1e-3 * jax.random.normal(KEY, (512, 16))
  np.testing.assert_allclose(float(losses.vicreg_variance(collapsed)), 1.0, atol=0.02)


def test_vicreg_covariance_is_zero_for_decorrelated_dims_and_grows_with_correlation():
  z = jax.random.normal(KEY, (4096, 8))
  assert float(losses.vicreg_covariance(z)) < 0.02
  z_corr = z.at[:, 1].set(z[:, 0])  # cov(0, 1) = 1 twice in the off-diagonal sum
  np.testing.assert_allclose(float(losses.vicreg_covariance(z_corr)), 2 / 8, atol=0.03)


def _sigreg_null_mean(num_knots: int = 17, t_max: float = 3.0) -> float:
  """SIGReg's expected value on N(0, I) samples: for each projection, n E|phi_n(t) -
  phi(t)|^2 = 1 - exp(-t^2), weighted by exp(-t^2 / 2) and integrated as sigreg does."""
  t_K = jnp.linspace(0.0, t_max, num_knots)
  return float(2 * jnp.trapezoid((1 - jnp.exp(-t_K**2)) * jnp.exp(-0.5 * t_K**2), t_K))


def _sigreg_scores(key, inputs, num_seeds=10):
  """{name: [sigreg of inputs[name](samples) for each seed]}, fresh samples and directions."""
  sigreg = jax.jit(losses.sigreg)
  scores = {name: [] for name in inputs}
  for seed in range(num_seeds):
    k1, k2 = jax.random.split(jax.random.fold_in(key, seed))
    gauss = jax.random.normal(k1, (1024, 32))
    for name, f in inputs.items():
      scores[name].append(float(sigreg(f(gauss), k2)))
  return scores


PLANTED = {"isotropic": lambda g: g, "scaled": lambda g: 3.0 * g,
           "anisotropic": lambda g: g * jnp.linspace(0.1, 3.0, 32),
           "collapsed": jnp.zeros_like}


def _assert_sigreg_prefers_isotropy(scores, null):
  """Isotropic samples score about the null mean (each seed within 1.5x, their mean within
  15%: measured 0.88-1.16x and 1.01x); the planted departures score over 20x it."""
  iso = np.asarray(scores["isotropic"])
  assert np.all(iso < 1.5 * null) and abs(iso.mean() / null - 1) < 0.15, (iso, null)
  for name in ("scaled", "anisotropic", "collapsed"):
    assert min(scores[name]) > 20 * null, (name, scores[name], null)


def test_sigreg_prefers_an_isotropic_standard_gaussian():
  null = _sigreg_null_mean()
  np.testing.assert_allclose(null, 1.0525, atol=1e-3)  # sqrt(2 pi) - sqrt(2 pi / 3), truncated
  _assert_sigreg_prefers_isotropy(_sigreg_scores(KEY, PLANTED), null)


def test_sigreg_isotropy_check_rejects_a_planted_anisotropy():
  # The same check with a mildly anisotropic input (scales 0.7 to 1.3) in place of the
  # isotropic one fails: the check can tell.
  null = _sigreg_null_mean()
  planted = {**PLANTED, "isotropic": lambda g: g * jnp.linspace(0.7, 1.3, 32)}
  with pytest.raises(AssertionError):
    _assert_sigreg_prefers_isotropy(_sigreg_scores(KEY, planted), null)


def test_spectrum_stats_count_the_dimensions_in_use():
  k = 5
  z = jnp.zeros((4096, 32)).at[:, :k].set(jax.random.normal(KEY, (4096, k)))
  stats = losses.spectrum_stats(z)
  np.testing.assert_allclose(float(stats["participation_ratio"]), k, rtol=0.05)
  np.testing.assert_allclose(float(stats["effective_rank"]), k, rtol=0.05)
  np.testing.assert_allclose(float(losses.embedding_std(z)), k / 32, rtol=0.05)  # std 1 or 0


def test_rankme_is_the_entropy_of_the_singular_values_as_published():
  """RankMe (arXiv 2210.02885, eq. 1) on planted singular values 4, 2, 1, 1, uncentred."""
  q, _ = jnp.linalg.qr(jax.random.normal(KEY, (64, 4)))
  z = q * jnp.asarray([4.0, 2.0, 1.0, 1.0]) + 5.0 * q[:, :1]  # a mean it must not remove
  s = np.linalg.svd(np.asarray(z), compute_uv=False)
  p = s / s.sum() + 1e-7
  np.testing.assert_allclose(float(losses.spectrum_stats(z)["rankme"]),
                             np.exp(-np.sum(p * np.log(p))), rtol=1e-4)


def test_isotropic_gaussian_latents_score_close_to_d_only_with_many_samples():
  """The isotropic reference at N = 16 D is near D; at N = D / 2 it is capped by N (the old
  training metric's 64 samples of 128 dimensions: effective rank about 49)."""
  many, few = losses.isotropic_reference(16 * 32, 32), losses.isotropic_reference(64, 128)
  for k in ("effective_rank", "participation_ratio", "rankme"):
    assert 0.9 * 32 < many[k] <= 32, (k, many)
    assert few[k] < 64, (k, few)


def test_sigreg_of_gaussian_latents_averages_its_stated_expectation_not_zero():
  expected = losses.sigreg_gaussian_expectation()
  np.testing.assert_allclose(expected, 1.05, atol=0.01)
  for b in (64, 1024):  # the expectation does not depend on the batch size
    values = jax.vmap(lambda k: losses.sigreg(
        jax.random.normal(k, (b, 16)), jax.random.fold_in(k, 1), 64))(jax.random.split(KEY, 16))
    np.testing.assert_allclose(float(values.mean()), expected, rtol=0.05)


def test_prediction_loss_is_mean_squared_error_per_dim():
  a, b = jnp.zeros((4, 8)), jnp.full((4, 8), 2.0)
  np.testing.assert_allclose(float(losses.prediction_loss(a, b)), 4.0)
