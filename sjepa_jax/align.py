"""Linear maps between two agents' latent spaces, and how well they relate them.

Every map is fitted on paired latents (row i of X and row i of Y see the same world state)
and must be scored on held-out pairs. Maps are affine: ``y ~ (x - x_mean) @ w + y_mean``.
All functions are pure ``jnp`` (float32) and jit-able; many pairs go through ``jax.lax.map``
(see ``ridge_path``: a vmap would batch their decompositions, which can deadlock on CPU).

Shapes: N = paired examples, D = source latent size, E = target latent size, M = agents,
K = neighbours or rank.
"""

import functools
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp

from sjepa_jax import errors

# Ridge strengths, relative to the mean eigenvalue of the centred source covariance; the
# fit picks one on a validation split of the fitting pairs (never on the held-out pairs).
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@flax.struct.dataclass
class LinearMap:
  """An affine map from one agent's latents to another's: ``apply(x) = (x - x_mean) @ w +
  y_mean``."""
  x_mean: jax.Array  # (D,)
  y_mean: jax.Array  # (E,)
  w: jax.Array  # (D, E)

  def apply(self, x_NxD: jax.Array) -> jax.Array:
    """Maps source latents into the target space: (N, D) -> (N, E)."""
    if x_NxD.shape[-1] != self.w.shape[0]:
      raise errors.UserError(f"This map takes latents of size {self.w.shape[0]}, got "
                             f"{x_NxD.shape[-1]}: apply it to the agent it was fitted from.")
    return (x_NxD - self.x_mean) @ self.w + self.y_mean


def svd(a: jax.Array, compute_uv: bool = True):
  """Thin SVD by LAPACK's QR-iteration driver (gesvd), which runs on the calling thread. On
  quiet cores it is as fast as XLA's CPU default (divide and conquer, gesdd) for the small
  matrices maps and CCA decompose; the default waits on the thread pool, which made it
  many times slower on cores busy with training (``benchmarks/align.py`` prints both)."""
  return jax.lax.linalg.svd(a, full_matrices=False, compute_uv=compute_uv,
                            algorithm=jax.lax.linalg.SvdAlgorithm.QR)


def _centre(x_NxD, y_NxE):
  return x_NxD.mean(0), y_NxE.mean(0), x_NxD - x_NxD.mean(0), y_NxE - y_NxE.mean(0)


# --- Maps --------------------------------------------------------------------------------

@jax.jit
def fit_lstsq(x_NxD: jax.Array, y_NxE: jax.Array) -> LinearMap:
  """Unregularised least squares (minimum-norm solution). Unstable when X is
  ill-conditioned, as anisotropic latents are: prefer ``fit_ridge`` there."""
  mx, my, x, y = _centre(x_NxD, y_NxE)
  return LinearMap(mx, my, jnp.linalg.lstsq(x, y)[0])


def ridge_weights(x_NxD: jax.Array, y_NxE: jax.Array, l2: float | jax.Array) -> jax.Array:
  """Ridge regression weights (D, E) of centred Y on centred X. ``l2`` is relative to the
  mean eigenvalue of X^T X (for standardised X, about N), so it is invariant to the
  latents' scale. The one ridge solve of the maps and the probes."""
  gram = x_NxD.T @ x_NxD
  return jnp.linalg.solve(gram + _strength(gram, l2) * jnp.eye(len(gram)), x_NxD.T @ y_NxE)


def _strength(gram_DxD: jax.Array, l2: float | jax.Array) -> jax.Array:
  """The ridge penalty for relative strength ``l2``: ``l2`` times the mean eigenvalue."""
  return l2 * jnp.trace(gram_DxD) / len(gram_DxD)


@functools.partial(jax.jit, static_argnames="val_fraction")
def fit_ridge(x_NxD: jax.Array, y_NxE: jax.Array, l2: float | None = None,
              val_fraction: float = 0.2) -> LinearMap:
  """Ridge regression; with ``l2=None`` the strength is chosen from ``RIDGE_GRID`` by R^2
  on the last ``val_fraction`` of the fitting pairs, then refitted on all of them."""
  mx, my, x, y = _centre(x_NxD, y_NxE)
  if l2 is None:
    n_fit = int(round(x.shape[0] * (1 - val_fraction)))
    m_fit, mean_fit = x[:n_fit].mean(0), y[:n_fit].mean(0)
    grid = jnp.asarray(RIDGE_GRID)
    ws = ridge_path(x[:n_fit] - m_fit, y[:n_fit] - mean_fit, grid)
    val_r2 = lambda w: r2_score((x[n_fit:] - m_fit) @ w + mean_fit, y[n_fit:])
    l2 = grid[jnp.argmax(jax.vmap(val_r2)(ws))]
  return LinearMap(mx, my, ridge_weights(x, y, l2))


