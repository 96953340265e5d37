r"""A run of about a minute on CPU: tiny model, few steps, small evaluation.

  python -m experiments.train --views=mountain,forest --workdir=/tmp/smoke \
      --config=experiments/configs/smoke.py
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.num_train_steps = 60
  c.log_every = 20
  c.checkpoint_every = 30
  c.model.dim = 32
  c.model.width = 32
  c.model.depth = 1
  c.model.predictor_hidden = 64
  c.data.batch_size = 16
  c.data.image_size = 32
  c.optim.warmup_steps = 10
  c.eval.probe_train = 256
  c.eval.probe_test = 128
  c.eval.alignment_pairs = 64
  c.eval.probe_steps = 100
  return c
