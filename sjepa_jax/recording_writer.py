"""Episodes written as a recording (``recordings`` reads them): checked, normalised and
stored as a local tfds dataset in the RLDS layout, array_record, atomically.

An episode to write is a dict of numpy arrays: ``observation`` {field: (T, ...)} (cameras
uint8 (T, H, W, 3)), ``action`` (T, A), optionally ``reward``, ``discount`` and
``is_terminal`` (T,), ``language_instruction`` (one string) and ``source`` (where it came
from, kept as episode metadata). ``episode_files`` reads such dicts from files.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import PIL.Image

from sjepa_jax import errors
from sjepa_jax import recordings
from sjepa_jax.tfds_local import tfds
from sjepa_jax import tfds_local

if TYPE_CHECKING:
  import tensorflow_datasets


def is_camera_array(x: np.ndarray) -> bool:
  return x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3


def normalise_episode(episode: dict, where: str) -> tuple[dict, dict[str, str]]:
  """One episode checked and made ready to write: actions float32 (T, A) (T - 1 recorded
  actions gain a zero last row: the last step's action is never used), floats float32.
  Returns it and the observation fields left out, with why. Raises naming ``where`` on a
  missing action or camera, cameras of different frame counts, or a NaN or inf."""
  obs = dict(episode.get("observation") or {})
  if episode.get("action") is None:
    raise errors.UserError(f"{where}: no action field (`actions`); agents learn from the recorded "
                           f"actions. Fields: {', '.join(obs) or 'none'}.")
  action = np.asarray(episode["action"])
  if not np.issubdtype(action.dtype, np.number) or action.ndim not in (1, 2):
    raise errors.UserError(f"{where}: actions must be numbers, (T,) or (T, A); got {action.dtype} "
                           f"{action.shape}.")
  skipped = {k: f"{x.dtype}, {x.shape[1:]} per step" for k, x in obs.items()
             if not is_camera_array(x) and (x.ndim > 2 or not (
                 np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_))}
  obs = {k: x for k, x in obs.items() if k not in skipped}
  cameras = [k for k, x in obs.items() if is_camera_array(x)]
  if not cameras:
    fields = ", ".join(f"{k} {x.dtype} {x.shape}" for k, x in obs.items())
    raise errors.UserError(f"{where}: no camera: no observation array is uint8 (T, H, W, 3) "
                           f"(fields: {fields}).")
  lengths = {k: len(x) for k, x in obs.items()}
  steps = lengths[cameras[0]]
  if len(set(lengths.values())) > 1 or len(action) not in (steps, steps - 1):
    raise errors.UserError(f"{where}: fields have different numbers of steps ({lengths}, "
                           f"actions {len(action)}); every camera and state needs one entry per "
                           "step, and actions one per step (or one fewer).")
  if steps < 1:
    raise errors.UserError(f"{where}: the episode has no steps.")
  action = action.reshape(len(action), -1).astype(np.float32)
  if len(action) == steps - 1:
    action = np.concatenate([action, np.zeros_like(action[:1])])
  obs = {k: x if k in cameras else x.astype(np.float32) if np.issubdtype(x.dtype, np.floating)
         else x for k, x in obs.items()}
  states = {k: x for k, x in obs.items() if k not in cameras}
  recordings.check_finite({"action": action, **states}, where)
  out = {**episode, "observation": obs, "action": action}
  for k in ("reward", "discount"):
    if k in out:
      out[k] = np.asarray(out[k], np.float32).reshape(steps)
  return out, skipped


def signature(episode: dict) -> dict[str, tuple]:
  """What every episode of one dataset must share: each field's per-step shape and dtype."""
  sig = {f"observation/{k}": (x.shape[1:], x.dtype.str)
         for k, x in episode["observation"].items()}
  sig["action"] = (episode["action"].shape[1:], "float32")
  sig.update({k: () for k in ("reward", "discount", "is_terminal", "language_instruction")
              if k in episode})
  return sig


def check_same_signature(first: dict, other: dict, where_first: str, where: str) -> None:
  """Raises naming the first field that ``other`` lacks, adds or holds differently."""
  for k in sorted(first.keys() | other.keys()):
    if k not in other:
      raise errors.UserError(f"{where} lacks {k!r}, which {where_first} has (a missing camera or "
                             "field): every episode needs the same cameras and fields.")
    if k not in first:
      raise errors.UserError(f"{where} has {k!r}, which {where_first} lacks: every episode needs "
                             "the same cameras and fields.")
    if first[k] != other[k]:
      raise errors.UserError(f"{where}: {k!r} is {other[k]} per step, but {first[k]} in "
                             f"{where_first}; resize or convert so every episode matches.")


def features(episode: dict) -> tensorflow_datasets.features.FeaturesDict:
  """The RLDS features of episodes shaped like ``episode`` (a normalised one)."""
  tensor = lambda x: tfds.features.Tensor(shape=x.shape[1:], dtype=x.dtype)
  obs = {k: tfds.features.Image(shape=x.shape[1:], encoding_format="png")
         if is_camera_array(x) else tensor(x) for k, x in episode["observation"].items()}
  step = {"observation": tfds.features.FeaturesDict(obs), "action": tensor(episode["action"]),
          "is_first": tfds.features.Scalar(np.bool_), "is_last": tfds.features.Scalar(np.bool_),
          "is_terminal": tfds.features.Scalar(np.bool_)}
  step.update({k: tfds.features.Scalar(np.float32) for k in ("reward", "discount")
               if k in episode})
  if "language_instruction" in episode:
    step["language_instruction"] = tfds.features.Text()
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset(step),
      "episode_metadata": tfds.features.FeaturesDict({"source": tfds.features.Text()})})


