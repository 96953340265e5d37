r"""Writes labelled image arrays as a local tensorflow-datasets dataset (no download).

  python -m experiments.import_images --npz=digits.npz --name=mnist5k \
      --data_dir=~/tensorflow_datasets --test_size=1500

The ``.npz`` holds ``images`` (N, H, W) or (N, H, W, C), uint8 in [0, 255], and ``labels``
(N,) integers from 0. Examples are shuffled once (``--seed``) and the last ``test_size``
become the ``test`` split, the rest ``train``. The result reads back with
``tfds.builder(name, data_dir=...)`` and trains with
``python -m experiments.train --dataset=<name> --data_dir=... --views=left,right``.
"""

import os

from absl import app
from absl import flags
import numpy as np

from sjepa_jax import images

_NPZ = flags.DEFINE_string("npz", None, "Arrays `images` and `labels`.", required=True)
_NAME = flags.DEFINE_string("name", None, "Dataset name; avoid names tfds already registers "
                            "(mnist, cifar10, ...).", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory to write into.",
                                required=True)
_TEST_SIZE = flags.DEFINE_integer("test_size", 1000, "Examples in the test split.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the one shuffle before splitting.")


def main(argv):
  del argv
  with np.load(os.path.expanduser(_NPZ.value)) as f:
    missing = {"images", "labels"} - set(f.files)
    if missing:
      raise app.UsageError(f"{_NPZ.value} lacks arrays {sorted(missing)}; it has {f.files}.")
    pixels, labels = f["images"], f["labels"]
  if pixels.ndim not in (3, 4) or len(pixels) != len(labels):
    raise app.UsageError(f"images must be (N, H, W[, C]) with one label each; got "
                         f"{pixels.shape} and {labels.shape}.")
  if not 0 < _TEST_SIZE.value < len(labels):
    raise app.UsageError(f"--test_size must be in (0, {len(labels)}), got {_TEST_SIZE.value}.")
  if not np.issubdtype(pixels.dtype, np.integer) or pixels.min() < 0 or pixels.max() > 255:
    raise app.UsageError(f"images must be integers in [0, 255]; got {pixels.dtype} in "
                         f"[{pixels.min()}, {pixels.max()}] (scale floats in [0, 1] by 255).")
  if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
    raise app.UsageError(f"labels must be integers from 0; got {labels.dtype} from "
                         f"{labels.min()}.")
  order = np.random.default_rng(_SEED.value).permutation(len(labels))
  pixels, labels = pixels[order].astype(np.uint8), labels[order].astype(np.int64)
  cut = len(labels) - _TEST_SIZE.value
  path = images.store(_NAME.value, os.path.expanduser(_DATA_DIR.value),
                      {"train": (pixels[:cut], labels[:cut]),
                       "test": (pixels[cut:], labels[cut:])})
  print(f"{path}\n  train: {cut}, test: {_TEST_SIZE.value} images of {pixels.shape[1:]}, "
        f"{labels.max() + 1} classes")


if __name__ == "__main__":
  app.run(main)
