r"""Writes multi-camera episodes a user has as arrays as a recording (no download).

  python -m experiments.import_episodes --npz='recordings/pushing/ep_*.npz' --name=pushing \
      --data_dir=~/tensorflow_datasets [--test_episodes=30]
  python -m experiments.import_episodes --hdf5='libero_spatial/*.hdf5' --name=libero_spatial \
      --data_dir=~/tensorflow_datasets  # robomimic / LIBERO layout (h5py)

The layouts (sjepa_jax/episode_files.py, docs/recordings.md): an ``.npz`` per episode
(``actions`` and observation arrays with one row per step; uint8 (T, H, W, 3) arrays are
cameras), one ``.npz`` with an ``episode`` index, or HDF5 files with
``data/demo_<i>/obs/<key>`` and ``data/demo_<i>/actions``. Every episode is checked before
anything is written (a bad one is named, and nothing is left behind); the write is atomic.
The last ``--test_episodes`` become the ``test`` split; without one, training holds out the
last episodes (``config.data.holdout_fraction``). Then train one agent per camera with
``python -m experiments.train --dataset=<name> --data_dir=... --views=<camera>,<camera>``.
"""

import os
import time

from absl import app
from absl import flags

from experiments import common
from sjepa_jax import episode_files
from sjepa_jax import recordings

_NPZ = flags.DEFINE_list("npz", None, ".npz files or globs (quoted), comma-separated.")
_HDF5 = flags.DEFINE_list("hdf5", None, "HDF5 files or globs (robomimic / LIBERO layout).")
_NAME = flags.DEFINE_string("name", None, "Dataset name (snake_case; not one tfds "
                            "registers).", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory to write into.",
                                required=True)
_TEST = flags.DEFINE_integer("test_episodes", 0, "The last this many episodes become the "
                             "test split (0: none; training then holds out the last "
                             "episodes of train).")
flags.register_multi_flags_validator(
    ["npz", "hdf5"], lambda f: (f["npz"] is None) != (f["hdf5"] is None),
    message="Give exactly one of --npz or --hdf5.")
flags.adopt_module_key_flags(common)  # --traceback (and shared flags) show in --help


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  start = time.perf_counter()
  data_dir = os.path.expanduser(_DATA_DIR.value)
  if _NPZ.value:
    refs = episode_files.npz_episodes(episode_files.find(_NPZ.value, "--npz"))
  else:
    refs = episode_files.hdf5_episodes(episode_files.find(_HDF5.value, "--hdf5"))
  written = episode_files.store(_NAME.value, data_dir, refs, _TEST.value)
  lay = recordings.layout(_NAME.value, data_dir)
  print(f"{written['path']}  ({time.perf_counter() - start:.1f} s)")
  for split, n in written["episodes"].items():
    if n:
      print(f"  {split}: {n} episodes, {written['steps'][split]} steps")
  print(f"  cameras: {', '.join(f'{c} {lay.frame_shapes[c]}' for c in lay.cameras)}; "
        f"action size {lay.action_dim}")
  print(f"  labels: {', '.join(f'{k} ({v})' for k, v in lay.labels.items()) or 'none'}")
  for k, why in written["skipped"].items():
    print(f"  left out {k} ({why}): neither a camera nor a label")
  print(f"Train on it: python -m experiments.train --dataset={_NAME.value} "
        f"--data_dir={data_dir} --views={','.join(lay.cameras)} --workdir=<workdir>")


if __name__ == "__main__":
  common.run(main)
