r"""The sources benchmark: the recipe on every kind of source, each with its floors and
ceilings, one study report per source.

  python -m benchmarks.sources --data_dir=~/tensorflow_datasets --workdir=runs/sources \
      [--sources=world,pybullet_pushing,mujoco_tabletop,mujoco_distractors,mnist5k] \
      [--seeds=0,1,2] [--out=docs/sources]
  python -m benchmarks.sources --out=docs/sources --table_only  # reprint the table

Per source: JEPA agents on its cameras (every seed one program), an autoencoder on seed 0
(the floor that learns pixels), then the study (``align_and_probe``'s) on both: probes of
every label beside pixel PCA and random init, maps between cameras beside pixel PCA's,
two seeds on one camera as the ceiling. Writes ``<out>/<source>/report.json`` with the
commands' wall times, then prints the cross-source table. Rerunning resumes: a trained run
is not trained again, a source with a report is not studied again.

The recordings are made with their recorder and imported into ``--data_dir`` first
(docs/recordings.md; a missing one is named, with the commands that make it, before
anything trains); the world needs nothing.
"""

import json
import os
import time
from typing import NamedTuple

from absl import app
from absl import flags
import numpy as np

from experiments import common
from experiments.configs import default
from sjepa_jax import errors
from sjepa_jax import files
from sjepa_jax import study
from sjepa_jax import summaries
from sjepa_jax import tfds_local
from sjepa_jax import train


class Source(NamedTuple):
  dataset: str  # "" is the world
  views: str
  pairs: int  # the study's fitting and held-out paired states
  test_pairs: int
  overrides: dict  # config fields this source needs (none is tuned on it)
  made_by: str  # the commands that make it


_RECORD = ("python -m experiments.record_mujoco --scene={scene} --out=recordings/{scene} "
           "--episodes=300 --steps=40 --image_size=64 && python -m experiments.import_episodes "
           "--npz='recordings/{scene}/ep_*.npz' --name=mujoco_{scene} --data_dir=<data_dir> "
           "--test_episodes=60")
SOURCES = {
    "world": Source("", "mountain,forest", 4000, 1000, {}, ""),
    "pybullet_pushing": Source(
        "pybullet_pushing", "front,side,top", 4000, 1000, {},
        "python -m experiments.record_pybullet --out=recordings/pushing --episodes=300 "
        "--steps=40 --image_size=64 --cameras=front,side,top && python -m experiments.import_episodes --npz='recordings/pushing/ep_*.npz' "
        "--name=pybullet_pushing --data_dir=<data_dir> --test_episodes=60"),
    "mujoco_tabletop": Source("mujoco_tabletop", "overhead,front,pusher", 4000, 1000, {},
                              _RECORD.format(scene="tabletop")),
    "mujoco_distractors": Source("mujoco_distractors", "overhead,front,pusher", 4000, 1000, {},
                                 _RECORD.format(scene="distractors")),
    "mnist5k": Source("mnist5k", "left,right", 2000, 1000,
                      {"data.image_size": 28, "data.region_size": 0.6},
                      "the commands in docs/datasets.md, 'An example dataset from the "
                      "package registry'"),
}

_SOURCES = flags.DEFINE_list("sources", list(SOURCES), f"Which sources: {', '.join(SOURCES)}.")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "tfds data directory "
                                "holding the recordings and datasets.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/sources", "Where each source's runs go.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "JEPA seeds, one program per source.")
_OUT = flags.DEFINE_string("out", "docs/sources", "Where <source>/report.json go.")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "Only print the table of the reports "
                                "already in --out.")


def config_for(source: Source, data_dir: str, kind: str = "jepa", base=default.get_config):
  """The recipe (``base()``) on ``source``, trained as ``kind``."""
  config = base()
  config.data.dataset = source.dataset
  config.data.data_dir = data_dir if source.dataset else ""
  config.objective.kind = kind
  for field, value in source.overrides.items():
    group, name = field.split(".")
    config[group][name] = value
  return config


def _prepared(dataset: str, data_dir: str) -> bool:
  try:
    tfds_local.builder(dataset, data_dir)
  except FileNotFoundError:
    return False
  return True


def check_available(names, data_dir: str) -> None:
  """Refuses, in one line, unknown sources and recordings missing from ``data_dir``."""
  unknown = [n for n in names if n not in SOURCES]
  if unknown:
    raise errors.UserError(f"Unknown source(s) {', '.join(unknown)}; valid: "
                           f"{', '.join(SOURCES)}.")
  missing = [n for n in names if SOURCES[n].dataset and not _prepared(SOURCES[n].dataset,
                                                                       data_dir)]
  if missing:
    raise errors.UserError(
        f"Not in {data_dir}: {', '.join(missing)}. Make them first: " + "; ".join(
            f"{n}: {SOURCES[n].made_by.replace('<data_dir>', data_dir)}" for n in missing))


