"""Compute accounting: floating-point operations of a function, counted on its jaxpr.

``count_flops(fn, *args)`` traces ``fn`` for these arguments and counts every operation of
the traced program, so the figure is the same on every backend and however agents are
mapped (``vmap`` or ``lax.map``). The rules:

- ``dot_general`` and convolutions: 2 FLOPs per multiply-add, exactly.
- Linear algebra from analytic counts (``linalg_flops``), per matrix of a batch.
- Loops: a ``scan`` (``lax.map``, ``fori_loop`` with static bounds) counts its body times
  its length; a ``cond`` counts its most expensive branch; a ``while_loop`` (whose trip
  count is data-dependent) is refused rather than guessed.
- Everything else: one FLOP per output element for elementwise operations (transcendental
  and integer ones included), one per input element for reductions, cumulative sums and
  sorts, one per update for combining scatters, none for data movement (reshape,
  broadcast, transpose, slice, gather, concatenate, convert, ...).

This counts the program as written, before XLA fuses, simplifies or eliminates anything.
XLA's own cost analysis (``xla_flops``) counts a loop body once whatever its trip count
and prices an SVD, eigendecomposition or solve at almost nothing (33 kFLOPs for a 128x128
SVD), so with ``lax.map`` over A agents it undercounts a step by A: it is kept only to
show that.

Shapes: m x n matrices (k = min(m, n), l = max(m, n)), r right-hand sides.
"""

import functools
import math
from typing import Any, Callable

import jax
from jax.extend import core

# Operations that only move, reinterpret or create data: no arithmetic.
_FREE = frozenset({
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "dynamic_update_slice", "gather", "scatter", "concatenate", "pad",
    "convert_element_type", "bitcast_convert_type", "copy", "copy_p", "iota", "rev",
    "stop_gradient", "random_wrap", "random_unwrap", "random_seed", "random_fold_in_p",
    "sharding_constraint", "device_put", "reduce_precision", "lu_pivots_to_permutation",
    "split", "optimization_barrier", "mesh_cast", "reshard", "pvary", "select_and_gather_add",
})
# Operations that read every input element once.
_PER_INPUT = frozenset({
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
    "reduce_xor", "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin",
    "cumlogsumexp", "top_k", "sort",
})
# Scatters that combine: one per update element.
_SCATTER = frozenset({"scatter-add", "scatter_add", "scatter-mul", "scatter_mul",
                      "scatter-min", "scatter_min", "scatter-max", "scatter_max"})
# Linear algebra this module has no formula for: refused rather than priced as elementwise.
_NO_FORMULA = frozenset({"eig", "schur", "hessenberg", "tridiagonal", "tridiagonal_solve",
                         "geqrf", "geqp3", "householder_product"})


def _size(aval) -> int:
  return math.prod(aval.shape)


def linalg_flops(name: str, m: int, n: int, r: int = 0, **params: Any) -> float:
  """Analytic FLOPs of one m x n linear-algebra call (Golub and Van Loan, Matrix
  Computations, 4th ed.: Householder QR, Golub-Reinsch SVD, symmetric QR algorithm):

  - ``svd``: values only 4 l k^2 - 4 k^3 / 3; with thin U and V 14 l k^2 + 8 k^3; with full
    U and V 4 l^2 k + 8 l k^2 + 9 k^3.
  - ``eigh`` (n x n): values only 4 n^3 / 3; with vectors 9 n^3.
  - ``lu``: l k^2 - k^3 / 3 (2 n^3 / 3 for a square matrix). ``cholesky``: n^3 / 3.
  - ``triangular_solve``: m^2 r, for an m x m triangle and r right-hand sides.
  - ``qr``: R alone 2 l k^2 - 2 k^3 / 3; twice that with the thin Q; R plus
    4 (l^2 k - l k^2 + k^3 / 3) with the full Q.
  """
  k, l = min(m, n), max(m, n)
  if name == "svd":
    if not params.get("compute_uv", True):
      return 4 * l * k**2 - 4 * k**3 / 3
    if params.get("full_matrices", True):
      return 4 * l**2 * k + 8 * l * k**2 + 9 * k**3
    return 14 * l * k**2 + 8 * k**3
  if name == "eigh":
    return 9 * n**3 if params.get("compute_vectors", True) else 4 * n**3 / 3
  if name == "lu":
    return l * k**2 - k**3 / 3
  if name == "cholesky":
    return n**3 / 3
  if name == "triangular_solve":
    return m**2 * r
  if name == "qr":
    r_only = 2 * l * k**2 - 2 * k**3 / 3
    if params.get("full_matrices", False):
      return r_only + 4 * (l**2 * k - l * k**2 + k**3 / 3)
    return 2 * r_only
  raise ValueError(f"No FLOP formula for {name!r}; valid: svd, eigh, lu, cholesky, "
                   "triangular_solve, qr.")


