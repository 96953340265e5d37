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
  return count(jax.jit(fn).lower(*args, **kwargs).compile())


def compile_and_count(fn: Callable[..., Any], *args: Any, donate_argnums=()
                      ) -> tuple[Callable[..., Any], float]:
  """``fn`` compiled for these arguments, and its FLOPs per call: count once, run it."""
  compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
  return compiled, count(compiled)


def count(compiled: Any) -> float:
  """FLOPs of a compiled program (``jax.stages.Compiled``) from XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  if not analysis or "flops" not in analysis:
    raise RuntimeError(f"XLA reported no FLOP count on {jax.default_backend()}; got "
                       f"{analysis!r}.")
  return float(analysis["flops"])


def dense_flops(batch: int, fan_in: int, fan_out: int, bias: bool = True) -> int:
  """Analytic FLOPs of ``x @ w (+ b)`` for x of shape (batch, fan_in)."""
  return 2 * batch * fan_in * fan_out + (batch * fan_out if bias else 0)
