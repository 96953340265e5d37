r"""Trains JEPA agents, one per view: of the embedded world, regions of a dataset's images, or
cameras of a recording (a dataset of multi-camera episodes, docs/recordings.md).

  python -m experiments.train --view=forest --workdir=/tmp/forest
  python -m experiments.train --views=mountain,forest --workdir=/tmp/mf \
      [--config=experiments/configs/smoke.py] [--config.model.dim=64] [--seed=1]
  python -m experiments.train --dataset=mnist --data_dir=~/tensorflow_datasets \
      --views=left,right --workdir=/tmp/mnist  # a labelled image dataset, region views
  python -m experiments.train --dataset=pushing --data_dir=~/tensorflow_datasets \
      --views=front,side --workdir=/tmp/pushing  # a recording: one agent per camera
  python -m experiments.train --views=mountain,forest --workdir=/tmp/sweep \
      --sweep=objective.inverse_weight=1,4,10  # six agents: every value, one program

Rerunning the same command resumes from the latest checkpoint in the workdir. Metrics go
to TensorBoard event files and the log; the run ends with a linear-probe table (trained
vs random-init encoders vs pixel PCA) that is also written to ``<workdir>/probe.json``, and
one line of warning if an agent reads a label no better than its pixels.
"""

import json
import os

from absl import app
from absl import flags
import jax

from experiments import common
from sjepa_jax import agents
from sjepa_jax import data
from sjepa_jax import evaluation
from sjepa_jax import probes
from sjepa_jax import train

_CONFIG = common.define_config_flag("experiments/configs/default.py",
                                    "Hyperparameters (a ConfigDict file).")
_VIEW = common.define_views_flag("view", None, "Train one agent on this view.")
_VIEWS = common.define_views_flag("views", None, "Train one agent per view, comma-separated.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and probe results.",
                               required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Seed; an agent's keys depend on it and its view.")
_SEEDS = flags.DEFINE_list("seeds", None, "Several seeds, comma-separated (instead of "
                           "--seed): every (view, seed) pair is one agent of the same program.")
_SWEEP = flags.DEFINE_multi_string(
    "sweep", None, "field=v1,v2,...: every value of a numeric config field as more agents "
    "of the same program (repeat the flag for a product of several fields), e.g. "
    "--sweep=objective.inverse_weight=1,4,10. Numbers, not shapes: "
    "objective weights, objective.ema_decay, optim.lr.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "A tensorflow-datasets name read from --data_dir (never downloaded): "
    "a labelled image dataset (agents see regions of its images) or a recording (agents "
    "see its cameras; --views names them). Default: the embedded world. Sets "
    "config.data.dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory holding --dataset. "
                                "Sets config.data.data_dir.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "One process of a multi-process run: call jax.distributed.initialize() "
    "first. Under SLURM, on TPU pods and on GCE it reads the process layout from the "
    "environment; elsewhere give --coordinator_address, --num_processes and --process_id.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "With --multihost: host:port "
                                   "of process 0 (default: from the environment).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --multihost: how many "
                                      "processes (default: from the environment).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --multihost: this process's "
                                   "index, 0 to num_processes - 1 (default: from the "
                                   "environment).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100, "With --multihost: seconds without "
                                  "a heartbeat after which the others stop with an error.")
flags.register_multi_flags_validator(
    ["view", "views"], lambda f: (f["view"] is None) != (f["views"] is None),
    message="Give exactly one of --view (one agent) or --views (several agents).")
flags.adopt_module_key_flags(common)  # --view(s) and --traceback show in --help


def _check_seeds(value):
  if value is None:
    return True
  if not value or not all(s.strip().lstrip("-").isdigit() for s in value):
    raise flags.ValidationError(f"--seeds takes comma-separated integers, got {value}.")
  if len({int(s) for s in value}) != len(value):
    raise flags.ValidationError(f"--seeds must be distinct, got {value}.")
  return True


flags.register_validator("seeds", _check_seeds)


# The probe table's columns: (score in probe.json, heading).
_COLUMNS = tuple(probes.SCORE_HEADINGS.items())


def print_probes(report: dict, path: str) -> None:
  """The end-of-run probes, one row per agent and one each for its random-init encoder and
  its view's pixel PCA; then one line naming every label an agent reads no better than
  pixels."""
  columns = [(k, h) for k, h in _COLUMNS if any(f"trained/{k}" in r for r in report.values())]
  others = sorted({k[len("trained/"):] for r in report.values() for k in r
                   if k.startswith("trained/") and k.endswith(("_acc", "_r2"))}
                  - {k for k, _ in _COLUMNS})  # a recording's own labels
  columns += [(k, k) for k in others]
  print(f"\nProbes on frozen latents, held-out states ({path}; accuracy or R^2):")
  width = max([10] + [len(h) + 2 for _, h in columns])
  print(f"{'agent':<16}" + "".join(f"{h:>{width}}" for _, h in columns))
  rows = (("trained", None), ("random_init", "  random init"), ("pixel_pca", "  pixel PCA"))
  for agent, r in report.items():
    for kind, label in rows:
      print(f"{label or agent:<16}" + "".join(
          f"{r[f'{kind}/{k}']:>{width}.3f}" if f"{kind}/{k}" in r else f"{'-':>{width}}"
          for k, _ in columns))
  warning = evaluation.below_pixels_warning(report)
  if warning:
    print(warning)


def print_source(workdir: str) -> None:
  """A recording's parts as the run read them: episodes, steps, skipped episodes and the
  action statistics its actions were normalised with."""
  path = os.path.join(workdir, data.SOURCE_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    parts = json.load(f)
  print(f"\nRecording parts ({path}):")
  for role, p in parts.items():
    skipped = (f", {p['skipped_short_episodes']} skipped (shorter than data.frames)"
               if role == "train" else "")
    print(f"  {role:<6}{p['part']:<22}{p['episodes']:>6} episodes {p['steps']:>8} steps"
          f"{skipped}")
    if "action_mean" in p:
      fmt = lambda xs: "[" + ", ".join(f"{x:.3g}" for x in xs) + "]"
      print(f"        actions normalised with the train mean {fmt(p['action_mean'])} and "
            f"std {fmt(p['action_std'])}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_library_logs()
  common.enable_compilation_cache()
  if _MULTIHOST.value:
    common.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  _HEARTBEAT.value)
  config = _CONFIG.value
  if _DATASET.value is not None:
    config.data.dataset = _DATASET.value
  if _DATA_DIR.value is not None:
    config.data.data_dir = os.path.abspath(os.path.expanduser(_DATA_DIR.value))
  views = _VIEW.value or _VIEWS.value
  seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else _SEED.value
  report = train.train_and_evaluate(config, _WORKDIR.value, views, seeds,
                                    agents.parse_sweep(_SWEEP.value))
  if report and jax.process_index() == 0:
    print_source(_WORKDIR.value)
    print_probes(report, os.path.join(_WORKDIR.value, "probe.json"))
  if _MULTIHOST.value:
    common.finish_distributed()


if __name__ == "__main__":
  common.run(main)
