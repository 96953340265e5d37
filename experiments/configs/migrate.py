r"""Migration budget and settings; the student's model and training come from the teacher.

  python -m experiments.migrate --teacher_workdir=/work/runs/jepa --teacher_view=forest \
      --student_view=mountain --seeds=0,1,2 --target_from=/tmp/pilot/seed9/report.json \
      --workdir=/tmp/migrate

Trains every student of the protocol (scratch, migrating, and the controls:
sjepa_jax/migrate.py ``ROLES``) for ``num_train_steps`` in one program, probing each every
``eval_every`` steps; writes ``seed<k>/report.json`` and ``seed<k>/accuracy_vs_flops.png``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_train_steps = 1500
  c.eval_every = 50  # FLOPs to target are interpolated between probes; dense probes help
  c.time_scratch_steps = 20  # a scratch student alone, timed against the program (0: skip)

  c.migrate = ml_collections.ConfigDict()
  c.migrate.weight = 1.0  # distillation weight beside the JEPA loss (the scratch student: 0)
  c.migrate.map_decay = 0.9  # EMA of the statistics the Procrustes map is refitted from
  # --target_from: the target is this fraction of the way from a pilot scratch curve's
  # first probe to its final accuracy (migrate.declare_target).
  c.migrate.target_fraction = 0.5

  c.eval = ml_collections.ConfigDict()
  c.eval.probe_train = 2000  # held-out states of the student's view for the probes
  c.eval.probe_test = 1000
  c.eval.probe_steps = 500  # most L-BFGS iterations of the class probe; it stops converged
  c.eval.seed = 1234
  return c
