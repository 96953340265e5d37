r"""The alignment suite (sjepa_jax.align) against NumPy/SciPy equivalents, side by side.

  python -m benchmarks.align [--n=10000] [--dim=256] [--n_quadratic=2000] [--repeats=5]

Maps and CKA run on N x D paired latents; the metrics that build N x N matrices (unbiased
CKA, mutual k-NN, retrieval) on the first ``--n_quadratic`` rows. Each figure is the
median of ``--repeats`` timed calls (JAX compiled beforehand, results blocked on);
``numpy / jax`` above 1 means JAX is faster. Both sides run in the same process, one
after the other, so the ratio survives a noisy machine better than either time.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg as sla

from sjepa_jax import align
from sjepa_jax import files
from sjepa_jax import shared

_N = flags.DEFINE_integer("n", 10000, "Paired latents for the maps and biased CKA.")
_DIM = flags.DEFINE_integer("dim", 256, "Latent size.")
_NQ = flags.DEFINE_integer("n_quadratic", 2000, "Rows for the N x N metrics.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per figure; the median is kept.")
_JSON = flags.DEFINE_string("json", None, "Also write the table here as JSON.")


def _median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile (JAX) or warm caches (NumPy)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


# NumPy/SciPy equivalents of each align function, written the direct way.

def np_lstsq(x, y):
  return np.linalg.lstsq(x - x.mean(0), y - y.mean(0), rcond=None)[0]


def np_ridge(x, y, l2=1e-2):
  xc = x - x.mean(0)
  gram = xc.T @ xc
  return sla.solve(gram + l2 * np.trace(gram) / x.shape[1] * np.eye(x.shape[1]),
                   xc.T @ (y - y.mean(0)), assume_a="pos")


def np_procrustes(x, y):
  xc, yc = x - x.mean(0), y - y.mean(0)
  r, sv_sum = sla.orthogonal_procrustes(xc, yc)
  return sv_sum / np.sum(xc ** 2) * r


def np_cca(x, y, l2=1e-3):
  xc, yc = x - x.mean(0), y - y.mean(0)
  n, d = xc.shape
  cxx, cyy = xc.T @ xc / n, yc.T @ yc / n
  cxx += l2 * np.trace(cxx) / d * np.eye(d)
  cyy += l2 * np.trace(cyy) / d * np.eye(d)
  ex, vx = np.linalg.eigh(cxx)
  ey, vy = np.linalg.eigh(cyy)
  wx, wy = (vx / np.sqrt(ex)) @ vx.T, (vy / np.sqrt(ey)) @ vy.T
  return np.linalg.svd(wx @ (xc.T @ yc / n) @ wy, compute_uv=False)


def np_cka(x, y):
  xc, yc = x - x.mean(0), y - y.mean(0)
  return np.sum((yc.T @ xc) ** 2) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))


def np_cka_unbiased(x, y):
  def hsic(k, l):
    n = k.shape[0]
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    kl = k @ l
    return (np.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2))
            - 2 * kl.sum() / (n - 2)) / (n * (n - 3))
  xc, yc = x - x.mean(0), y - y.mean(0)
  k, l = xc @ xc.T, yc @ yc.T
  return hsic(k, l) / np.sqrt(hsic(k, k.copy()) * hsic(l, l.copy()))


def np_mutual_knn(x, y, k=10):
  def neighbours(z):
    sq = np.sum(z ** 2, -1)
    dist = sq[:, None] + sq[None, :] - 2 * z @ z.T
    np.fill_diagonal(dist, np.inf)
    return np.argpartition(dist, k, axis=1)[:, :k]
  nx, ny = neighbours(x), neighbours(y)
  return np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(nx, ny)])


def np_retrieval(mapped, y):
  dist = np.sum(y ** 2, -1)[None, :] - 2 * mapped @ y.T
  return np.mean(np.argmin(dist, -1) == np.arange(len(y)))


def main(argv):
  del argv
  n, d, nq, reps = _N.value, _DIM.value, _NQ.value, _REPEATS.value
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((n, d)) * np.linspace(0.1, 2.0, d)).astype(np.float32)
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  y = (1.7 * x @ q + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  xq, yq, xqj, yqj = x[:nq], y[:nq], xj[:nq], yj[:nq]
  ridge_j = jax.jit(lambda a, b: align.fit_ridge(a, b, 1e-2))
  cases = [
      ("lstsq map", f"{n}x{d}", align.fit_lstsq, np_lstsq, (xj, yj), (x, y)),
      ("ridge map (fixed l2)", f"{n}x{d}", ridge_j, np_ridge, (xj, yj), (x, y)),
      ("Procrustes + scale", f"{n}x{d}", align.fit_procrustes, np_procrustes, (xj, yj), (x, y)),
      ("CCA", f"{n}x{d}", align.fit_cca, np_cca, (xj, yj), (x, y)),
      ("linear CKA", f"{n}x{d}", align.linear_cka, np_cka, (xj, yj), (x, y)),
      ("unbiased CKA", f"{nq}x{d}", align.linear_cka_unbiased, np_cka_unbiased,
       (xqj, yqj), (xq, yq)),
      ("mutual k-NN (k=10)", f"{nq}x{d}", align.mutual_knn, np_mutual_knn, (xqj, yqj),
       (xq, yq)),
      ("retrieval top-1", f"{nq}x{d}", align.retrieval_top1, np_retrieval, (xqj, yqj),
       (xq, yq)),
  ]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), float32, "
        f"median of {reps}")
  print(f"{'operation':<22}{'shape':>12}{'jax ms':>10}{'numpy ms':>10}{'numpy/jax':>11}")
  total_j = total_np = 0.0
  rows = []
  for name, shape, fj, fnp, args_j, args_np in cases:
    tj = _median_seconds(fj, *args_j, repeats=reps)
    tn = _median_seconds(fnp, *args_np, repeats=reps)
    total_j, total_np = total_j + tj, total_np + tn
    rows.append({"operation": name, "shape": shape, "jax_ms": 1e3 * tj, "numpy_ms": 1e3 * tn})
    print(f"{name:<22}{shape:>12}{1e3 * tj:>10.1f}{1e3 * tn:>10.1f}{tn / tj:>11.2f}")
  print(f"{'suite total':<22}{'':>12}{1e3 * total_j:>10.1f}{1e3 * total_np:>10.1f}"
        f"{total_np / total_j:>11.2f}")
  # The whole per-pair evaluation as the study runs it: every map, metric and the ridge
  # strength search, in one compiled call (no NumPy counterpart; for scale).
  cut = int(0.8 * n)
  te = _median_seconds(lambda a, b: align.evaluate_pair(a[:cut], b[:cut], a[cut:], b[cut:]),
                       xj, yj, repeats=reps)
  print(f"evaluate_pair, {cut} fit + {n - cut} held-out pairs, all maps and metrics: "
        f"{1e3 * te:.0f} ms")
  # The SVD driver: maps and CCA decompose small matrices; XLA's CPU default (divide and
  # conquer, gesdd) beside the QR-iteration driver align.svd uses, on the same matrix.
  small = jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)
  t_default = _median_seconds(jax.jit(lambda a: jnp.linalg.svd(a, full_matrices=False)),
                              small, repeats=reps)
  t_qr = _median_seconds(jax.jit(align.svd), small, repeats=reps)
  print(f"SVD 64x64 with vectors: default driver {1e3 * t_default:.2f} ms, QR driver "
        f"{1e3 * t_qr:.2f} ms ({t_default / t_qr:.1f}x)")
  # The shared-part decomposition of one pair (every k up to D, twice), as the study runs it.
  td = _median_seconds(lambda a, b: shared.decompose(a[:cut], b[:cut], a[cut:], b[cut:],
                                                     jax.random.key(0)),
                       xj[:, :64], yj[:, :64], repeats=reps)
  print(f"shared.decompose, D = 64, {cut} fit + {n - cut} held-out pairs: {1e3 * td:.0f} ms")
  if _JSON.value:
    files.write_json({"device": jax.devices()[0].device_kind, "n": n, "dim": d,
                       "n_quadratic": nq, "repeats": reps, "rows": rows,
                       "total_jax_ms": 1e3 * total_j, "total_numpy_ms": 1e3 * total_np,
                       "evaluate_pair_ms": 1e3 * te, "svd64_default_ms": 1e3 * t_default,
                       "svd64_qr_ms": 1e3 * t_qr, "decompose64_ms": 1e3 * td}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
