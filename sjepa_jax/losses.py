"""JEPA objectives: latent prediction, VICReg variance/covariance, SIGReg, and diagnostics.

Every batch statistic here is a mean over the batch axis of one agent's latents, so under
``jax.vmap`` over agents each agent sees only its own statistics, and under ``jax.jit``
with the batch sharded over devices the mean is the global one (XLA inserts the reduction).

Shapes: B = batch, D = latent size, M = random directions, K = quadrature knots.
"""

import jax
import jax.numpy as jnp


def prediction_loss(pred_BxD: jax.Array, target_BxD: jax.Array) -> jax.Array:
  """Mean squared error between predicted and target latents, averaged over dims."""
  return jnp.mean(jnp.sum((pred_BxD - target_BxD) ** 2, -1)) / pred_BxD.shape[-1]


def vicreg_variance(z_BxD: jax.Array, gamma: float = 1.0, eps: float = 1e-4) -> jax.Array:
  """Hinge on each dimension's standard deviation falling below ``gamma``.

  References: VICReg, arXiv 2105.04906, eq. 1.
  """
  std = jnp.sqrt(jnp.var(z_BxD, axis=0) + eps)
  return jnp.mean(jax.nn.relu(gamma - std))


def vicreg_covariance(z_BxD: jax.Array) -> jax.Array:
  """Sum of squared off-diagonal covariances, divided by D (VICReg, arXiv 2105.04906)."""
  b, d = z_BxD.shape
  zc = z_BxD - z_BxD.mean(0)
  cov = zc.T @ zc / (b - 1)
  off = cov - jnp.diag(jnp.diag(cov))
  return jnp.sum(off**2) / d


def sigreg(z_BxD: jax.Array, key: jax.Array, num_directions: int = 256,
           num_knots: int = 17, t_max: float = 3.0) -> jax.Array:
  """Sketched isotropic Gaussian regulariser: Epps-Pulley statistic on random 1D projections.

  Projects the latents on ``num_directions`` random unit vectors and, for each projection,
  measures the weighted squared distance between its empirical characteristic function and
  that of a standard normal, integrated over t in [-t_max, t_max] by the trapezoidal rule,
  times B. Lowest in expectation when every projection is N(0, 1), i.e. the latents are
  isotropic Gaussian: this pushes against collapse and anisotropy with one weight, no EMA.
  Its expectation there is not zero but ``sigreg_gaussian_expectation(num_knots, t_max)``
  (about 1.05 at the defaults, for any B): the sampling error of the empirical
  characteristic function. It is not subtracted, which changes no gradient.

  References: LeJEPA, arXiv 2511.08544.
  """
  b, d = z_BxD.shape
  dirs_DxM = jax.random.normal(key, (d, num_directions))
  dirs_DxM /= jnp.linalg.norm(dirs_DxM, axis=0, keepdims=True)
  h_BxM = z_BxD @ dirs_DxM
  t_K = jnp.linspace(0.0, t_max, num_knots)
  th = h_BxM[..., None] * t_K  # (B, M, K)
  real, imag = jnp.cos(th).mean(0), jnp.sin(th).mean(0)  # empirical char. function (M, K)
  gauss = jnp.exp(-0.5 * t_K**2)
  err = ((real - gauss) ** 2 + imag**2) * gauss  # weight exp(-t^2/2)
  # The integrand is even in t: integrate over [0, t_max] and double.
  stat = 2 * jnp.trapezoid(err, t_K, axis=-1) * b
  return jnp.mean(stat)


def sigreg_gaussian_expectation(num_knots: int = 17, t_max: float = 3.0) -> float:
  """``sigreg``'s expectation for isotropic standard Gaussian latents, at any batch size.

  For B samples of N(0, 1), E|phi_B(t) - phi(t)|^2 = (1 - phi(t)^2) / B with
  phi(t) = exp(-t^2 / 2), so B times the weighted integral has expectation the same
  trapezoidal integral of (1 - exp(-t^2)) exp(-t^2 / 2): about 1.05 on the default knots,
  sqrt(2 pi) - sqrt(2 pi / 3) = 1.06 over the whole line.
  """
  t = jnp.linspace(0.0, t_max, num_knots)
  return float(2 * jnp.trapezoid((1 - jnp.exp(-t**2)) * jnp.exp(-0.5 * t**2), t))


def embedding_std(z_BxD: jax.Array) -> jax.Array:
  """Mean over dimensions of each dimension's std across the batch (0 = collapse)."""
  return jnp.mean(jnp.std(z_BxD, axis=0))


def _entropy_rank(p_K: jax.Array) -> jax.Array:
  """exp of the Shannon entropy of the weights ``p`` (0 log 0 = 0)."""
  return jnp.exp(-jnp.sum(jnp.where(p_K > 0, p_K * jnp.log(jnp.where(p_K > 0, p_K, 1.0)), 0.0)))


def spectrum_stats(z_NxD: jax.Array) -> dict[str, jax.Array]:
  """How many directions the latents use: effective rank, participation ratio and RankMe.

  ``effective_rank`` is exp of the entropy of the normalised eigenvalues of the covariance
  (Roy and Vetterli, EUSIPCO 2007), ``participation_ratio`` is (sum eig)^2 / sum eig^2, and
  ``rankme`` is RankMe as published: exp of the entropy of the normalised singular values of
  the uncentred latent matrix, plus 1e-7 (Garrido et al., arXiv 2210.02885, eq. 1). All lie
  in [1, min(N, D)]: with N not many times D even isotropic Gaussian latents score well
  below D, so read them beside ``isotropic_reference(N, D)``.
  """
  n = z_NxD.shape[0]
  zc = z_NxD - z_NxD.mean(0)
  eig = jnp.maximum(jnp.linalg.eigvalsh(zc.T @ zc / n), 0.0)
  sv = jnp.linalg.svd(z_NxD, compute_uv=False)
  return {"effective_rank": _entropy_rank(eig / jnp.maximum(eig.sum(), 1e-12)),
          "participation_ratio": eig.sum() ** 2 / jnp.maximum(jnp.sum(eig**2), 1e-24),
          "rankme": _entropy_rank(sv / jnp.maximum(sv.sum(), 1e-12) + 1e-7)}


def isotropic_reference(n: int, d: int, seed: int = 0) -> dict[str, float]:
  """``spectrum_stats`` of N isotropic standard Gaussian latents of D dimensions: what fully
  used latents score at that sample size, to read measured ranks against."""
  z = jax.random.normal(jax.random.key(seed), (n, d))
  return {k: float(v) for k, v in jax.jit(spectrum_stats)(z).items()}
