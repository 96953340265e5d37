r"""Shows the world from each view and measures how much the views overlap.

  python -m experiments.show_views --out=views.png [--views=mountain,forest]

Writes a PNG grid (random states as rows, views as columns) and prints, over
``--overlap_states`` random states, the mean pixel-overlap matrix (row A, column B: the
fraction of A's surface pixels whose surface point B also sees) and how often the focal
object is visible in each view.
"""

from absl import flags
import jax
import matplotlib
import numpy as np

from experiments import common
from sjepa_jax import world
from sjepa_jax.world import render

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

_VIEWS = common.define_views_flag("views", ",".join(world.VIEWS),
                                  "Comma-separated views to show.")
_OUT = flags.DEFINE_string("out", "views.png", "Where to write the PNG grid.")
_ROWS = flags.DEFINE_integer("rows", 4, "Random states shown, one per row.")
_SIZE = flags.DEFINE_integer("size", 64, "Image height and width in pixels.")
_STATES = flags.DEFINE_integer("overlap_states", 256, "Random states the overlap averages.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random states.")
_JSON = flags.DEFINE_string("json", None, "Also write the overlap matrix and the focal "
                            "object's pixel counts here as JSON.")
flags.adopt_module_key_flags(common)  # --traceback (and shared flags) show in --help


def save_grid(images: np.ndarray, names: list[str], path: str) -> None:
  """Saves images (rows, views, H, W, 3) as a grid with the view names as titles."""
  rows, cols = images.shape[:2]
  fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
  for r in range(rows):
    for c in range(cols):
      axes[r, c].imshow(images[r, c], interpolation="nearest")
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
      if r == 0:
        axes[r, c].set_title(names[c])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  common.enable_compilation_cache()
  names = world.parse_views(_VIEWS.value)
  views = world.stack_views(names)
  key_show, key_states = jax.random.split(jax.random.key(_SEED.value))

  shown = jax.vmap(world.random_state)(jax.random.split(key_show, _ROWS.value))
  keys = jax.random.split(key_show, _ROWS.value)
  images = jax.vmap(lambda s, k: world.observe(s, views, _SIZE.value, k))(shown, keys)
  save_grid(np.asarray(images), names, _OUT.value)
  print(f"Wrote {_OUT.value}: {_ROWS.value} states x {len(names)} views at {_SIZE.value}px.")

  states = jax.vmap(world.random_state)(jax.random.split(key_states, _STATES.value))
  matrix = np.asarray(world.overlap_matrix(states, views, size=_SIZE.value))
  width = max(len(n) for n in names) + 2
  print(f"\nMean pixel overlap over {_STATES.value} states (row A -> column B):")
  print(" " * width + "".join(f"{n:>{width}}" for n in names))
  for name, row in zip(names, matrix):
    print(f"{name:<{width}}" + "".join(f"{x:>{width}.3f}" for x in row))
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      print(f"  {names[i]}-{names[j]}: symmetric mean "
            f"{(matrix[i, j] + matrix[j, i]) / 2:.3f}")

  pixels = np.asarray(render.focal_pixels(states, views, size=_SIZE.value))
  print("\nFocal object per view: median pixels, fraction of states with >= 4 pixels")
  for name, p in zip(names, pixels.T):
    print(f"  {name:<{width}} {np.median(p):6.1f} {np.mean(p >= 4):8.3f}")
  if _JSON.value:
    common.write_json({
        "size": _SIZE.value, "states": _STATES.value, "seed": _SEED.value, "views": names,
        "overlap": matrix.tolist(),  # row A -> column B
        "focal_pixels_median": {n: float(np.median(p)) for n, p in zip(names, pixels.T)},
        "focal_visible_4px": {n: float(np.mean(p >= 4)) for n, p in zip(names, pixels.T)},
    }, _JSON.value)


if __name__ == "__main__":
  common.run(main)
