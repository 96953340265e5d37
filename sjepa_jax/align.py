"""Similarity between two agents' latent spaces.

Shapes: N = paired examples (row i of X and row i of Y see the same world state), D = dims.
"""

import jax
import jax.numpy as jnp


@jax.jit
def linear_cka(x_NxD: jax.Array, y_NxD: jax.Array) -> jax.Array:
  """Linear CKA, the plain (biased) estimator: in [0, 1], 1 for identical geometry.

  Biased upward at small N (about 0.2 for independent random features at N = 32): use
  ``linear_cka_unbiased`` there. References: Kornblith et al., arXiv 1905.00414.
  """
  x = x_NxD - x_NxD.mean(0)
  y = y_NxD - y_NxD.mean(0)
  cross = jnp.sum((y.T @ x) ** 2)
  return cross / (jnp.linalg.norm(x.T @ x) * jnp.linalg.norm(y.T @ y))


def _hsic_unbiased(k_NxN: jax.Array, l_NxN: jax.Array) -> jax.Array:
  """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two Gram matrices."""
  n = k_NxN.shape[0]
  k = k_NxN * (1 - jnp.eye(n))
  l = l_NxN * (1 - jnp.eye(n))
  kl = k @ l
  return (jnp.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2))
          - 2 * kl.sum() / (n - 2)) / (n * (n - 3))


@jax.jit
def linear_cka_unbiased(x_NxD: jax.Array, y_NxD: jax.Array) -> jax.Array:
  """Linear CKA from unbiased HSIC estimates: near 0 for independent features at any N >= 4.

  References: Nguyen et al., arXiv 2010.15327 (appendix); Song et al., JMLR 2012.
  """
  n = x_NxD.shape[0]
  if n < 4:
    raise ValueError(f"Unbiased CKA needs at least 4 paired examples, got {n}.")
  x = x_NxD - x_NxD.mean(0)
  y = y_NxD - y_NxD.mean(0)
  k, l = x @ x.T, y @ y.T
  hsic_xy = _hsic_unbiased(k, l)
  return hsic_xy / jnp.sqrt(jnp.maximum(_hsic_unbiased(k, k) * _hsic_unbiased(l, l), 1e-30))