def ridge_path(x_NxD: jax.Array, y_NxE: jax.Array, l2_G: jax.Array) -> jax.Array:
  """``ridge_weights`` for every strength of ``l2_G`` at once, (G, D, E), from one
  eigendecomposition of X^T X.

  Not a vmapped solve: that is a batched LAPACK call, which jaxlib's CPU kernels split
  over the thread pool and wait on; two of them running at once in one program (two maps
  of a pair) can each hold a pool thread while waiting for the other's, a deadlock when
  the pool has as few threads as a 2-core machine. One unbatched decomposition runs on
  its own thread.
  """
  gram = x_NxD.T @ x_NxD
  evals, evecs = jnp.linalg.eigh(gram)
  lam_G = _strength(gram, l2_G)
  inv_GxD = 1.0 / (jnp.maximum(evals, 0.0)[None] + lam_G[:, None])
  return jnp.einsum("dk,gk,ke->gde", evecs, inv_GxD, evecs.T @ (x_NxD.T @ y_NxE))


@functools.partial(jax.jit, static_argnames="rank")
def fit_reduced_rank(x_NxD: jax.Array, y_NxE: jax.Array, rank: int,
                     l2: float = 1e-3) -> LinearMap:
  """Reduced-rank (ridge) regression: the ridge map restricted to the ``rank`` target
  directions it predicts best (top principal directions of the fitted values).

  References: Izenman, J. Multivariate Anal. 1975.
  """
  mx, my, x, y = _centre(x_NxD, y_NxE)
  w = ridge_weights(x, y, l2)
  v_ExK = svd(x @ w)[2][:rank].T
  return LinearMap(mx, my, w @ v_ExK @ v_ExK.T)


@jax.jit
def fit_procrustes(x_NxD: jax.Array, y_NxE: jax.Array) -> LinearMap:
  """Orthogonal map times one global scale, ``w = s * R`` with ``R R^T = I``: the best
  isometry (up to scale) between the centred spaces. D may differ from E (then R has
  orthonormal rows or columns).

  References: Schoenemann, Psychometrika 1966.
  """
  mx, my, x, y = _centre(x_NxD, y_NxE)
  return procrustes_from_moments(x.T @ y, jnp.sum(x ** 2), mx, my)


def procrustes_from_moments(cross_DxE: jax.Array, sq_norm_x: jax.Array, x_mean: jax.Array,
                            y_mean: jax.Array) -> LinearMap:
  """The scaled orthogonal map from second moments of centred pairs: ``cross`` = X^T Y and
  ``sq_norm_x`` = |X|^2 (both sums, or both means, over the same pairs). With
  X^T Y = U S V^T the rotation is U V^T and the scale trace(S) / |X|^2."""
  u, sv, vt = svd(cross_DxE)
  return LinearMap(x_mean, y_mean, sv.sum() / jnp.maximum(sq_norm_x, 1e-12) * (u @ vt))


def _inv_sqrt(c):
  """C^{-1/2} of a symmetric positive definite matrix."""
  evals, evecs = jnp.linalg.eigh(c)
  return (evecs / jnp.sqrt(jnp.maximum(evals, 1e-12))) @ evecs.T


class Canonical(NamedTuple):
  """Canonical directions of a pair of latent sets: ``(x - x_mean) @ a`` and
  ``(y - y_mean) @ b`` have (nearly) identity covariance on the fitting pairs and
  correlation ``rho[j]`` between their columns j, in descending order."""
  x_mean: jax.Array  # (D,)
  y_mean: jax.Array  # (E,)
  a: jax.Array  # (D, R), R = min(D, E)
  b: jax.Array  # (E, R)
  rho: jax.Array  # (R,)
  x_cov: jax.Array  # (D, D) the (shrunk) covariances the directions whiten
  y_cov: jax.Array  # (E, E)


@jax.jit
def fit_canonical(x_NxD: jax.Array, y_NxE: jax.Array, l2: float = 1e-3) -> Canonical:
  """Regularised CCA: each covariance shrunk toward ``l2`` times its mean eigenvalue (the
  same relative rule as the ridge maps), so directions without variance stay bounded.

  References: Hotelling, Biometrika 1936.
  """
  mx, my, x, y = _centre(x_NxD, y_NxE)
  n = x.shape[0]
  cxx, cyy = x.T @ x / n, y.T @ y / n
  cxx += _strength(cxx, l2) * jnp.eye(len(cxx))
  cyy += _strength(cyy, l2) * jnp.eye(len(cyy))
  wx, wy = _inv_sqrt(cxx), _inv_sqrt(cyy)
  u, rho, vt = svd(wx @ (x.T @ y / n) @ wy)
  return Canonical(mx, my, wx @ u, wy @ vt.T, rho, cxx, cyy)


