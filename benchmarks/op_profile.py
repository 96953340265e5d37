"""Where a jitted function's time goes, op by op: jax.profiler's trace, read back in Python.

  times = op_profile.trace_op_seconds(step, steps=10)   # XLA op name -> seconds, summed
  rows = op_profile.op_table(compiled.as_text(), times, steps=10)

``trace_op_seconds`` records a ``jax.profiler`` trace of ``steps`` calls and sums the
duration of every event on the host CPU plane by name (XLA's CPU runtime records one event
per executed op, named as the op in the optimised HLO). ``op_table`` joins those names to
the compiled program's HLO text: what each op is (a fusion's fused opcodes), and whether
JAX traced it in the forward pass, the backward pass (under ``transpose``) or neither
(the optimizer update, metrics). No TensorBoard or xprof is needed.
"""

import collections
import glob
import os
import re
import tempfile
from typing import Callable

import jax

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([^\s=]+) = (.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([^\s(]+) \(")
_OPCODE = re.compile(r"(?:^|\s)([a-z][a-z0-9_\-]*)\(")
_TRIVIAL = {"parameter", "constant", "broadcast", "bitcast", "get-tuple-element", "tuple"}
_WRAPPERS = {"while", "call", "conditional"}  # their bodies' ops are traced on their own


def trace_op_seconds(fn: Callable[[], object], steps: int) -> dict[str, float]:
  """Seconds per event name on the host CPU plane, summed over ``steps`` calls of ``fn``
  (already compiled: call it once before)."""
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      out = None
      for _ in range(steps):
        out = fn()
      jax.block_until_ready(out)
    path, = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
    profile = jax.profiler.ProfileData.from_file(path)
  seconds = collections.Counter()
  for plane in profile.planes:
    if plane.name == "/host:CPU":
      for line in plane.lines:
        for event in line.events:
          seconds[event.name] += event.duration_ns * 1e-9
  return dict(seconds)


def _parse(hlo_text: str) -> tuple[dict, dict]:
  """Instructions of every computation: name -> (opcode, jax op_name, called computation,
  output type), and computation -> [its instructions' opcodes]."""
  instructions, computations, current = {}, collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and line.rstrip().endswith("{"):
      current = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if m is None or current is None:
      continue
    opcode = _OPCODE.search(m.group(2))
    if opcode is None:
      continue
    op_name = re.search(r'op_name="([^"]*)"', line)
    calls = re.search(r"calls=%([^\s,}]+)", line)
    instructions[m.group(1)] = (opcode.group(1), op_name.group(1) if op_name else "",
                                calls.group(1) if calls else None,
                                m.group(2)[:opcode.start()].split("{")[0].strip())
    computations[current].append(opcode.group(1))
  return instructions, computations


def phase(op_name: str) -> str:
  """``backward`` for what JAX traced under transpose (the gradient), ``forward`` under jvp,
  else ``other`` (the update, metrics)."""
  if "transpose(" in op_name:
    return "backward"
  return "forward" if "jvp(" in op_name else "other"


def op_table(hlo_text: str, seconds: dict[str, float], steps: int) -> list[dict]:
  """One row per op of the program that the trace saw, slowest first: ``op``, ``ms`` (per
  call), ``share`` (of all ops' time), ``phase``, ``what`` (a fusion's fused opcodes in
  order, trivial ones left out), ``shape`` (its output) and ``where`` (the JAX op's name
  stack without its transformations, e.g. ``encoder/Dense_1/dot_general``)."""
  instructions, computations = _parse(hlo_text)
  rows = []
  for name, (opcode, op_name, calls, shape) in instructions.items():
    if name not in seconds or opcode in _WRAPPERS:
      continue
    what = opcode
    if opcode == "fusion" and calls in computations:
      fused = [o for o in computations[calls] if o not in _TRIVIAL] or [
          o for o in computations[calls] if o != "parameter"]
      what = "fusion: " + "+".join(dict.fromkeys(fused))
    where = "/".join(p for p in op_name.split("/") if "(" not in p)
    rows.append({"op": name, "ms": 1e3 * seconds[name] / steps, "phase": phase(op_name),
                 "what": what, "shape": shape, "where": where})
  total = sum(r["ms"] for r in rows) or 1.0
  for r in rows:
    r["share"] = r["ms"] / total
  return sorted(rows, key=lambda r: -r["ms"])


def summarise(rows: list[dict]) -> dict[str, float]:
  """Shares of the ops' time: by phase, and in ops that hold a matmul (dot or
  convolution)."""
  out = collections.Counter()
  for r in rows:
    out[r["phase"]] += r["share"]
    if re.search(r"\b(dot|convolution)\b", r["what"]):
      out["matmul ops"] += r["share"]
  return dict(out)
