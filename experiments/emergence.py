r"""The alignment study along training: does the shared isometry emerge, or is it there at
initialisation?

  python -m experiments.train --views=mountain,forest --workdir=/tmp/mf \
      --config.keep_steps=100,300,700
  python -m experiments.emergence --workdir=/tmp/mf --steps=0,100,300,700,1500

At each step (0: the agents' own random initialisation) every ordered pair of views of each
seed is decomposed into its shared part (sjepa_jax/shared.py) on the same held-out paired
states, beside the agents' class and position probes. Writes ``emergence.json`` and
``emergence.png`` into ``--out`` (default: the workdir) and prints one line per step. A
rerun into the same folder (same run, pairs and seed) reuses the steps it already holds,
so a run still training can be followed as its checkpoints come.
"""

import json
import os

from absl import app
from absl import flags

from experiments import common
from sjepa_jax import emergence
from sjepa_jax import errors
from sjepa_jax import figures

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_STEPS = flags.DEFINE_list("steps", None, "Checkpoint steps to study, comma-separated; 0 is "
                           "the agents' initialisation (default: 0 and every saved step).")
_PAIRS = flags.DEFINE_integer("pairs", 3000, "Paired states the maps and probes are fitted on.")
_TEST_PAIRS = flags.DEFINE_integer("test_pairs", 1000, "Held-out paired states they are "
                                   "scored on.")
_OUT = flags.DEFINE_string("out", None, "Where emergence.json and emergence.png go (default: "
                           "the workdir).")
_SEED = flags.DEFINE_integer("seed", 4321, "Seed of the paired states.")


def _steps(workdir: str) -> list[int]:
  if _STEPS.value is None:
    return [0] + emergence.saved_steps(workdir)
  try:
    steps = sorted({int(s) for s in _STEPS.value})
  except ValueError:
    raise errors.UserError(f"--steps={','.join(_STEPS.value)}: give comma-separated "
                           "integers (0 for the initialisation, then saved checkpoint "
                           "steps).") from None
  if any(s < 0 for s in steps):
    raise errors.UserError(f"--steps={','.join(_STEPS.value)}: steps are >= 0.")
  return steps


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_library_logs()
  common.enable_compilation_cache()
  workdir = _WORKDIR.value
  out = _OUT.value or workdir
  path = os.path.join(out, "emergence.json")
  earlier = None
  if os.path.exists(path):
    with open(path) as f:
      earlier = json.load(f)
  report = emergence.run(workdir, _steps(workdir), _PAIRS.value, _TEST_PAIRS.value,
                         _SEED.value, earlier=earlier)
  report = {"command": common.command_line(), **report}
  os.makedirs(out, exist_ok=True)
  common.write_json(report, os.path.join(out, "emergence.json"))
  figures.emergence(report, os.path.join(out, "emergence.png"))
  for kind, by_step in report["summary"].items():
    if kind == "probes":
      continue
    print(f"\n{kind} pairs (mean +- spread over seeds):")
    print(f"{'step':>6}{'k_null':>14}{'k_iso':>14}{'R2 ridge':>16}{'gap':>16}")
    for step in report["steps"]:
      row = by_step[str(step)]
      cell = lambda k: (f"{row[k][0]:.3f}+-{row[k][1]:.3f}" if k in row else "-")
      print(f"{step:>6}{cell('k_null'):>14}{cell('k_iso'):>14}{cell('r2_ridge'):>16}"
            f"{cell('gap'):>16}")
  print(f"\nWrote {os.path.join(out, 'emergence.json')} and emergence.png.")


if __name__ == "__main__":
  common.run(main)
