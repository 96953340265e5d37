r"""Migration against training from scratch, with compute counted in FLOPs.

  python -m experiments.migrate --teacher_workdir=/tmp/sjepa --student_view=forest \
      --target_acc=0.85 [--teacher_view=mountain] [--config.num_train_steps=600]

Trains two students on ``--student_view`` from the same initial parameters and the same
batches, one from scratch and one that also distils the frozen teacher through a
refitted Procrustes map (sjepa_jax/migrate.py), probing both every ``eval_every`` steps.
Writes ``report.json`` (FLOPs to reach ``--target_acc`` for each and their ratio; null
where a run never reaches it) and ``accuracy_vs_flops.png`` into ``--workdir`` (default:
``<teacher_workdir>/migrate_<student_view>``) and prints the curves.
"""

import os

from absl import app
from absl import flags

from experiments import common
from sjepa_jax import figures
from sjepa_jax import migrate

_CONFIG = common.define_config_flag("experiments/configs/migrate.py",
                                    "Migration budget and settings.")
_TEACHER = flags.DEFINE_string("teacher_workdir", None, "A training run holding the teacher.",
                               required=True)
_TEACHER_VIEW = flags.DEFINE_string("teacher_view", None, "The teacher agent's view (default: "
                                    "the run's first view other than the student's).")
_STUDENT = common.define_views_flag("student_view", None, "The new agent's view.")
_TARGET = flags.DEFINE_float("target_acc", 0.85, "Focal-class probe accuracy to reach.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the report and figure go.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the students' keys (shared by both).")
_TEACHER_SEED = flags.DEFINE_integer("teacher_seed", None, "The teacher's seed, where its run "
                                     "trained its view with several (--seeds).")
flags.mark_flag_as_required("student_view")
flags.adopt_module_key_flags(common)  # --student_view and --traceback show in --help


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_library_logs()
  common.enable_compilation_cache()
  student = _STUDENT.value.split(",")[0].strip()
  out = _WORKDIR.value or os.path.join(_TEACHER.value, f"migrate_{student}")
  report = migrate.run(_TEACHER.value, _TEACHER_VIEW.value, _STUDENT.value, _CONFIG.value,
                       _TARGET.value, _SEED.value, _TEACHER_SEED.value, logdir=out)
  report = {"command": common.command_line(), **report}
  os.makedirs(out, exist_ok=True)
  common.write_json(report, os.path.join(out, "report.json"))
  figures.accuracy_against_flops(report, os.path.join(out, "accuracy_vs_flops.png"))
  print(f"\nteacher {report['teacher_view']} -> student {report['student_view']}; GFLOPs per "
        f"step: scratch {report['flops_per_step']['scratch'] / 1e9:.2f}, migrate "
        f"{report['flops_per_step']['migrate'] / 1e9:.2f}")
  print(f"{'step':>6}{'scratch acc':>13}{'migrate acc':>13}{'scratch pos R2':>16}"
        f"{'migrate pos R2':>16}")
  for s, m in zip(report["curves"]["scratch"], report["curves"]["migrate"]):
    print(f"{s['step']:>6}{s['class_acc']:>13.3f}{m['class_acc']:>13.3f}"
          f"{s['position_r2']:>16.3f}{m['position_r2']:>16.3f}")
  fmt = lambda x: "never reached" if x is None else f"{x:.3g}"
  print(f"\nTo class accuracy {report['target_acc']}: FLOPs scratch {fmt(report['flops_scratch'])}"
        f", migrate {fmt(report['flops_migrate'])}, ratio {fmt(report['ratio'])} (the "
        f"teacher's own training, {report['teacher_training_flops']:.3g} FLOPs, not counted; "
        f"counted once: {fmt(report.get('ratio_with_teacher_training'))})")
  post = report["at_scratch_final_acc"]
  print(f"To the scratch student's final accuracy {post['target_acc']:.3f} (chosen after the "
        f"fact): ratio {fmt(post['ratio'])}")
  print(f"Wrote {os.path.join(out, 'report.json')} and accuracy_vs_flops.png.")


if __name__ == "__main__":
  common.run(main)
