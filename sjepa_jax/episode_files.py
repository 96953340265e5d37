"""Episodes from arrays on disk, written as a recording (``experiments.import_episodes``).

Three layouts:

- ``.npz``, one file per episode: ``actions`` (T, A) or (T - 1, A) (or ``action``);
  optionally ``reward``, ``discount``, ``is_terminal`` (T,) and ``language_instruction`` (a
  string); every other array is an observation field with T rows: uint8 (T, H, W, 3) arrays
  are cameras, scalars and vectors per step are labels.
- ``.npz``, one file for many episodes: the same arrays with S rows and ``episode`` (S,),
  each row's episode id; an episode's rows are contiguous, episodes in order of first row.
- HDF5 in the robomimic / LIBERO layout: ``data/demo_<i>/obs/<key>`` (cameras and
  low-dimensional states), ``data/demo_<i>/actions``, optionally ``rewards`` and ``dones``
  (-> ``is_terminal``); demos in numerical order, files in the order given; LIBERO's
  ``data`` attribute ``problem_info`` gives the language instruction. Read with h5py, the
  reader those datasets are made with (the ``hdf5`` extra). robomimic's ``states`` (the
  simulator's flat state) and ``mask`` (its filter keys) are not imported.

An episode is read when needed, twice: every episode is checked before anything is written
(``recording_writer.normalise_episode``: missing action or camera, cameras of different frame
counts, NaN or inf, fields that differ between episodes), then read again while writing.
"""

import functools
import glob
import importlib.util
import json
import os
import re
from typing import Any, Callable, NamedTuple, Sequence
import zipfile
import zlib

from absl import logging
import numpy as np

from sjepa_jax import errors
from sjepa_jax import recording_writer
from sjepa_jax import tfds_local

STEP_ARRAYS = {"actions": "action", "action": "action", "reward": "reward",
               "rewards": "reward", "discount": "discount", "is_terminal": "is_terminal",
               "language_instruction": "language_instruction"}
# Markers RLDS computes itself, and the episode index of a many-episode file.
IGNORED = ("is_first", "is_last", "episode")


class EpisodeRef(NamedTuple):
  """Where an episode is (for messages) and how to read it: ``read()`` gives the episode
  dict ``recording_writer.normalise_episode`` takes."""
  where: str
  read: Callable[[], dict]


def find(patterns: Sequence[str], what: str) -> list[str]:
  """Files matching ``patterns`` (paths or globs, ``~`` expanded), in natural order
  (``ep_2`` before ``ep_10``); an error naming a pattern that matches nothing."""
  natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)]
  out = []
  for pattern in patterns:
    found = sorted(glob.glob(os.path.expanduser(pattern)), key=natural)
    if not found:
      raise FileNotFoundError(f"No file matches {pattern!r} ({what}).")
    out += [f for f in found if f not in out]
  return out


def _episode_from_arrays(arrays: dict[str, np.ndarray], source: str) -> dict:
  """An episode dict from named arrays: step fields by name, the rest observations."""
  episode = {"observation": {}, "source": source}
  for k, x in arrays.items():
    if k in IGNORED:
      continue
    if k == "language_instruction":
      episode[k] = str(np.asarray(x).reshape(-1)[0]) if np.size(x) else ""
    elif k in STEP_ARRAYS:
      episode[STEP_ARRAYS[k]] = x
    else:
      episode["observation"][k] = x
  return episode


