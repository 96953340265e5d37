r"""Writes the embedded world as a local tensorflow-datasets dataset (no download).

  python -m experiments.build_dataset --data_dir=data --views=mountain,forest \
      --episode_length=8 --num_train=1000 --num_test=200

Prints the dataset's path; read it back with ``sjepa_jax.world.dataset.load(path, split)``
or ``tfds.builder_from_directory(path).as_data_source()``. Rerunning with the same
parameters reuses the dataset; other parameters get their own directory.
"""

import time

from absl import app
from absl import flags

from experiments import common
from sjepa_jax import world
from sjepa_jax.world import dataset

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory to write the dataset into.",
                                required=True)
_VIEWS = common.define_views_flag("views", "mountain,forest,drone,river",
                                  "Comma-separated views to write.")
_LENGTH = flags.DEFINE_integer("episode_length", 8, "Frames per episode (>= 2).")
_SIZE = flags.DEFINE_integer("image_size", 64, "Image height and width in pixels.")
_TRAIN = flags.DEFINE_integer("num_train", 1000, "Episodes in the train split.")
_VALIDATION = flags.DEFINE_integer("num_validation", 100, "Episodes in the validation split.")
_TEST = flags.DEFINE_integer("num_test", 200, "Episodes in the test split.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed; each episode's key is (seed, split, index).")
flags.adopt_module_key_flags(common)  # --traceback (and shared flags) show in --help


def main(argv):
  del argv
  common.enable_compilation_cache()
  start = time.perf_counter()
  builder = dataset.build(
      _DATA_DIR.value, world.parse_views(_VIEWS.value), episode_length=_LENGTH.value,
      image_size=_SIZE.value, num_train=_TRAIN.value, num_validation=_VALIDATION.value,
      num_test=_TEST.value, seed=_SEED.value)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f"{builder.data_path}\n  splits: {splits}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  common.run(main)