def canonical_correlations(c: Canonical, x_NxD: jax.Array, y_NxE: jax.Array) -> jax.Array:
  """The correlation of each pair of canonical variates on (held-out) pairs, (R,)."""
  u = (x_NxD - c.x_mean) @ c.a
  v = (y_NxE - c.y_mean) @ c.b
  u, v = u - u.mean(0), v - v.mean(0)
  return jnp.sum(u * v, 0) / jnp.sqrt(jnp.maximum(jnp.sum(u ** 2, 0) * jnp.sum(v ** 2, 0),
                                                  1e-30))


@functools.partial(jax.jit, static_argnames="rank")
def fit_cca(x_NxD: jax.Array, y_NxE: jax.Array, rank: int | None = None,
            l2: float = 1e-3) -> tuple[LinearMap, jax.Array]:
  """The map that predicts Y from X through the top ``rank`` canonical pairs (all of them:
  the ridge map), and the canonical correlations (descending)."""
  c = fit_canonical(x_NxD, y_NxE, l2)
  k = c.rho.shape[0] if rank is None else rank
  # Y's canonical variates are best predicted by rho * X's; b^T C_yy maps them back to Y's
  # space (b^T C_yy b = I).
  w = c.a[:, :k] @ jnp.diag(c.rho[:k]) @ c.b[:, :k].T @ c.y_cov
  return LinearMap(c.x_mean, c.y_mean, w), c.rho


class SharedSpace(NamedTuple):
  """Generalized Procrustes: agent m's latents enter the shared space as
  ``(z - mean[m]) * scale[m] @ rotation[m]``."""
  mean: jax.Array  # (M, D)
  scale: jax.Array  # (M,)
  rotation: jax.Array  # (M, D, D), orthogonal
  consensus: jax.Array  # (N, D) the shared configuration of the fitting pairs


@functools.partial(jax.jit, static_argnames="iters")
def fit_generalized_procrustes(z_MxNxD: jax.Array, iters: int = 30) -> SharedSpace:
  """Rotates and scales M agents' latents into one shared space (alternating Procrustes
  to the running consensus, each agent normalised to unit size).

  References: Gower, Psychometrika 1975.
  """
  mean = z_MxNxD.mean(1)
  z = z_MxNxD - mean[:, None]
  scale = 1.0 / jnp.sqrt(jnp.sum(z ** 2, axis=(1, 2)))
  z = z * scale[:, None, None]

  def rotations(consensus):
    u, _, vt = svd(jnp.einsum("mnd,ne->mde", z, consensus))
    return u @ vt

  def body(_, consensus):
    shared = jnp.einsum("mnd,mde->mne", z, rotations(consensus)).mean(0)
    return shared / jnp.linalg.norm(shared)

  consensus = jax.lax.fori_loop(0, iters, body, z[0])
  return SharedSpace(mean, scale, rotations(consensus), consensus)


def shared_space_map(space: SharedSpace, source: int, target: int) -> LinearMap:
  """The map from agent ``source``'s latents to agent ``target``'s through the shared space."""
  w = (space.scale[source] / space.scale[target]) * (
      space.rotation[source] @ space.rotation[target].T)
  return LinearMap(space.mean[source], space.mean[target], w)


# --- Metrics -----------------------------------------------------------------------------

def r2_score(pred_NxE: jax.Array, y_NxE: jax.Array) -> jax.Array:
  """Coefficient of determination, pooled over output dimensions (variance-weighted): with
  anisotropic targets it mostly measures the top directions (see ``r2_uniform``)."""
  ss_res = jnp.sum((y_NxE - pred_NxE) ** 2)
  ss_tot = jnp.sum((y_NxE - y_NxE.mean(0)) ** 2)
  return 1.0 - ss_res / ss_tot


def r2_uniform(pred_NxE: jax.Array, y_NxE: jax.Array) -> jax.Array:
  """Coefficient of determination of each output dimension, averaged uniformly over them
  (scikit-learn's ``uniform_average``): a low-variance direction counts as much as the top
  one. Dimensions without variance are left out."""
  ss_res = jnp.sum((y_NxE - pred_NxE) ** 2, 0)
  ss_tot = jnp.sum((y_NxE - y_NxE.mean(0)) ** 2, 0)
  varies = ss_tot > 1e-12 * jnp.max(ss_tot)
  per_dim = jnp.where(varies, 1.0 - ss_res / jnp.where(varies, ss_tot, 1.0), 0.0)
  return jnp.sum(per_dim) / jnp.maximum(jnp.sum(varies), 1)


