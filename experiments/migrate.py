r"""Migration against training from scratch, with controls, compute counted in FLOPs.

  python -m experiments.migrate --teacher_workdir=/work/runs/jepa --teacher_view=forest \
      --student_view=mountain --seeds=0,1 --target_acc=0.6 --workdir=/tmp/migrate \
      [--same_view_seed=2] [--supervised_workdir=/tmp/sup] [--target_from=pilot/report.json]

Trains, in one program, every student of the protocol on ``--student_view`` for each seed
(sjepa_jax/migrate.py ``ROLES``: scratch, migrating, random-init teacher, shuffled pairs,
learned projector; a same-view and a supervised teacher when given), probing each every
``eval_every`` steps. The target is ``--target_acc``, or declared from a pilot report of a
separate seed (``--target_from``, ``migrate.declare_target``). Writes
``<workdir>/seed<k>/report.json`` and ``accuracy_vs_flops.png`` per seed and prints a table.
"""

import json
import os

from absl import app
from absl import flags

from experiments import common
from sjepa_jax import errors
from sjepa_jax import figures
from sjepa_jax import migrate

_CONFIG = common.define_config_flag("experiments/configs/migrate.py",
                                    "Migration budget and settings.")
_TEACHER = flags.DEFINE_string("teacher_workdir", None, "A training run holding the teacher.",
                               required=True)
_TEACHER_VIEW = flags.DEFINE_string("teacher_view", None, "The teacher agent's view (default: "
                                    "the run's first view other than the student's).")
_STUDENT = common.define_views_flag("student_view", None, "The new agent's view.")
_TARGET = flags.DEFINE_float("target_acc", None, "Focal-class probe accuracy to reach, "
                             "declared before the run (or give --target_from).")
_TARGET_FROM = flags.DEFINE_string("target_from", None, "A pilot report.json of a separate seed: "
                                   "the target is declared from its scratch curve.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the reports and figures go.")
_SEEDS = flags.DEFINE_list("seeds", None, "Student seeds, all in one program (default: 0).")
_SEED = flags.DEFINE_integer("seed", None, "One student seed: the same as --seeds=<seed>.")
_TEACHER_SEED = flags.DEFINE_integer("teacher_seed", None, "The teacher's seed, where its run "
                                     "trained its view with several (--seeds).")
_SAME_VIEW_SEED = flags.DEFINE_integer("same_view_seed", None, "A control: the teacher run's "
                                       "agent on the student's view with this seed.")
_SUPERVISED = flags.DEFINE_string("supervised_workdir", None, "A control: a run trained with "
                                  "objective.kind=supervised, same encoder.")
_SUPERVISED_VIEW = flags.DEFINE_string("supervised_view", None, "The supervised teacher's view "
                                       "(default: the teacher's).")
flags.mark_flag_as_required("student_view")
flags.adopt_module_key_flags(common)  # --student_view and --traceback show in --help


def _seeds() -> list[int]:
  if _SEED.value is not None and _SEEDS.value is not None:
    raise errors.UserError("Give --seed or --seeds, not both.")
  if _SEED.value is not None:
    return [_SEED.value]
  try:
    return [int(s) for s in _SEEDS.value or ["0"]]
  except ValueError as e:
    raise errors.UserError(f"--seeds must be integers, comma-separated; got {_SEEDS.value}.") from e


def _target(config, seeds) -> tuple[float, str]:
  """The declared target and its rule, from exactly one of --target_acc, --target_from."""
  if (_TARGET.value is None) == (_TARGET_FROM.value is None):
    raise errors.UserError("Give exactly one of --target_acc (a number in (0, 1]) and "
                           "--target_from (a pilot report.json of a separate seed).")
  if _TARGET.value is not None:
    return _TARGET.value, "given (--target_acc)"
  with open(_TARGET_FROM.value) as f:
    pilot = json.load(f)
  return migrate.target_from_pilot(pilot, seeds, config.migrate.target_fraction)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_library_logs()
  seeds = _seeds()
  plan = migrate.Plan(_TEACHER.value, _STUDENT.value, seeds, _TEACHER_VIEW.value,
                      _TEACHER_SEED.value, _SAME_VIEW_SEED.value, _SUPERVISED.value,
                      _SUPERVISED_VIEW.value)
  target, rule = _target(_CONFIG.value, seeds)
  migrate.validate(_CONFIG.value, target, plan)
  common.enable_compilation_cache()
  student = _STUDENT.value.split(",")[0].strip()
  out = _WORKDIR.value or os.path.join(_TEACHER.value, f"migrate_{student}")
  reports = migrate.run(plan, _CONFIG.value, target, logdir=out)
  for report in reports:
    report = {"command": common.command_line(), "target_rule": rule, **report}
    where = os.path.join(out, f"seed{report['seed']}")
    os.makedirs(where, exist_ok=True)
    common.write_json(report, os.path.join(where, "report.json"))
    figures.accuracy_against_flops(report, os.path.join(where, "accuracy_vs_flops.png"))
    _print(report)
  print(f"Wrote {out}/seed<k>/report.json and accuracy_vs_flops.png.")


def _print(report: dict) -> None:
  fmt = lambda x, d=3: "-" if x is None else f"{x:.{d}g}"
  t = report["timing"]
  print(f"\nseed {report['seed']}: {report['teachers']['trained']['view']} teacher (native class "
        f"{report['teacher_native_acc']:.3f}) -> {report['student_view']}; target "
        f"{report['target_acc']:.3f} ({report['target_rule']}); program "
        f"{t['program_s_per_step']:.3g} s/step, scratch alone "
        f"{fmt(t['scratch_alone_s_per_step'])} s/step")
  print(f"{'student':>18}{'final acc':>10}{'pos R2':>8}{'GFLOP/step':>11}{'to target':>11}"
        f"{'ratio':>7}{'+teacher':>9}{'pays at n':>10}")
  for role, s in report["students"].items():
    print(f"{role:>18}{s['final_acc']:>10.3f}{fmt(s['final_position_r2']):>8}"
          f"{s['flops_per_step'] / 1e9:>11.3f}{fmt(s['flops_to_target']):>11}"
          f"{fmt(s['ratio']):>7}{fmt(s['ratio_with_teacher_training']):>9}"
          f"{fmt(s['pays_after_n_students']):>10}")


if __name__ == "__main__":
  common.run(main)
