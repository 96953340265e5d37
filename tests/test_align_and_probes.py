"""CKA and probes against planted answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjepa_jax import align
from sjepa_jax import probes

KEY = jax.random.key(0)


def _rotation(key, d):
  q, _ = jnp.linalg.qr(jax.random.normal(key, (d, d)))
  return q


def test_cka_is_invariant_to_rotation_and_isotropic_scale():
  k1, k2 = jax.random.split(KEY)
  x = jax.random.normal(k1, (256, 16)) * jnp.linspace(0.5, 2.0, 16)
  y = 3.0 * x @ _rotation(k2, 16) + 1.0
  np.testing.assert_allclose(float(align.linear_cka(x, y)), 1.0, atol=1e-5)
  np.testing.assert_allclose(float(align.linear_cka_unbiased(x, y)), 1.0, atol=1e-4)


def test_unbiased_cka_is_near_zero_on_independent_features_at_small_n():
  biased, unbiased = [], []
  for i in range(20):
    kx, ky = jax.random.split(jax.random.fold_in(KEY, i))
    x, y = jax.random.normal(kx, (32, 64)), jax.random.normal(ky, (32, 64))
    biased.append(float(align.linear_cka(x, y)))
    unbiased.append(float(align.linear_cka_unbiased(x, y)))
  assert np.mean(biased) > 0.15  # the pitfall the unbiased estimator removes
  assert abs(np.mean(unbiased)) < 0.05


def test_unbiased_cka_needs_four_examples():
  with pytest.raises(ValueError, match="at least 4"):
    align.linear_cka_unbiased(jnp.ones((3, 2)), jnp.ones((3, 2)))


def test_logistic_probe_separates_separable_classes():
  k1, k2, k3 = jax.random.split(KEY, 3)
  labels = jax.random.randint(k1, (600,), 0, 5)
  means = 4.0 * jax.random.normal(k2, (5, 10))
  z = means[labels] + jax.random.normal(k3, (600, 10))
  probe = probes.fit_logistic(z[:400], labels[:400], 5, steps=300)
  assert float(probes.accuracy(probe, z[400:], labels[400:])) > 0.98
  shuffled = probes.fit_logistic(z[:400], jnp.roll(labels[:400], 1), 5, steps=300)
  assert float(probes.accuracy(shuffled, z[400:], labels[400:])) < 0.45


def test_ridge_recovers_a_planted_linear_map():
  k1, k2 = jax.random.split(KEY)
  z = jax.random.normal(k1, (500, 12))
  w = jax.random.normal(k2, (12, 3))
  y = z @ w + 0.5
  probe = probes.fit_ridge(z[:400], y[:400], l2=1e-6)
  np.testing.assert_allclose(float(probes.r2_score(probes.apply(probe, z[400:]), y[400:])),
                             1.0, atol=1e-4)