def run_source(name: str, data_dir: str, workdir: str, seeds, out: str,
               base=default.get_config, pairs: tuple[int, int] | None = None) -> dict:
  """Trains (or resumes) and studies one source with the recipe ``base()``; its report,
  also written to ``out`` (``pairs``: the study's fitting and held-out states, default the
  source's)."""
  source = SOURCES[name]
  path = os.path.join(out, name, "report.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  wall = {}
  runs = {"jepa": (seeds, os.path.join(workdir, name, "jepa")),
          "autoencoder": (seeds[:1], os.path.join(workdir, name, "autoencoder"))}
  for kind, (run_seeds, run_dir) in runs.items():
    start = time.time()
    train.train_and_evaluate(config_for(source, data_dir, kind, base), run_dir, source.views,
                             run_seeds)
    wall[kind] = round(time.time() - start)
  start = time.time()
  n_fit, n_test = pairs or (source.pairs, source.test_pairs)
  report, _ = study.run([d for _, d in runs.values()], n_fit, n_test,
                        data_dir=data_dir if source.dataset else None)
  wall["study"] = round(time.time() - start)
  report = {"command": common.command_line(), "source_name": name, "wall_s": wall, **report}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_json(report, path)
  return report


def label_goal(score: str, jepa: float, pca: float, random_init: float) -> bool | None:
  """Whether the agents read a label pixel PCA reads (R^2 above ``pixels_read_r2_min``, or
  accuracy ``pixels_read_acc_margin`` above random init) above pixel PCA by
  ``control_margin_min`` or by half of what pixel PCA leaves to 1, whichever is less; None
  where pixel PCA does not read it."""
  if not summaries.pixels_read(score, pca, random_init):
    return None
  return bool(jepa >= pca + min(summaries.GOALS["control_margin_min"], (1 - pca) / 2))


def rows(report: dict) -> list[tuple]:
  """(camera, label, JEPA mean, std, pixel PCA, random init, autoencoder, goal met) per
  probed label (``label_goal``)."""
  out = []
  for view, kinds in report["probes_by_view"].items():
    jepa = kinds.get("jepa", {})
    for label, (mean, std, _) in jepa.items():
      other = lambda kind: kinds.get(kind, {}).get(label, [np.nan])[0]
      pca, rand = other("pixel_pca"), other("random_init")
      out.append((view, label, mean, std, pca, rand, other("autoencoder"),
                  label_goal(label, mean, pca, rand)))
  return out


def print_table(reports: dict[str, dict]) -> None:
  verdict = {None: "-", True: "met", False: "missed"}
  print(f"{'source':<20}{'camera':<10}{'label':<26}{'JEPA':>14}{'pixel PCA':>11}"
        f"{'random':>9}{'autoenc.':>10}  goal")
  for name, report in reports.items():
    for view, label, mean, std, pca, rand, ae, met in rows(report):
      print(f"{name:<20}{view:<10}{label:<26}{mean:>8.3f} +-{std:.2f}{pca:>11.3f}{rand:>9.3f}"
            f"{ae:>10.3f}  {verdict[met]}")
  print(f"\n{'source':<20}{'maps R^2: JEPA':>16}{'pixel PCA':>11}{'same camera':>13}  goal"
        f"  wall s (JEPA, autoencoder, study)")
  for name, report in reports.items():
    s = report["summary"]
    control = lambda kind: (s.get("controls", {}).get(kind) or {}).get("r2_ridge", np.nan)
    wall = report.get("wall_s", {})
    met = s["r2_ridge"] >= control("pixel_pca") + summaries.GOALS["control_margin_min"]
    print(f"{name:<20}{s['r2_ridge']:>16.3f}{control('pixel_pca'):>11.3f}"
          f"{control('same_view'):>13.3f}  {verdict[bool(met)]:<8}"
          f"{', '.join(str(wall.get(k)) for k in ('jepa', 'autoencoder', 'study'))}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  names = _SOURCES.value
  data_dir = os.path.abspath(os.path.expanduser(_DATA_DIR.value))
  if _TABLE_ONLY.value:
    reports = {}
    for n in names:
      path = os.path.join(_OUT.value, n, "report.json")
      if os.path.exists(path):
        with open(path) as f:
          reports[n] = json.load(f)
    print_table(reports)
    return
  check_available(names, data_dir)
  seeds = [int(s) for s in _SEEDS.value]
  common.quiet_library_logs()
  common.enable_compilation_cache()
  reports = {n: run_source(n, data_dir, _WORKDIR.value, seeds, _OUT.value) for n in names}
  print_table(reports)


if __name__ == "__main__":
  common.run(main)
