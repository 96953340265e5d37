r"""Writes labelled image arrays as a local tensorflow-datasets dataset (no download).

  python -m experiments.import_images --npz=digits.npz --name=mnist5k \
      --data_dir=~/tensorflow_datasets --test_size=1500

The ``.npz`` holds ``images`` (N, H, W) or (N, H, W, C), uint8 in [0, 255], and ``labels``
(N,) integers from 0. Examples are shuffled once (``--seed``) and the last ``test_size``
become the ``test`` split, the rest ``train``; test images identical to a train image are
dropped (and counted), so no probe is scored on a training image. Names tfds cannot read
back (not snake_case, or already registered like ``mnist``) are refused before writing.
The result reads back with
``tfds.builder(name, data_dir=...)`` and trains with
``python -m experiments.train --dataset=<name> --data_dir=... --views=left,right``.
"""

import os

from absl import app
from absl import flags
import numpy as np

from experiments import common
from sjepa_jax import errors
from sjepa_jax import images
from sjepa_jax import tfds_local

_NPZ = flags.DEFINE_string("npz", None, "Arrays `images` and `labels`.", required=True)
_NAME = flags.DEFINE_string("name", None, "Dataset name; avoid names tfds already registers "
                            "(mnist, cifar10, ...).", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory to write into.",
                                required=True)
_TEST_SIZE = flags.DEFINE_integer("test_size", 1000, "Examples in the test split.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the one shuffle before splitting.")
flags.adopt_module_key_flags(common)  # --traceback (and shared flags) show in --help


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  """The ``images`` and ``labels`` arrays of an ``.npz`` file, with clear errors."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No such file: {path!r} (--npz).")
  try:
    f = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise errors.UserError(f"{path!r} is not an .npz file numpy can read ({e}); write one with "
                           "np.savez(path, images=..., labels=...).") from e
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise errors.UserError(f"{path!r} holds a single array, not an .npz with `images` and "
                           "`labels`; write one with np.savez(path, images=..., labels=...).")
  with f:
    missing = {"images", "labels"} - set(f.files)
    if missing:
      raise errors.UserError(f"{path} lacks arrays {sorted(missing)}; it has {f.files}.")
    return f["images"], f["labels"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tfds_local.check_new_name(_NAME.value)
  pixels, labels = load_npz(_NPZ.value)
  splits, dropped = images.split_for_import(pixels, labels, _TEST_SIZE.value, _SEED.value)
  path = images.store(_NAME.value, os.path.expanduser(_DATA_DIR.value), splits)
  (train_x, train_y), (test_x, _) = splits["train"], splits["test"]
  print(f"{path}\n  train: {len(train_y)}, test: {len(test_x)} images of {train_x.shape[1:]}, "
        f"{max(int(y.max()) for _, y in splits.values()) + 1} classes")
  if dropped:
    print(f"  dropped {dropped} test images identical to a train image (so no probe is "
          "scored on a training image)")


if __name__ == "__main__":
  common.run(main)
