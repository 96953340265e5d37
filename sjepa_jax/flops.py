"""Compute accounting: floating-point operations of compiled programs, from XLA itself.

``compiled_flops(fn, *args)`` lowers and compiles ``fn`` for these arguments and reads
XLA's cost analysis of the optimised program, so whatever the program really computes is
counted (fused, rematerialised, with its SVDs and solves) and nothing it does not.
Multiply-add counts as 2 FLOPs, as in the analytic formulas the tests check against.
"""

from typing import Any, Callable

import jax


def compiled_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
  """FLOPs of one call of ``jax.jit(fn)(*args, **kwargs)`` (arrays or ShapeDtypeStructs)."""
  compiled = jax.jit(fn).lower(*args, **kwargs).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  if not analysis or "flops" not in analysis:
    raise RuntimeError(f"XLA reported no FLOP count for {getattr(fn, '__name__', fn)} on "
                       f"{jax.default_backend()}; got {analysis!r}.")
  return float(analysis["flops"])


def dense_flops(batch: int, fan_in: int, fan_out: int, bias: bool = True) -> int:
  """Analytic FLOPs of ``x @ w (+ b)`` for x of shape (batch, fan_in)."""
  return 2 * batch * fan_in * fan_out + (batch * fan_out if bias else 0)