def _example(episode: dict) -> dict:
  """An episode as tfds encodes it: a list of step dicts (PIL images: tfds encodes numpy
  images with TensorFlow)."""
  obs, steps = episode["observation"], len(episode["action"])
  terminal = np.asarray(episode.get("is_terminal", np.zeros(steps, bool)), bool).reshape(-1)
  out = []
  for t in range(steps):
    step = {"observation": {k: PIL.Image.fromarray(x[t]) if is_camera_array(x) else x[t]
                            for k, x in obs.items()},
            "action": episode["action"][t], "is_first": t == 0, "is_last": t == steps - 1,
            "is_terminal": bool(terminal[t])}
    step.update({k: episode[k][t] for k in ("reward", "discount") if k in episode})
    if "language_instruction" in episode:
      step["language_instruction"] = str(episode["language_instruction"])
    out.append(step)
  return {"steps": out, "episode_metadata": {"source": str(episode.get("source", ""))}}


def dataset_path(name: str, data_dir: str, version: str = "1.0.0") -> str:
  return os.path.join(data_dir, name, version)


def write(name: str, data_dir: str, splits: dict[str, Callable[[], Iterable[dict]]],
          first: dict, exist_ok: bool = False, description: str = "",
          version: str = "1.0.0") -> str:
  """Writes episodes as a recording in ``data_dir`` (array_record, atomic); returns its path.

  ``splits`` maps a split name to a function giving its episodes (normalised, shaped like
  ``first``), so they are read once, while writing. An existing dataset of that name is an
  error, or (``exist_ok``) is kept as it is.
  """
  tfds_local.check_new_name(name)
  path = dataset_path(name, data_dir, version)
  if os.path.exists(os.path.join(path, "dataset_info.json")):
    if exist_ok:
      return path
    raise FileExistsError(f"Dataset {name!r} already exists at {path}: choose another name, "
                          "or delete that directory to replace it.")
  examples = lambda make: ((i, _example(e)) for i, e in enumerate(make()))
  made = [d for d in (data_dir, os.path.join(data_dir, name)) if not os.path.exists(d)]
  try:
    return tfds_local.write_examples(name, data_dir, features(first),
                                     {s: examples(make) for s, make in splits.items()}, version,
                                     description)
  except BaseException:
    for d in reversed(made):  # tfds removed its temporary directory; nothing else is left
      if os.path.isdir(d) and not os.listdir(d):
        os.rmdir(d)
    raise
