"""The shared-part decomposition: what two agents' latents share, and whether that part is an
isometry.

Whole-latent figures mix what two cameras share with what only one of them sees. For
whitened latents least squares reaches R^2 = mean(rho^2) over the canonical correlations
rho, and the scaled orthogonal map (mean rho)^2, so the isometry gap is var(rho): the
spectrum alone sets it, even where the shared part is an exact rotation. The claim is about
each agent's own geometry, so this module measures it there:

1. **The canonical spectrum** of the pair, fitted on the fitting pairs and scored on
   held-out ones, and ``k_null``: how many leading canonical directions correlate, on a
   validation split of the fitting pairs, above the largest correlation any direction
   reaches when the pairs are shuffled (no held-out pair chooses it).
2. **The shared span** of each agent: the directions of its own latent space that carry its
   top k canonical variates (the structure vectors C_xx a_j, orthonormalised in order).
   Between the two spans, for every k: least squares and scaled Procrustes R^2, their gap
   and the least-squares map's singular values. ``k_iso``, the isometric dimension: the
   largest k <= k_null whose validation gap is at most ``GAP_MAX`` with Procrustes R^2 at
   least ``R2_MIN``.
3. **The whole gap, accounted for.** Scored on the whole held-out target, with the maps of
   the k_null span: ``gap = beyond_span + shared_not_rotation + unshared_rotation``, where
   ``beyond_span`` is what the unconstrained map gains outside the shared span,
   ``shared_not_rotation`` is least squares minus Procrustes on the shared span, and
   ``unshared_rotation`` is what one rotation of the whole latent loses against the
   rotation of the shared span alone (it has to turn unshared directions too). Beside it,
   the gap the held-out spectrum predicts for whitened latents, var(rho).

Maps on a span of k < R directions are held in R x R matrices whose rows and columns past k
are zero, so every k runs in one compiled program.

Shapes: N = pairs, D and E = the two latent sizes, R = min(D, E) canonical directions.
References: Hotelling, Biometrika 1936 (CCA); Schoenemann, Psychometrika 1966 (Procrustes);
Daunhawer et al., ICLR 2023 (what two views identify is their shared block).
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from sjepa_jax import align

# The isometric dimension's criterion, on the span's validation pairs: the claim's own goal
# (gap <= 0.05) with a map that explains most of the span.
GAP_MAX = 0.05
R2_MIN = 0.9


@flax.struct.dataclass
class Span:
  """One agent's shared part: ``coords(z, k)`` are the coordinates, in an orthonormal basis
  of the agent's own latent space, of what its first k canonical variates explain of ``z``
  (the regression of z on them: distances as the agent's own geometry measures them),
  zero past k."""
  mean: jax.Array  # (D,)
  weights: jax.Array  # (D, R) canonical weights: variates (z - mean) @ weights
  basis: jax.Array  # (D, R) orthonormal columns, most shared first
  loadings: jax.Array  # (R, R) upper triangular: variate j's loading on basis column i

  def coords(self, z_NxD: jax.Array, k: int | jax.Array) -> jax.Array:
    """(N, R): the shared part of the first ``k`` directions, then zeros."""
    u = ((z_NxD - self.mean) @ self.weights) * _mask(self.weights.shape[1], k)
    return u @ self.loadings.T  # upper triangular: columns past k stay zero


def _mask(r: int, k: int | jax.Array) -> jax.Array:
  return (jnp.arange(r) < k).astype(jnp.float32)


def spans(c: align.Canonical) -> tuple[Span, Span]:
  """Both agents' shared parts from their canonical directions. Variate j of X is carried by
  the direction of X's covariance with it (C_xx a_j, its loading); the regression of x on
  the first k variates is their sum along those loadings. The loadings, orthonormalised in
  order (QR), give a basis whose first k columns span the first k for every k."""
  def span(mean, cov, w):
    q, r = jnp.linalg.qr(cov @ w)
    return Span(mean, w, q, r)
  return span(c.x_mean, c.x_cov, c.a), span(c.y_mean, c.y_cov, c.b)


def span_maps(cx_NxR: jax.Array, cy_NxR: jax.Array, k: int | jax.Array
              ) -> dict[str, align.LinearMap]:
  """Least squares and scaled Procrustes between two spans' first ``k`` coordinates
  (``Span.coords`` of the fitting pairs, centred by their own spans): R x R maps, zero past
  k."""
  r = cx_NxR.shape[1]
  m = _mask(r, k)
  x, y = cx_NxR * m, cy_NxR * m
  mx, my = x.mean(0), y.mean(0)
  x, y = x - mx, y - my
  # Unit diagonal where the mask is off keeps the solve square and leaves those rows zero.
  w_ls = jnp.linalg.solve(x.T @ x + jnp.diag(1.0 - m), x.T @ y)
  procrustes = align.procrustes_from_moments(x.T @ y, jnp.sum(x ** 2), mx, my)
  keep = m[:, None] * m[None, :]
  return {"lstsq": align.LinearMap(mx, my, w_ls * keep),
          "procrustes": align.LinearMap(mx, my, procrustes.w * keep)}


def _in_span_r2(pred_NxR, y_NxR, m):
  ss_res = jnp.sum(((y_NxR - pred_NxR) * m) ** 2)
  ss_tot = jnp.sum(((y_NxR - y_NxR.mean(0)) * m) ** 2)
  return 1.0 - ss_res / jnp.maximum(ss_tot, 1e-30)


def span_curve(sx: Span, sy: Span, x_fit: jax.Array, y_fit: jax.Array, x_ev: jax.Array,
               y_ev: jax.Array) -> dict[str, jax.Array]:
  """For every k = 1 .. R, maps between the spans' first k directions fitted on the fitting
  pairs and scored on ``(x_ev, y_ev)``: R^2 on the span (``r2_lstsq``, ``r2_procrustes``,
  ``gap``), R^2 of the whole target through the span (``whole_r2_*``) and the least-squares
  map's singular values (``sv_max``, ``sv_min``). Each entry is (R,), index k - 1."""
  r = sx.basis.shape[1]

  def at(k):
    m = _mask(r, k)
    cx_fit, cy_fit = sx.coords(x_fit, k), sy.coords(y_fit, k)
    cx_ev, cy_ev = sx.coords(x_ev, k), sy.coords(y_ev, k)
    maps = span_maps(cx_fit, cy_fit, k)
    out = {}
    for name, f in maps.items():
      pred = f.apply(cx_ev * m)
      out[f"r2_{name}"] = _in_span_r2(pred, cy_ev, m)
      out[f"whole_r2_{name}"] = align.r2_score(sy.mean + (pred * m) @ sy.basis.T, y_ev)
    s = align.svd(maps["lstsq"].w, compute_uv=False)  # descending, zeros past k
    out["sv_max"], out["sv_min"] = s[0], s[k - 1]
    return out

  curve = jax.lax.map(at, jnp.arange(1, r + 1))  # one unbatched solve at a time (CPU)
  curve["gap"] = curve["r2_lstsq"] - curve["r2_procrustes"]
  return curve


def null_threshold(x_NxD: jax.Array, y_NxE: jax.Array, n_fit: int, key: jax.Array
                   ) -> jax.Array:
  """The largest |correlation| on the last rows that any canonical direction reaches when
  the pairs are shuffled (fitted on the first ``n_fit`` rows): what a direction reads when
  nothing is shared, at the same N and D."""
  k_fit, k_val = jax.random.split(key)
  x_fit = x_NxD[:n_fit][jax.random.permutation(k_fit, n_fit)]
  x_val = x_NxD[n_fit:][jax.random.permutation(k_val, x_NxD.shape[0] - n_fit)]
  c = align.fit_canonical(x_fit, y_NxE[:n_fit])
  return jnp.max(jnp.abs(align.canonical_correlations(c, x_val, y_NxE[n_fit:])))


def _leading(passes_R: jax.Array) -> jax.Array:
  """How many leading entries pass, before the first that does not."""
  return jnp.sum(jnp.cumprod(passes_R.astype(jnp.int32)))


@functools.partial(jax.jit, static_argnames="val_fraction")
def decompose(x_fit: jax.Array, y_fit: jax.Array, x_test: jax.Array, y_test: jax.Array,
              key: jax.Array, val_fraction: float = 0.2) -> dict[str, Any]:
  """The decomposition (module docstring) of the pair X -> Y.

  ``k_null`` and ``k_iso`` are chosen on a validation split (the last ``val_fraction`` of the
  fitting pairs, with CCA and maps fitted on the rest); every other figure has maps fitted on
  all fitting pairs and is scored on the held-out pairs. Returns arrays: the spectrum
  (``canonical_correlations`` held out, ``canonical_correlations_fit``), ``null_threshold``,
  ``k_null``, ``k_iso``, the held-out ``curve`` (``span_curve``), the whole-latent ridge and
  Procrustes R^2, the gap's three terms at k_null (``gap_terms``), the gap var(rho) and
  mean((1 - rho)^2) the held-out spectrum predicts for whitened latents (with and without
  the global scale), and both ``spans``.
  """
  n = int(round(x_fit.shape[0] * (1 - val_fraction)))
  k_null_key, _ = jax.random.split(key)
  # Choosing k: validation pairs only.
  c_val = align.fit_canonical(x_fit[:n], y_fit[:n])
  rho_val = align.canonical_correlations(c_val, x_fit[n:], y_fit[n:])
  threshold = null_threshold(x_fit, y_fit, n, k_null_key)
  k_null = _leading(rho_val > threshold)
  val_curve = span_curve(*spans(c_val), x_fit[:n], y_fit[:n], x_fit[n:], y_fit[n:])
  r = rho_val.shape[0]
  iso = ((val_curve["gap"] <= GAP_MAX) & (val_curve["r2_procrustes"] >= R2_MIN)
         & (jnp.arange(1, r + 1) <= k_null))
  k_iso = jnp.max(jnp.where(iso, jnp.arange(1, r + 1), 0))

  # Held-out figures.
  c = align.fit_canonical(x_fit, y_fit)
  rho = align.canonical_correlations(c, x_test, y_test)
  sx, sy = spans(c)
  curve = span_curve(sx, sy, x_fit, y_fit, x_test, y_test)
  r2_ridge = align.r2_score(align.fit_ridge(x_fit, y_fit).apply(x_test), y_test)
  r2_procrustes = align.r2_score(align.fit_procrustes(x_fit, y_fit).apply(x_test), y_test)
  at_k = lambda name: curve[name][jnp.maximum(k_null, 1) - 1]
  rho_pos = jnp.clip(rho, 0.0, 1.0)
  return {
      "canonical_correlations": rho, "canonical_correlations_fit": c.rho,
      "canonical_correlations_validation": rho_val, "null_threshold": threshold,
      "k_null": k_null, "k_iso": k_iso, "curve": curve,
      "validation_gap": val_curve["gap"], "validation_r2_procrustes": val_curve["r2_procrustes"],
      "r2_ridge": r2_ridge, "r2_procrustes": r2_procrustes,
      "gap": r2_ridge - r2_procrustes,
      "gap_terms": {
          "beyond_span": r2_ridge - at_k("whole_r2_lstsq"),
          "shared_not_rotation": at_k("whole_r2_lstsq") - at_k("whole_r2_procrustes"),
          "unshared_rotation": at_k("whole_r2_procrustes") - r2_procrustes},
      "gap_predicted_whitened": jnp.var(rho_pos),
      "gap_predicted_whitened_unscaled": jnp.mean((1.0 - rho_pos) ** 2),
      "spans": (sx, sy),
  }


def summary(d: dict[str, Any]) -> dict[str, Any]:
  """The JSON-ready figures of ``decompose``: scalars, the spectrum and the curve as lists,
  and the curve's figures at k_null and k_iso (None where k_iso is 0)."""
  k_null, k_iso = int(d["k_null"]), int(d["k_iso"])
  curve = {k: [float(x) for x in v] for k, v in d["curve"].items()}
  at = lambda k: None if k < 1 else {name: v[k - 1] for name, v in curve.items()}
  return {
      "k_null": k_null, "k_iso": k_iso, "null_threshold": float(d["null_threshold"]),
      "canonical_correlations": [float(x) for x in d["canonical_correlations"]],
      "canonical_correlations_validation": [
          float(x) for x in d["canonical_correlations_validation"]],
      "curve": curve, "at_k_null": at(k_null), "at_k_iso": at(k_iso),
      "gap": float(d["gap"]), "r2_ridge": float(d["r2_ridge"]),
      "r2_procrustes": float(d["r2_procrustes"]),
      "gap_terms": {k: float(v) for k, v in d["gap_terms"].items()},
      "gap_predicted_whitened": float(d["gap_predicted_whitened"]),
      "gap_predicted_whitened_unscaled": float(d["gap_predicted_whitened_unscaled"]),
  }


def extrapolate_r2(n: list[int], r2: list[float], dim: int) -> float | None:
  """R^2 at unlimited pairs: a least-squares line of R^2 against 1/n through the points with
  n >= 4 * dim (a linear map's excess error falls as dim / n there); None with fewer than
  two such points."""
  pts = [(1.0 / m, v) for m, v in zip(n, r2) if m >= 4 * dim]
  if len(pts) < 2:
    return None
  inv, val = jnp.asarray(pts).T
  slope, intercept = jnp.polyfit(inv, val, 1)
  return float(intercept)