def _load_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an ``.npz`` file, or a clear error when it is not a readable one."""
  try:
    f = np.load(path, allow_pickle=False)
    if not isinstance(f, np.lib.npyio.NpzFile):
      raise errors.UserError(f"{path} holds a single array, not an .npz of named arrays (write "
                             "one with np.savez(path, actions=..., <camera>=..., ...)).")
    with f:
      return {k: f[k] for k in f.files}
  except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise errors.UserError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}); it may "
                           "be damaged or truncated: write it again with np.savez.") from e
  except ValueError as e:
    if str(e).startswith(path):
      raise
    raise errors.UserError(f"{path} is not a readable .npz file ({e}); it may be damaged or "
                           "truncated, or hold Python objects: write it again with "
                           "np.savez.") from e


def npz_episodes(paths: Sequence[str]) -> list[EpisodeRef]:
  """The episodes of ``.npz`` files: one per file, or (a file with ``episode``) many."""
  refs = []
  for path in paths:
    arrays = _load_npz(path)
    if "episode" not in arrays:
      refs.append(EpisodeRef(path, functools.partial(
          lambda p: _episode_from_arrays(_load_npz(p), p), path)))
      continue
    ids = np.asarray(arrays["episode"]).reshape(-1)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if len(np.unique(ids)) != len(starts):
      raise errors.UserError(f"{path}: the rows of an episode must be contiguous; episode ids "
                             f"repeat after others ({len(starts)} runs of "
                             f"{len(np.unique(ids))} ids).")
    bounds = np.r_[starts, len(ids)]
    for e in range(len(starts)):
      rows = slice(bounds[e], bounds[e + 1])
      refs.append(EpisodeRef(f"{path} episode {ids[starts[e]]}", functools.partial(
          _indexed_episode, path, rows, len(ids))))
  return refs


@functools.lru_cache(maxsize=1)
def _cached_npz(path: str, mtime: int) -> dict[str, np.ndarray]:
  del mtime  # part of the key: a file written again is read again
  return _load_npz(path)


def _indexed_episode(path: str, rows: slice, total: int) -> dict:
  """Rows ``rows`` of every array with ``total`` rows of a many-episode file."""
  arrays = _cached_npz(path, os.stat(path).st_mtime_ns)
  sliced = {k: (x[rows] if np.ndim(x) and len(x) == total else x) for k, x in arrays.items()}
  return _episode_from_arrays(sliced, f"{path} rows {rows.start}:{rows.stop}")


def _h5py():
  if importlib.util.find_spec("h5py") is None:
    raise errors.MissingExtraError(
        "Reading HDF5 recordings (robomimic, LIBERO) needs h5py, which requirements.txt "
        "lists: `pip install -r requirements.txt` (or `pip install h5py`).")
  import h5py  # pylint: disable=g-import-not-at-top
  return h5py


def _read_demo(path: str, demo: str, instruction: str) -> dict:
  """One ``data/<demo>`` group of a robomimic / LIBERO file as an episode dict."""
  h5py = _h5py()
  try:
    with h5py.File(path, "r") as f:
      g = f["data"][demo]
      if "obs" not in g:
        raise errors.UserError(f"{path} data/{demo} has no obs group (keys: {', '.join(g)}).")
      episode = {"observation": {k: np.asarray(v) for k, v in g["obs"].items()
                                 if isinstance(v, h5py.Dataset)},
                 "source": f"{path} data/{demo}"}
      episode["action"] = np.asarray(g["actions"]) if "actions" in g else None
      if "rewards" in g:
        episode["reward"] = np.asarray(g["rewards"])
      if "dones" in g:
        episode["is_terminal"] = np.asarray(g["dones"]).astype(bool)
  except OSError as e:
    raise errors.UserError(f"{path} data/{demo} cannot be read ({e}); the file may be "
                           "damaged.") from e
  if instruction:
    episode["language_instruction"] = instruction
  return episode


def hdf5_episodes(paths: Sequence[str]) -> list[EpisodeRef]:
  """The demos of robomimic / LIBERO HDF5 files, ``data/demo_<i>`` in numerical order."""
  h5py = _h5py()
  refs = []
  for path in paths:
    try:
      with h5py.File(path, "r") as f:
        if "data" not in f:
          raise errors.UserError(f"{path} has no `data` group (keys: {', '.join(f)}): not the "
                                 "robomimic / LIBERO layout (data/demo_<i>/obs/<key>).")
        demos = sorted((k for k in f["data"] if re.fullmatch(r"demo_\d+", k)),
                       key=lambda k: int(k.split("_")[1]))
        instruction = _instruction(f["data"].attrs)
    except OSError as e:
      raise errors.UserError(f"{path} is not a readable HDF5 file ({e}); it may be damaged.") from e
    if not demos:
      raise errors.UserError(f"{path} has no data/demo_<i> groups.")
    refs += [EpisodeRef(f"{path} data/{d}", functools.partial(_read_demo, path, d, instruction))
             for d in demos]
  return refs


def _instruction(attrs: Any) -> str:
  """LIBERO's language instruction (``problem_info`` JSON), or ""."""
  try:
    return str(json.loads(attrs["problem_info"])["language_instruction"]).strip()
  except (KeyError, ValueError, TypeError):
    return ""


# --- Checking and writing ----------------------------------------------------------------

def check(refs: Sequence[EpisodeRef]) -> tuple[dict, dict[str, str], np.ndarray]:
  """Reads and checks every episode before anything is written: returns the first
  (normalised), the fields left out (with why) and each episode's steps."""
  if not refs:
    raise errors.UserError("No episodes to import.")
  first = first_sig = None
  skipped, lengths = {}, []
  for ref in refs:
    episode, left_out = recording_writer.normalise_episode(ref.read(), ref.where)
    skipped.update(left_out)
    sig = recording_writer.signature(episode)
    if first is None:
      first, first_sig = episode, sig
    else:
      recording_writer.check_same_signature(first_sig, sig, refs[0].where, ref.where)
    lengths.append(len(episode["action"]))
  return first, skipped, np.asarray(lengths)


def store(name: str, data_dir: str, refs: Sequence[EpisodeRef], test_episodes: int = 0
          ) -> dict[str, Any]:
  """Checks every episode, then writes them as the recording ``name`` (array_record, atomic);
  the last ``test_episodes`` become the ``test`` split. Returns what was written."""
  tfds_local.check_new_name(name)
  if not 0 <= test_episodes < len(refs):
    raise errors.UserError(f"--test_episodes must be in [0, {len(refs)}) for {len(refs)} episodes, "
                           f"got {test_episodes}.")
  first, skipped, lengths = check(refs)
  cut = len(refs) - test_episodes
  read = lambda chosen: lambda: (recording_writer.normalise_episode(r.read(), r.where)[0]
                                 for r in chosen)
  splits = {"train": read(refs[:cut])}
  if test_episodes:
    splits["test"] = read(refs[cut:])
  path = recording_writer.write(name, data_dir, splits, first,
                          description=f"Imported by sjepa-jax from {refs[0].where} and others.")
  for k, why in skipped.items():
    logging.warning("Observation field %r (%s) left out: neither a camera (uint8 "
                    "(T, H, W, 3)) nor a label (a scalar or vector per step).", k, why)
  return {"path": path, "episodes": {"train": cut, "test": test_episodes},
          "steps": {"train": int(lengths[:cut].sum()), "test": int(lengths[cut:].sum())},
          "skipped": skipped}
