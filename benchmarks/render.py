r"""Rendering throughput: frames/s per view at several batch sizes, in one run.

  python -m benchmarks.render [--batches=1,64,256] [--size=64] [--repeats=5] [--json=PATH]

Each figure is the median over ``--repeats`` timed calls of a jitted, vmapped render
(compile excluded), on whatever device JAX picks (CPU here; GPU when one is present).
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np

from sjepa_jax import files
from sjepa_jax import world
from sjepa_jax.world import render

_BATCHES = flags.DEFINE_list("batches", ["1", "64", "256"], "Batch sizes (states per call).")
_SIZE = flags.DEFINE_integer("size", 64, "Image height and width.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per figure; the median is kept.")
_VIEWS = flags.DEFINE_string("views", ",".join(world.VIEWS), "Views to time.")
_JSON = flags.DEFINE_string("json", None, "Also write the table here as JSON.")


def frames_per_second(view: world.View, batch: int, size: int, repeats: int) -> float:
  """Median frames/s of rendering ``batch`` random states from ``view``."""
  states = jax.vmap(world.random_state)(jax.random.split(jax.random.key(0), batch))
  keys = jax.random.split(jax.random.key(1), batch)
  fn = jax.jit(jax.vmap(lambda s, k: render.render(s, view, size, k).rgb))
  fn(states, keys).block_until_ready()  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(states, keys).block_until_ready()
    times.append(time.perf_counter() - start)
  return batch / float(np.median(times))


def main(argv):
  del argv
  names = world.parse_views(_VIEWS.value)
  batches = [int(b) for b in _BATCHES.value]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{_SIZE.value}x{_SIZE.value}, median of {_REPEATS.value}")
  print(f"{'view':<10}" + "".join(f"{'batch ' + str(b):>12}" for b in batches) + "   frames/s")
  table = {}
  for name in names:
    fps = [frames_per_second(world.get_view(name), b, _SIZE.value, _REPEATS.value)
           for b in batches]
    table[name] = dict(zip(map(str, batches), fps))
    print(f"{name:<10}" + "".join(f"{f:>12.0f}" for f in fps))
  if _JSON.value:
    files.write_json({"device": jax.devices()[0].device_kind, "size": _SIZE.value,
                       "repeats": _REPEATS.value, "frames_per_second": table}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
