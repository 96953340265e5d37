r"""Trains JEPA agents, one per view (of the embedded world, or regions of a dataset's images).

  python -m experiments.train --view=forest --workdir=/tmp/forest
  python -m experiments.train --views=mountain,forest --workdir=/tmp/mf \
      [--config=experiments/configs/smoke.py] [--config.model.dim=64] [--seed=1]
  python -m experiments.train --dataset=mnist --data_dir=~/tensorflow_datasets \
      --views=left,right --workdir=/tmp/mnist  # a labelled image dataset, region views

Rerunning the same command resumes from the latest checkpoint in the workdir. Metrics go
to TensorBoard event files and the log; the run ends with a linear-probe table (trained
vs random-init encoders) that is also written to ``<workdir>/probe.json``.
"""

import os

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from experiments import common
from sjepa_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/default.py", "Hyperparameters (a ConfigDict file); "
    "override fields with --config.<field>=<value>.", lock_config=True)
_VIEW = common.define_views_flag("view", None, "Train one agent on this view.")
_VIEWS = common.define_views_flag("views", None, "Train one agent per view, comma-separated.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and probe results.",
                               required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Seed; an agent's keys depend on it and its view.")
_SEEDS = flags.DEFINE_list("seeds", None, "Several seeds, comma-separated (instead of "
                           "--seed): every (view, seed) pair is one agent of the same program.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "A tensorflow-datasets name read from --data_dir (never downloaded); "
    "agents then see regions of its images. Default: the embedded world. Sets "
    "config.data.dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory holding --dataset. "
                                "Sets config.data.data_dir.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first "
                               "(multi-host TPU/GPU jobs).")
flags.register_multi_flags_validator(
    ["view", "views"], lambda f: (f["view"] is None) != (f["views"] is None),
    message="Give exactly one of --view (one agent) or --views (several agents).")


def _check_seeds(value):
  if value is None:
    return True
  if not value or not all(s.strip().lstrip("-").isdigit() for s in value):
    raise flags.ValidationError(f"--seeds takes comma-separated integers, got {value}.")
  if len({int(s) for s in value}) != len(value):
    raise flags.ValidationError(f"--seeds must be distinct, got {value}.")
  return True


flags.register_validator("seeds", _check_seeds)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_library_logs()
  common.enable_compilation_cache()
  if _MULTIHOST.value:
    jax.distributed.initialize()
  config = _CONFIG.value
  if _DATASET.value is not None:
    config.data.dataset = _DATASET.value
  if _DATA_DIR.value is not None:
    config.data.data_dir = os.path.abspath(os.path.expanduser(_DATA_DIR.value))
  views = _VIEW.value or _VIEWS.value
  seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else _SEED.value
  report = train.train_and_evaluate(config, _WORKDIR.value, views, seeds)
  if report:
    print(f"\nLinear probes on frozen latents, held-out states ({_WORKDIR.value}/probe.json):")
    print(f"{'agent':<13} {'class acc':>10} {'(random)':>9} {'pos R^2':>9} {'(random)':>9}")
    for view, r in report.items():
      pos = "".join(f"{r[k]:>9.3f}" if k in r else f"{'-':>9}"
                    for k in ("trained/position_r2", "random_init/position_r2"))
      print(f"{view:<13} {r['trained/class_acc']:>10.3f} {r['random_init/class_acc']:>9.3f} "
            f"{pos}")


if __name__ == "__main__":
  app.run(main)