def relative_residual(pred_NxE: jax.Array, y_NxE: jax.Array) -> jax.Array:
  """||Y - pred|| / ||Y - mean(Y)|| (Frobenius): 0 is perfect, 1 is predicting the mean."""
  return jnp.linalg.norm(y_NxE - pred_NxE) / jnp.linalg.norm(y_NxE - y_NxE.mean(0))


def singular_value_stats(w_DxE: jax.Array) -> dict[str, jax.Array]:
  """Singular values of a map; an isometry (up to scale) has them all equal."""
  s = svd(w_DxE, compute_uv=False)
  return {"singular_values": s, "condition_number": s[0] / s[-1],
          "singular_value_spread": s.std() / s.mean()}


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
    raise errors.UserError(f"Unbiased CKA needs at least 4 paired examples, got {n}.")
  x = x_NxD - x_NxD.mean(0)
  y = y_NxD - y_NxD.mean(0)
  k, l = x @ x.T, y @ y.T
  hsic_xy = _hsic_unbiased(k, l)
  return hsic_xy / jnp.sqrt(jnp.maximum(_hsic_unbiased(k, k) * _hsic_unbiased(l, l), 1e-30))


def _neighbours(z_NxD: jax.Array, k: int) -> jax.Array:
  sq = jnp.sum(z_NxD ** 2, -1)
  dist = sq[:, None] + sq[None, :] - 2 * z_NxD @ z_NxD.T
  dist = jnp.where(jnp.eye(z_NxD.shape[0], dtype=bool), jnp.inf, dist)  # not oneself
  return jax.lax.top_k(-dist, k)[1]


@functools.partial(jax.jit, static_argnames="k")
def mutual_knn(x_NxD: jax.Array, y_NxE: jax.Array, k: int = 10) -> jax.Array:
  """Mean fraction of each example's k nearest neighbours shared by both spaces: 1 when the
  neighbourhoods agree, about k / N for unrelated spaces.

  References: Huh et al., arXiv 2405.07987.
  """
  nx, ny = _neighbours(x_NxD, k), _neighbours(y_NxE, k)
  shared = (nx[:, :, None] == ny[:, None, :]).any(-1).sum(-1)
  return jnp.mean(shared / k)


@jax.jit
def retrieval_top1(mapped_NxE: jax.Array, y_NxE: jax.Array) -> jax.Array:
  """Fraction of mapped examples whose nearest target (Euclidean, among all N) is their own
  pair: chance is 1 / N."""
  sq = jnp.sum(y_NxE ** 2, -1)
  dist = sq[None, :] - 2 * mapped_NxE @ y_NxE.T  # + |mapped|^2, constant per row
  return jnp.mean(jnp.argmin(dist, -1) == jnp.arange(mapped_NxE.shape[0]))


MAPS = ("lstsq", "ridge", "procrustes", "cca")


def fit(kind: str, x_NxD: jax.Array, y_NxE: jax.Array) -> LinearMap:
  """The map of ``kind`` (``MAPS``) from X to Y, fitted on paired latents: least squares,
  ridge (strength chosen on a validation split), scaled orthogonal (Procrustes) or CCA (all
  canonical pairs)."""
  fits = {"lstsq": fit_lstsq, "ridge": fit_ridge, "procrustes": fit_procrustes,
          "cca": lambda x, y: fit_cca(x, y)[0]}
  if kind not in fits:
    raise errors.UserError(f"Unknown map {kind!r}; valid maps: {', '.join(MAPS)}.")
  return fits[kind](x_NxD, y_NxE)


# --- One pair, all at once ---------------------------------------------------------------

def fit_maps(x_NxD: jax.Array, y_NxE: jax.Array, rank: int = 16
             ) -> tuple[dict[str, LinearMap], jax.Array]:
  """Every map kind from the same fitting pairs, by name, and the canonical correlations
  (CCA is fitted once for both)."""
  cca, rho = fit_cca(x_NxD, y_NxE, rank=rank)
  return {"lstsq": fit_lstsq(x_NxD, y_NxE), "ridge": fit_ridge(x_NxD, y_NxE),
          "reduced_rank": fit_reduced_rank(x_NxD, y_NxE, rank=rank),
          "procrustes": fit_procrustes(x_NxD, y_NxE), "cca": cca}, rho


