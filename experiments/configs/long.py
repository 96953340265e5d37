r"""Agents for an accelerator: 64x64 images, a wider two-block mixer, D = 128, 20k steps.

  python -m experiments.train --views=mountain,forest --seeds=0,1,2 --workdir=/tmp/long \
      --config=experiments/configs/long.py

The default recipe (experiments/configs/default.py) is sized for 2 CPU cores; this one is
for an accelerator: four times the pixels, so the smallest objects are resolved, about
four times the compute per step and over ten times the steps. tests/test_train.py runs a
few of its steps on CPU (shapes, checkpoint, resume); docs/performance.md says how its step
scales.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.num_train_steps = 20_000
  c.log_every = 500
  c.checkpoint_every = 2000
  c.data.image_size = 64
  c.model.patch = 8
  c.model.width = 128
  c.model.depth = 2
  c.model.dim = 128
  c.model.predictor_hidden = 256
  c.optim.warmup_steps = 1000
  return c
