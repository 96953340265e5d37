r"""Migration budget and settings; the student's model and training come from the teacher.

  python -m experiments.migrate --teacher_workdir=/tmp/sjepa --student_view=forest \
      --target_acc=0.85

Trains a scratch and a migrating student for ``num_train_steps`` each (the default
teacher's own budget) and probes both every ``eval_every`` steps.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_train_steps = 1500
  c.eval_every = 100

  c.migrate = ml_collections.ConfigDict()
  c.migrate.weight = 1.0  # distillation weight beside the JEPA loss (0: a scratch student)
  c.migrate.map_decay = 0.9  # EMA of the statistics the Procrustes map is refitted from

  c.eval = ml_collections.ConfigDict()
  c.eval.probe_train = 2000  # held-out states of the student's view for the probes
  c.eval.probe_test = 1000
  c.eval.probe_steps = 500  # most L-BFGS iterations of the class probe; it stops converged
  c.eval.seed = 1234
  return c