@jax.jit
def whitener(x_NxD: jax.Array, shrink: float = 1e-3) -> LinearMap:
  """The map that whitens ``x`` (centred, covariance to the identity), fitted on ``x``.

  The covariance is shrunk toward ``shrink`` times its mean eigenvalue so that directions
  with no variance are not blown up without bound.
  """
  mean = x_NxD.mean(0)
  c = jnp.cov(x_NxD - mean, rowvar=False, bias=True)
  c += _strength(c, shrink) * jnp.eye(len(c))
  return LinearMap(mean, jnp.zeros(len(c)), _inv_sqrt(c))


@functools.partial(jax.jit, static_argnames=("rank", "k"))
def evaluate_pair(x_fit: jax.Array, y_fit: jax.Array, x_test: jax.Array, y_test: jax.Array,
                  rank: int = 16, k: int = 10) -> dict[str, jax.Array]:
  """Fits every map X -> Y on the fitting pairs and scores it on the held-out pairs.

  ``r2_<map>`` is R^2 pooled over the target's dimensions (variance-weighted),
  ``r2_<map>_uniform`` the mean of each dimension's R^2, and ``r2_<map>_whitened`` the
  pooled R^2 of a map refitted between both sides whitened with their fitting pairs'
  statistics. ``isometry_gap`` is R^2 of the best unconstrained linear map (ridge, strength
  chosen on a validation split of the fitting pairs) minus R^2 of the scaled orthogonal map:
  near 0 when the spaces differ by a rotation and one scale. ``maps`` holds the fitted
  maps by name. ``jax.lax.map`` it to score many pairs in one program (not ``jax.vmap``:
  see ``ridge_path``).
  Mutual k-NN uses ``k`` neighbours, fewer when there are not ``k + 1`` held-out pairs.
  """
  maps, rho = fit_maps(x_fit, y_fit, rank)
  out = {"canonical_correlations": rho}
  for name, m in maps.items():
    pred = m.apply(x_test)
    out[f"r2_{name}"] = r2_score(pred, y_test)
    out[f"r2_{name}_uniform"] = r2_uniform(pred, y_test)
    out[f"residual_{name}"] = relative_residual(pred, y_test)
  out["isometry_gap"] = out["r2_ridge"] - out["r2_procrustes"]
  out.update(singular_value_stats(maps["ridge"].w))
  out["cka"] = linear_cka(x_test, y_test)
  out["cka_unbiased"] = linear_cka_unbiased(x_test, y_test)
  out["mutual_knn"] = mutual_knn(x_test, y_test, min(k, x_test.shape[0] - 1))
  out["retrieval_top1_ridge"] = retrieval_top1(maps["ridge"].apply(x_test), y_test)
  out["retrieval_top1_procrustes"] = retrieval_top1(maps["procrustes"].apply(x_test),
                                                    y_test)
  # A diagnostic, not the claim: how isometric the relation is once each agent's own
  # anisotropy is removed (both sides whitened with their fitting pairs' statistics).
  wx, wy = whitener(x_fit), whitener(y_fit)
  xw_fit, yw_fit, xw_test, yw_test = (w.apply(z) for w, z in (
      (wx, x_fit), (wy, y_fit), (wx, x_test), (wy, y_test)))
  for name, fitter in (("ridge", fit_ridge), ("procrustes", fit_procrustes)):
    out[f"r2_{name}_whitened"] = r2_score(fitter(xw_fit, yw_fit).apply(xw_test), yw_test)
  out["isometry_gap_whitened"] = out["r2_ridge_whitened"] - out["r2_procrustes_whitened"]
  out["maps"] = maps
  return out


def r2_against_pairs(x_fit: jax.Array, y_fit: jax.Array, x_test: jax.Array, y_test: jax.Array,
                     sizes: tuple[int, ...]) -> dict[str, list[float]]:
  """Held-out R^2 of the ridge and Procrustes maps fitted on the first n pairs, per n."""
  curve = {"n": [], "r2_ridge": [], "r2_procrustes": []}
  for n in sizes:
    if n > x_fit.shape[0]:
      raise errors.UserError(f"Cannot fit on {n} pairs: only {x_fit.shape[0]} fitting pairs.")
    curve["n"].append(int(n))
    for name, fitter in (("ridge", fit_ridge), ("procrustes", fit_procrustes)):
      m = fitter(x_fit[:n], y_fit[:n])
      curve[f"r2_{name}"].append(float(r2_score(m.apply(x_test), y_test)))
  return curve
