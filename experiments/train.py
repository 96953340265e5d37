r"""Trains JEPA agents, one per view of the embedded world, each on its own data.

  python -m experiments.train --view=forest --workdir=/tmp/forest
  python -m experiments.train --views=mountain,forest --workdir=/tmp/mf \
      [--config=experiments/configs/smoke.py] [--config.model.dim=64] [--seed=1]

Rerunning the same command resumes from the latest checkpoint in the workdir. Metrics go
to TensorBoard event files and the log; the run ends with a linear-probe table (trained
vs random-init encoders) that is also written to ``<workdir>/probe.json``.
"""

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
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first "
                               "(multi-host TPU/GPU jobs).")
flags.register_multi_flags_validator(
    ["view", "views"], lambda f: (f["view"] is None) != (f["views"] is None),
    message="Give exactly one of --view (one agent) or --views (several agents).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_library_logs()
  if _MULTIHOST.value:
    jax.distributed.initialize()
  views = _VIEW.value or _VIEWS.value
  report = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, views, _SEED.value)
  if report:
    print(f"\nLinear probes on frozen latents, held-out states ({_WORKDIR.value}/probe.json):")
    print(f"{'agent':<10} {'class acc':>10} {'(random)':>9} {'pos R^2':>9} {'(random)':>9}")
    for view, r in report.items():
      print(f"{view:<10} {r['trained/class_acc']:>10.3f} {r['random_init/class_acc']:>9.3f} "
            f"{r['trained/position_r2']:>9.3f} {r['random_init/position_r2']:>9.3f}")


if __name__ == "__main__":
  app.run(main)
