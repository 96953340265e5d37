r"""Cameras under the floor, screened for the low-overlap view: each candidate's pixel overlap
with the four surface views and its supervised ceiling (what an encoder trained on the
labels reads from it), one seed, in one run.

  python -m benchmarks.low_overlap_view [--candidates=now,narrow,...] [--workdir=PATH] \
      [--json=PATH]

The low-overlap view is only worth judging if its own frames show the object: a supervised
encoder on the other views reads class at 0.94-0.98 and position at 0.95 or more. Each
candidate is registered as a world view named ``cellar_<candidate>`` and trained with the
default recipe (``--config.objective.kind=supervised``, seed 0); its end-of-run probes are
the ceiling. Overlap is the mean over 32 random states at 64x64: ``from`` is the share of a
surface view's pixels the candidate also sees (what the cellar must keep under 0.1),
``to`` the share of the candidate's pixels a surface view also sees.
"""

import os
import time

from absl import flags
import jax
import numpy as np

from experiments import common
from experiments.configs import default
from sjepa_jax import errors
from sjepa_jax import files
from sjepa_jax import train
from sjepa_jax import world
from sjepa_jax.world import views as views_lib

SURFACE = ("mountain", "forest", "drone", "river")
_BELOW = (0.3, -0.2, -0.93)  # the cellar's lamp
CANDIDATES = {
    "now": dict(eye=(0.0, 0.0, -5.0), target=(0.0, 0.0, 0.0), fov_deg=62.0),
    # A narrower field: the arena fills the frame, the objects grow by a fifth.
    "narrow": dict(eye=(0.0, 0.0, -5.0), target=(0.0, 0.0, 0.0), fov_deg=54.0),
    # Closer, as wide as the arena: more perspective, so off-centre objects show a side.
    "close": dict(eye=(0.0, 0.0, -3.5), target=(0.0, 0.0, 0.0), fov_deg=72.0),
    # Closer and narrower than the arena: larger objects, the corners out of frame.
    "crop": dict(eye=(0.0, 0.0, -5.0), target=(0.0, 0.0, 0.0), fov_deg=44.0),
    # Oblique from below the west side, where no surface view looks from: heights show.
    "west": dict(eye=(-3.5, 0.0, -3.0), target=(0.0, 0.0, 0.3), fov_deg=70.0),
    "steep_west": dict(eye=(-2.0, 0.0, -4.0), target=(0.0, 0.0, 0.3), fov_deg=64.0),
}
LABELS = ("class_acc", "shape_acc", "size_acc", "position_r2")

_CANDIDATES = flags.DEFINE_list("candidates", list(CANDIDATES), "Which cameras: "
                                f"{', '.join(CANDIDATES)}.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/low_overlap_view", "Where the supervised "
                               "runs go (a trained one is read back, not trained again).")
_JSON = flags.DEFINE_string("json", None, "Also write the table here as JSON.")


def register(name: str) -> str:
  """Registers candidate ``name`` as the world view ``cellar_<name>``; that name."""
  view_name = f"cellar_{name}"
  views_lib.VIEWS[view_name] = views_lib.make_view(light=_BELOW, **CANDIDATES[name])
  return view_name


def overlaps(view_name: str, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(from, to): each surface view's share of pixels the view also sees, and the reverse."""
  states = jax.vmap(world.random_state)(jax.random.split(jax.random.key(0), 32))
  m = np.asarray(world.overlap_matrix(states, world.stack_views([view_name, *SURFACE]), size))
  return m[1:, 0], m[0, 1:]


def ceiling(view_name: str, workdir: str) -> dict[str, float]:
  """The supervised encoder's end-of-run probes on ``view_name`` (default recipe, seed 0)."""
  config = default.get_config()
  config.objective.kind = "supervised"
  report = train.train_and_evaluate(config, os.path.join(workdir, view_name), view_name)
  return {label: float(report[view_name][f"trained/{label}"]) for label in LABELS}


def main(argv):
  del argv
  unknown = [c for c in _CANDIDATES.value if c not in CANDIDATES]
  if unknown:
    raise errors.UserError(f"Unknown candidate(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(CANDIDATES)}.")
  table = {}
  for name in _CANDIDATES.value:
    view_name = register(name)
    start = time.perf_counter()
    into, out_of = overlaps(view_name)
    table[name] = {**CANDIDATES[name], **ceiling(view_name, _WORKDIR.value),
                   "overlap_from_surface": into.tolist(), "overlap_to_surface": out_of.tolist(),
                   "wall_s": time.perf_counter() - start}
  print(f"\n{'candidate':<12}" + "".join(f"{label:>13}" for label in LABELS)
        + f"{'from max':>10}{'to mean':>9}   (overlap; surface = {', '.join(SURFACE)})")
  for name, row in table.items():
    print(f"{name:<12}" + "".join(f"{row[label]:>13.3f}" for label in LABELS)
          + f"{max(row['overlap_from_surface']):>10.3f}"
          + f"{np.mean(row['overlap_to_surface']):>9.3f}")
  if _JSON.value:
    files.write_json({"candidates": table, "surface": SURFACE}, _JSON.value)


if __name__ == "__main__":
  common.run(main)
