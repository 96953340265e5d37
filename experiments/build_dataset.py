r"""Writes the embedded world as a recording: a local tensorflow-datasets dataset of episodes in
the RLDS layout, each view a camera (no download, no TensorFlow).

  python -m experiments.build_dataset --data_dir=data --views=mountain,forest \
      --episode_length=8 --num_train=1000 --num_test=200

Prints the dataset's name and path, its splits, and the command that trains on it; it reads
back like any recording (sjepa_jax/recordings.py, docs/recordings.md). Rerunning with the
same parameters reuses the dataset; other parameters get their own name.
"""

import time

from absl import app
from absl import flags

from experiments import common
from sjepa_jax import recordings
from sjepa_jax import world
from sjepa_jax import world_dataset as dataset

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory to write the dataset into.",
                                required=True)
_VIEWS = common.define_views_flag("views", ",".join(world.VIEWS),
                                  "Comma-separated views to write, each as a camera.")
_LENGTH = flags.DEFINE_integer("episode_length", 8, "Steps per episode (>= 2).")
_SIZE = flags.DEFINE_integer("image_size", 64, "Image height and width in pixels.")
_TRAIN = flags.DEFINE_integer("num_train", 1000, "Episodes in the train split.")
_VALIDATION = flags.DEFINE_integer("num_validation", 100, "Episodes in the validation split.")
_TEST = flags.DEFINE_integer("num_test", 200, "Episodes in the test split.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed; each episode's key is (seed, split, index).")
flags.adopt_module_key_flags(common)  # --traceback (and shared flags) show in --help


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.enable_compilation_cache()
  start = time.perf_counter()
  views = world.parse_views(_VIEWS.value)
  config = dataset.WorldConfig(tuple(views), _LENGTH.value, _SIZE.value, _TRAIN.value,
                               _VALIDATION.value, _TEST.value, _SEED.value)
  path = dataset.build(_DATA_DIR.value, views, episode_length=_LENGTH.value,
                       image_size=_SIZE.value, num_train=_TRAIN.value,
                       num_validation=_VALIDATION.value, num_test=_TEST.value, seed=_SEED.value)
  lay = recordings.layout(config.name, _DATA_DIR.value)
  print(f"{config.name}\n  {path}\n  episodes per split: {lay.splits}; cameras: "
        f"{', '.join(lay.cameras)}; labels: {', '.join(lay.labels)} "
        f"({time.perf_counter() - start:.1f} s)")
  print(f"Train on it: python -m experiments.train --dataset={config.name} "
        f"--data_dir={_DATA_DIR.value} --views={','.join(views)} --workdir=<workdir>")


if __name__ == "__main__":
  common.run(main)