def _linalg(eqn) -> float | None:
  """FLOPs of a linear-algebra equation over its batch of matrices; None if it is not one."""
  name = eqn.primitive.name
  if name not in ("svd", "eigh", "lu", "cholesky", "triangular_solve", "qr"):
    return None
  a = eqn.invars[0].aval
  m, n = a.shape[-2:]
  batch = math.prod(a.shape[:-2])
  params = dict(eqn.params)
  if name == "triangular_solve":
    b = eqn.invars[1].aval
    rhs = b.shape[-1] if params["left_side"] else b.shape[-2]
    return batch * linalg_flops(name, m, n, rhs)
  if name == "qr":
    params["full_matrices"] = params.get("full_matrices", False)
  return batch * linalg_flops(name, m, n, **params)


def _dot_general(eqn) -> float:
  (contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval
  depth = math.prod(lhs.shape[d] for d in contract)
  return 2.0 * _size(eqn.outvars[0].aval) * depth


def _conv(eqn) -> float:
  rhs = eqn.invars[1].aval
  out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
  return 2.0 * _size(eqn.outvars[0].aval) * _size(rhs) / out_features


def _jaxpr_flops(jaxpr: core.Jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
  return total


def _inner(closed_or_open) -> core.Jaxpr:
  return getattr(closed_or_open, "jaxpr", closed_or_open)


def _eqn_flops(eqn) -> float:
  name, params = eqn.primitive.name, eqn.params
  if name == "dot_general":
    return _dot_general(eqn)
  if name == "conv_general_dilated":
    return _conv(eqn)
  linalg = _linalg(eqn)
  if linalg is not None:
    return linalg
  if name in _NO_FORMULA:
    raise NotImplementedError(f"No FLOP formula for {name!r}; add one to flops.linalg_flops.")
  if name == "scan":
    return params["length"] * _jaxpr_flops(_inner(params["jaxpr"]))
  if name == "cond":
    return max(_jaxpr_flops(_inner(b)) for b in params["branches"])
  if name == "while":
    raise NotImplementedError("Cannot count a while_loop: its trip count depends on the data. "
                              "Use lax.scan, lax.map or fori_loop with static bounds.")
  if name == "custom_linear_solve":
    return _jaxpr_flops(_inner(params["jaxprs"].solve))
  if name in _FREE:
    return 0.0
  if name in _PER_INPUT:
    return float(sum(_size(v.aval) for v in eqn.invars if hasattr(v.aval, "shape")))
  if name in _SCATTER:
    return float(_size(eqn.invars[2].aval))
  subs = [v for k, v in params.items() if k in ("jaxpr", "call_jaxpr", "fun_jaxpr")]
  if subs:  # jit, remat, custom_jvp/vjp calls: the primal computation
    return _jaxpr_flops(_inner(subs[0]))
  if any(isinstance(v, (core.Jaxpr, core.ClosedJaxpr)) for v in params.values()):
    raise NotImplementedError(f"No FLOP rule for the control-flow primitive {name!r}.")
  return float(sum(_size(v.aval) for v in eqn.outvars))


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
  """FLOPs of one call of ``fn(*args, **kwargs)`` (arrays or ShapeDtypeStructs), counted on
  its jaxpr by the rules of the module docstring."""
  closed = jax.make_jaxpr(functools.partial(fn, **kwargs))(*args)
  return _jaxpr_flops(closed.jaxpr)


def compile_and_count(fn: Callable[..., Any], *args: Any, donate_argnums=()
                      ) -> tuple[Callable[..., Any], float]:
  """``fn`` compiled for these arguments, and its ``count_flops`` per call."""
  compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
  return compiled, count_flops(fn, *args)


def xla_flops(fn: Callable[..., Any], *args: Any) -> float:
  """XLA's cost-analysis FLOPs of ``jax.jit(fn)(*args)``: loop bodies once, linear algebra
  near zero (see the module docstring). For comparison only."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  if not analysis or "flops" not in analysis:
    raise RuntimeError(f"XLA reported no FLOP count on {jax.default_backend()}; got "
                       f"{analysis!r}.")
  return float(analysis["flops"])


def dense_flops(batch: int, fan_in: int, fan_out: int, bias: bool = True) -> int:
  """Analytic FLOPs of ``x @ w (+ b)`` for x of shape (batch, fan_in)."""
  return 2 * batch * fan_in * fan_out + (batch * fan_out if bias else 0)
