r"""Fits linear maps between trained agents and transfers probes through them, with controls.

  python -m experiments.align_and_probe --workdir=/tmp/sjepa
  python -m experiments.align_and_probe --workdirs=/tmp/sjepa,/tmp/sjepa_ae,/tmp/sjepa_seed1
  python -m experiments.align_and_probe --workdir=/tmp/mnist --pairs=1000 --test_pairs=500

Agents come from the runs' checkpoints: JEPA agents on distinct views are studied pair
by pair; a run trained with ``--config.objective.kind=autoencoder`` on the same views adds
the autoencoder control, and a JEPA run on a view already present (another ``--seed``)
adds the same-view ceiling. Runs on a dataset (``experiments.train --dataset``) pair its
evaluation images, seen through each agent's region, and probe its labels. Writes
``report.json`` and PNG figures (``figures/``) into the first workdir (or ``--out``) and
prints a short table. See sjepa_jax/study.py for what is measured.
"""

import os

from absl import app
from absl import flags

from experiments import common
from sjepa_jax import figures
from sjepa_jax import study

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Several runs' workdirs, comma-separated; "
                              "the report goes into the first.")
_PAIRS = flags.DEFINE_integer("pairs", 4000, "Paired states the maps and probes are fitted on.")
_TEST_PAIRS = flags.DEFINE_integer("test_pairs", 1000, "Held-out paired states they are "
                                   "scored on (never used in fitting).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of the first run (default: latest).")
_OUT = flags.DEFINE_string("out", None, "Where report.json and figures/ go (default: the "
                           "first workdir).")
_SEED = flags.DEFINE_integer("seed", 4321, "Seed of the paired states and the controls.")
_PROBE_STEPS = flags.DEFINE_integer("probe_steps", 500, "Adam steps of the logistic probes.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "For runs on a dataset: the tfds data "
                                "directory holding it (default: the one they trained from).")
flags.register_multi_flags_validator(
    ["workdir", "workdirs"], lambda f: (f["workdir"] is None) != (f["workdirs"] is None),
    message="Give exactly one of --workdir or --workdirs.")


def print_table(report: dict) -> None:
  s = report["summary"]
  print(f"\n{'pair (target->source)':<22}{'overlap':>8}{'R2 lstsq':>9}{'R2 ridge':>9}"
        f"{'R2 Procr':>9}{'gap':>7}{'CKA-u':>7}{'native':>8}{'transfer':>9}")
  for p in report["pairs"]:
    print(f"{p['target'] + '->' + p['source']:<22}{p['overlap']:>8.3f}{p['r2_lstsq']:>9.3f}"
          f"{p['r2_ridge']:>9.3f}{p['r2_procrustes']:>9.3f}{p['isometry_gap']:>7.3f}"
          f"{p['cka_unbiased']:>7.3f}{p['native_acc']:>8.3f}{p['transfer_acc']:>9.3f}")
  print(f"{'mean':<22}{'':>8}{s['r2_lstsq']:>9.3f}{s['r2_ridge']:>9.3f}"
        f"{s['r2_procrustes']:>9.3f}{s['isometry_gap']:>7.3f}{s['cka_unbiased']:>7.3f}"
        f"{s['native_acc']:>8.3f}{s['transfer_acc']:>9.3f}")
  print(f"\nControls, means over pairs (class chance {report['chance_acc']:.3f}):")
  print(f"{'control':<16}{'R2 ridge':>9}{'R2 Procr':>9}{'transfer':>9}{'pos R2 transfer':>16}")
  for name, c in s["controls"].items():
    fmt = lambda k, w: f"{c[k]:>{w}.3f}" if c.get(k) is not None else f"{'-':>{w}}"
    print(f"{name:<16}{fmt('r2_ridge', 9) if 'r2_ridge' in c else fmt('r2_lstsq', 9)}"
          f"{fmt('r2_procrustes', 9)}{fmt('transfer_acc', 9)}{fmt('transfer_position_r2', 16)}")
  print(f"\nGoals {s['goals']}: met {s['goals_met']}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_library_logs()
  common.enable_compilation_cache()
  workdirs = [_WORKDIR.value] if _WORKDIR.value else _WORKDIRS.value
  report, extras = study.run(workdirs, _PAIRS.value, _TEST_PAIRS.value, _SEED.value,
                             _PROBE_STEPS.value, _STEP.value,
                             _DATA_DIR.value and os.path.abspath(
                                 os.path.expanduser(_DATA_DIR.value)))
  out = _OUT.value or workdirs[0]
  os.makedirs(out, exist_ok=True)
  common.write_json(report, os.path.join(out, "report.json"))
  paths = figures.write_all(report, extras, os.path.join(out, "figures"))
  print_table(report)
  print(f"\nWrote {os.path.join(out, 'report.json')} and {len(paths)} figures in "
        f"{os.path.join(out, 'figures')}.")


if __name__ == "__main__":
  app.run(main)
