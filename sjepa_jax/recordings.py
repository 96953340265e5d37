"""Multi-camera episode datasets in the RLDS layout: one camera per agent.

A *recording* is a local tensorflow-datasets dataset whose examples are episodes, in the
layout robot datasets use (RLDS: Open X-Embodiment, DROID): an episode has ``steps``; a
step holds an ``observation`` dict, an ``action`` vector and optionally ``is_first``,
``is_last``, ``is_terminal``, ``reward``, ``discount`` and ``language_instruction``.

- **Cameras.** Every uint8 (H, W, 3) field of ``observation`` is a camera; an agent's view
  is one camera, named by its key (``--views=image,wrist_image``).
- **Samples.** An agent's sample is ``frames`` steps of one episode, ``stride`` apart, seen
  by its camera (every window equally likely), with the recorded actions between them
  (step t's action leads to step t + 1; the last step's is never used), normalised per
  dimension with the train split's mean and std (a constant dimension is only centred).
- **Labels:** other observation fields; integer or bool scalars are classes, other numeric
  scalars and vectors values (ridge, R^2); text and higher-rank arrays are not probed.
- **Splits are by episode, never by step:** the eval split (``test``) when the dataset has
  it, else the last ``holdout_fraction`` of train's episodes.
- **Frames** of another size are resized to ``image_size`` x ``image_size`` when loaded
  (PIL bilinear, antialiased), a non-square one stretched (whole field of view, not its
  aspect ratio). ``flip`` turns frames stored upside down (``upside_down``: rows reversed,
  as robosuite renders; ``rotate180``: rows and columns, as LIBERO's copies) right way up.
- **On the device** (``OnDevice``) a split is its frames (C, S, size, size, 3) uint8
  (S x C x size^2 x 3 bytes), actions and window starts; ``batch`` gathers by index.
Read through ``tfds_local``, written by ``recording_writer``; nothing ever downloads.

Shapes: C = cameras, S = steps of a split (its episodes end to end), E = episodes, T = steps
of one episode, K = window starts, A = action size, B = batch, L = frames per sample.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Sequence

from absl import logging
from google.protobuf import message
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from sjepa_jax import errors
from sjepa_jax import names as names_lib
from sjepa_jax.tfds_local import tfds
from sjepa_jax import tfds_local

if TYPE_CHECKING:
  import tensorflow_datasets
FLIPS = ("none", "upside_down", "rotate180")


# --- What a recording holds --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
  """What a recording holds, read from its features alone (no episode is read)."""
  name: str
  cameras: tuple[str, ...]  # in the dataset's order
  frame_shapes: dict[str, tuple]  # camera -> (H, W, 3); None where the size varies
  action_dim: int
  labels: dict[str, str]  # observation field -> "class" or "value"
  num_classes: dict[str, int]  # ClassLabel fields' class counts
  skipped: dict[str, str]  # other observation fields, and why no probe reads them
  splits: dict[str, int]  # split -> episodes
  file_format: str


def _is_camera(feature) -> bool:
  shape = tuple(feature.shape)
  return (isinstance(feature, (tfds.features.Image, tfds.features.Tensor))
          and len(shape) == 3 and shape[-1] == 3 and np.dtype(feature.np_dtype) == np.uint8)


def _label_kind(feature) -> tuple[str | None, str]:
  """("class" | "value", "") for a field probes read, else (None, why not)."""
  if isinstance(feature, tfds.features.ClassLabel):
    return "class", ""
  dtype = np.dtype(feature.np_dtype) if isinstance(feature, tfds.features.Tensor) else None
  numeric = dtype is not None and (np.issubdtype(dtype, np.number) or dtype == np.bool_)
  if not numeric:
    return None, f"not numeric ({type(feature).__name__})"
  shape = tuple(feature.shape)
  if len(shape) > 1 or None in shape:
    return None, f"shape {shape}: probes read scalars and vectors"
  integer = np.issubdtype(dtype, np.integer) or dtype == np.bool_
  return ("class" if integer and not shape else "value"), ""


def is_recording(name: str, data_dir: str) -> bool:
  """Whether ``name`` in ``data_dir`` is a prepared dataset of episodes (``steps``); a
  dataset that cannot be opened there raises, saying where it was looked for. Without a
  ``data_dir`` nothing is read (a dataset's images handed over in memory): False."""
  if not data_dir:
    return False
  features = tfds_local.builder(name, data_dir).info.features
  return "steps" in features.keys() and isinstance(features["steps"], tfds.features.Dataset)


def layout(name: str, data_dir: str) -> Layout:
  """The cameras, action size, labels and splits of the recording ``name``."""
  b = tfds_local.builder(name, data_dir)
  features = b.info.features
  steps = features["steps"] if "steps" in features.keys() else None
  if not isinstance(steps, tfds.features.Dataset):
    raise errors.UserError(f"Dataset {name!r} is not a recording: its examples have no `steps` "
                           f"(features: {', '.join(features.keys())}).")
  step = steps.feature
  if "observation" not in step.keys() or not isinstance(step["observation"],
                                                        tfds.features.FeaturesDict):
    raise errors.UserError(f"Recording {name!r} has no `observation` dict in its steps (step "
                           f"fields: {', '.join(step.keys())}).")
  if "action" not in step.keys():
    raise errors.UserError(f"Recording {name!r} has no `action` field in its steps (step fields: "
                           f"{', '.join(step.keys())}); agents learn from the recorded actions.")
  action = step["action"]
  if not isinstance(action, tfds.features.Tensor) or len(action.shape) > 1 or not (
      np.issubdtype(np.dtype(action.np_dtype), np.number)):
    raise errors.UserError(f"Recording {name!r}: `action` must be a numeric scalar or vector "
                           f"per step, got {type(action).__name__} of shape "
                           f"{getattr(action, 'shape', '?')}.")
  cameras, shapes, labels, num_classes, skipped = [], {}, {}, {}, {}
  for key, f in step["observation"].items():
    if _is_camera(f):
      cameras.append(key)
      shapes[key] = tuple(f.shape)
      continue
    kind, why = _label_kind(f)
    if kind is None:
      skipped[key] = why
    else:
      labels[key] = kind
      if isinstance(f, tfds.features.ClassLabel):
        num_classes[key] = f.num_classes
  if not cameras:
    raise errors.UserError(f"Recording {name!r} has no camera: no observation field is uint8 "
                           f"(H, W, 3) (fields: {', '.join(step['observation'].keys())}).")
  # Sorted: tfds does not keep the order fields were written in.
  labels = dict(sorted(labels.items()))
  return Layout(name, tuple(sorted(cameras)), shapes, int(np.prod(action.shape)), labels,
                num_classes, skipped, {s: i.num_examples for s, i in b.info.splits.items()},
                b.info.file_format.value)


def parse_cameras(names: str | Sequence[str], lay: Layout) -> list[str]:
  """Checks camera names (comma-separated or a list) against the recording: known, distinct."""
  def check(name):
    if name not in lay.cameras:
      raise errors.UserError(f"Unknown camera {name!r} in recording {lay.name!r}; cameras found: "
                             f"{', '.join(lay.cameras)}.")
  return names_lib.parse_names(names, check, ", ".join(lay.cameras))


def select_labels(lay: Layout, names: str | Sequence[str]) -> list[str]:
  """The fields probes read: ``names`` (comma-separated or a list) checked, or all."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  if not names:
    return list(lay.labels)
  for n in names:
    if n not in lay.labels:
      why = (f" ({lay.skipped[n]})" if n in lay.skipped else
             " (a camera)" if n in lay.cameras else "")
      raise errors.UserError(f"Recording {lay.name!r} has no probe label {n!r}{why}; labels: "
                             f"{', '.join(lay.labels) or 'none'} (data.labels).")
  return list(dict.fromkeys(names))


# --- Splits ------------------------------------------------------------------------------

class Part(NamedTuple):
  """Episodes [start, stop) of one split of a recording."""
  split: str
  start: int
  stop: int

  def __str__(self) -> str:
    return f"{self.split}[{self.start}:{self.stop}]"


def parts(lay: Layout, train_split: str, eval_split: str, holdout_fraction: float
          ) -> dict[str, Part]:
  """The episodes that train and those that evaluate: {"train": Part, "eval": Part}.

  The eval split when the recording has it; else the last ``holdout_fraction`` of the
  train split's episodes (rounded up), which then do not train.
  """
  if train_split not in lay.splits:
    raise errors.UserError(f"Recording {lay.name!r} has no split {train_split!r}; splits: "
                           f"{', '.join(sorted(lay.splits))} (data.train_split).")
  n = lay.splits[train_split]
  if eval_split in lay.splits:
    out = {"train": Part(train_split, 0, n), "eval": Part(eval_split, 0, lay.splits[eval_split])}
  else:
    held = int(np.ceil(holdout_fraction * n))
    if not 0 < held < n:
      raise errors.UserError(f"Recording {lay.name!r} has no {eval_split!r} split, and holding out "
                             f"{holdout_fraction} of its {n} {train_split!r} episodes leaves "
                             f"{n - held} to train and {held} to evaluate: set "
                             "data.holdout_fraction in (0, 1) so both have episodes, or import "
                             "more episodes.")
    out = {"train": Part(train_split, 0, n - held), "eval": Part(train_split, n - held, n)}
  for role, p in out.items():
    if p.stop <= p.start:
      raise errors.UserError(f"Recording {lay.name!r}: the {role} episodes ({p}) are an empty "
                             "split.")
  return out


# --- Reading a split into memory ---------------------------------------------------------

class Options(NamedTuple):
  """How a run reads a recording (from its config's ``data`` fields)."""
  image_size: int
  frames: int  # steps one training sample covers (``span``): shorter train episodes are skipped
  flip: str = "none"
  labels: str | Sequence[str] = ""  # the fields probes read; empty: every label field
  train_split: str = "train"
  eval_split: str = "test"
  holdout_fraction: float = 0.2


@dataclasses.dataclass(frozen=True)
class Recording:
  """One part of a recording in host memory: its episodes' steps end to end."""
  name: str
  part: Part
  cameras: tuple[str, ...]  # the loaded cameras, in the order of ``frames``
  frames: np.ndarray  # (C, S, size, size, 3) uint8
  actions: np.ndarray  # (S, A) float32: normalised (train) or as recorded (eval)
  offsets: np.ndarray  # (E + 1,) where each kept episode starts in S, then S
  episodes: np.ndarray  # (E,) each kept episode's index in its split
  starts: np.ndarray  # (K,) steps where ``frames`` consecutive steps of one episode begin
  labels: dict[str, np.ndarray]  # each (S, ...)
  num_classes: dict[str, int]  # the class labels' class counts
  action_mean: np.ndarray | None  # (A,) train statistics; None for an eval part
  action_std: np.ndarray | None
  skipped_short: int  # episodes left out for having fewer than ``frames`` steps

  @property
  def num_steps(self) -> int:
    return self.frames.shape[1]

  def summary(self) -> dict[str, Any]:
    """Episodes, steps and (train) action statistics: what a report states."""
    out = {"episodes": int(len(self.episodes)), "steps": int(self.num_steps),
           "part": str(self.part), "skipped_short_episodes": self.skipped_short}
    if self.action_mean is not None:
      out.update(windows=int(len(self.starts)), action_mean=self.action_mean.tolist(),
                 action_std=self.action_std.tolist())
    return out


def _episodes(b: tensorflow_datasets.core.DatasetBuilder, part: Part
              ) -> Iterator[tuple[int, Iterable]]:
  """(index in the split, its steps) of every episode of ``part``: array_record files read
  directly, without TensorFlow; tfrecord files (what `tfds build` writes by default)
  through tf.data."""
  if tfds_local.is_array_record(b):
    source = b.as_data_source(split=part.split)
    for i in range(part.start, part.stop):
      yield i, source[i]["steps"]
    return
  episodes = tfds_local.as_numpy(b, f"{part.split}[{part.start}:{part.stop}]",
                                 "experiments.import_episodes")
  for i, episode in enumerate(episodes, part.start):
    yield i, episode["steps"]


def _stack(steps: Iterable, cameras: Sequence[str], labels: Sequence[str]
           ) -> dict[str, Any]:
  """One episode's camera frames (a list each: their size may vary), and its labels and
  ``action`` stacked (T, ...)."""
  out = {k: [] for k in (*cameras, *labels, "action")}
  for s in steps:
    for k in (*cameras, *labels):
      out[k].append(s["observation"][k])
    out["action"].append(np.reshape(s["action"], -1))
  return {k: v if k in cameras else np.stack(v) if v else np.zeros((0,))
          for k, v in out.items()}


def prepare_frames(frames: Sequence[np.ndarray], size: int, flip: str = "none") -> np.ndarray:
  """Frames (each (H, W, 3) uint8) turned the right way up (``flip``) and resized to
  (T, size, size, 3) uint8: PIL bilinear, antialiased when shrinking; a non-square frame is
  stretched to the square."""
  if flip not in FLIPS:
    raise errors.UserError(f"Unknown flip {flip!r}; valid: {', '.join(FLIPS)} (data.flip).")

  def one(f):
    f = f[::-1] if flip == "upside_down" else f[::-1, ::-1] if flip == "rotate180" else f
    if f.shape[:2] != (size, size):
      f = PIL.Image.fromarray(np.ascontiguousarray(f)).resize(
          (size, size), PIL.Image.Resampling.BILINEAR)
    return np.asarray(f, np.uint8)
  return np.stack([one(np.asarray(f)) for f in frames]) if len(frames) else np.zeros(
      (0, size, size, 3), np.uint8)


def check_finite(arrays: dict[str, np.ndarray], where: str) -> None:
  """Raises naming the field and step of the first NaN or inf in float ``arrays`` (T, ...)."""
  bad = errors.first_nonfinite(arrays)
  if bad is not None:
    raise errors.UserError(f"{where}: {bad[0]!r} holds a NaN or inf at step {bad[1]}; agents "
                           "and probes need finite actions and states: fix or drop that episode.")


# What a damaged file raises from deep inside tfds, array_record and protobuf.
_READ_ERRORS = (RuntimeError, ValueError, OSError, TypeError, EOFError, message.DecodeError)


def _read(b, lay: Layout, part: Part, cameras: Sequence[str], labels: Sequence[str],
          options: Options, min_steps: int):
  """Every kept episode of ``part`` as (index, frames per camera, action, labels), and how
  many were shorter than ``min_steps``."""
  kept, short = [], 0
  episodes = _episodes(b, part)
  while True:
    try:
      i, steps = next(episodes)
      arrays = _stack(steps, cameras, labels)
    except StopIteration:
      break
    except errors.UserError:  # ours (a missing extra): already says what to do
      raise
    except _READ_ERRORS as e:
      raise errors.UserError(f"Recording {lay.name!r} cannot be read at {part} "
                             f"({type(e).__name__}: {e}); a file may be damaged: rebuild or "
                             "re-import it.") from e
    length = len(arrays["action"])
    if length < max(min_steps, 1):
      short += 1
      continue
    where = f"Recording {lay.name!r}, episode {i} of split {part.split!r}"
    check_finite({"action": arrays["action"], **{k: arrays[k] for k in labels}}, where)
    frames = [prepare_frames(arrays[c], options.image_size, options.flip) for c in cameras]
    kept.append((i, frames, arrays["action"].astype(np.float32),
                 {k: arrays[k] for k in labels}))
  return kept, short


def _label_arrays(values: dict[str, np.ndarray], lay: Layout, where: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """Class labels as int32 with their class counts, value labels as float32; labels that
  never change over the part are dropped (no probe can score them), saying so."""
  out, num_classes = {}, {}
  for k, x in values.items():
    kind = lay.labels[k]
    if kind == "class" and x.min() < 0:
      kind = "value"  # class ids count from 0; anything else is a value
    if np.all(x == x[:1]):
      logging.warning("%s: label %r never changes (%s); not probed.", where, k, x[0])
      continue
    if kind == "class":
      out[k] = x.astype(np.int32)
      num_classes[k] = max(lay.num_classes.get(k, 0), int(x.max()) + 1)
    else:
      out[k] = x.astype(np.float32)
  return out, num_classes


def load(name: str, data_dir: str, role: str, cameras: Sequence[str], options: Options
         ) -> Recording:
  """The ``role`` part (``train`` or ``eval``, see ``parts``) of a recording in memory:
  ``cameras``' frames at ``options.image_size``, its actions (train: normalised) and labels.

  Train episodes shorter than ``options.frames`` are skipped and counted. Raises, naming
  the episode and field, on a NaN or inf in an action or label, and when no episode is left.
  """
  if role not in ("train", "eval"):
    raise errors.UserError(f"Unknown role {role!r}; valid: train, eval.")
  lay = layout(name, data_dir)
  cameras = parse_cameras(cameras, lay)
  label_names = select_labels(lay, options.labels)
  part = parts(lay, options.train_split, options.eval_split, options.holdout_fraction)[role]
  min_steps = options.frames if role == "train" else 1
  kept, short = _read(tfds_local.builder(name, data_dir), lay, part, cameras, label_names, options,
                      min_steps)
  if not kept:
    raise errors.UserError(f"No episode of recording {name!r} ({part}) has {min_steps} steps or "
                           f"more: all {short} are shorter. Lower data.frames (the steps of one "
                           "training sample) or record longer episodes.")
  lengths = np.asarray([len(k[2]) for k in kept])
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  frames = np.stack([np.concatenate([k[1][c] for k in kept]) for c in range(len(cameras))])
  actions = np.concatenate([k[2] for k in kept])
  starts = np.concatenate([o + np.arange(n - options.frames + 1)
                           for o, n in zip(offsets, lengths) if n >= options.frames]
                          or [np.zeros(0, int)]).astype(np.int32)
  mean = std = None
  if role == "train":
    used = np.concatenate([k[2][:-1] for k in kept])  # the last step's action leads nowhere
    mean, std = used.mean(0), used.std(0)
    std = np.where(std > 1e-6 * max(1.0, float(np.abs(mean).max())), std, 1.0)
    actions = ((actions - mean) / std).astype(np.float32)
  labels, num_classes = _label_arrays(
      {k: np.concatenate([e[3][k] for e in kept]) for k in label_names}, lay,
      f"Recording {name!r} ({part})")
  recording = Recording(name, part, tuple(cameras), frames, actions, offsets.astype(np.int64),
                        np.asarray([k[0] for k in kept]), starts, labels, num_classes,
                        mean, std, short)
  logging.info("Recording %s, %s part %s: %s", name, role, part, recording.summary())
  return recording


# --- On the device -----------------------------------------------------------------------

class OnDevice(NamedTuple):
  """A train part on the device: what the jitted step indexes (the role a dataset's images
  play for region views)."""
  frames: jax.Array  # (C, S, H, W, 3) uint8
  actions: jax.Array  # (S, A) float32
  starts: jax.Array  # (K,) int32


def on_device(recording: Recording) -> OnDevice:
  return OnDevice(jnp.asarray(recording.frames), jnp.asarray(recording.actions),
                  jnp.asarray(recording.starts, jnp.int32))


def batch(key: jax.Array, source: OnDevice, camera: jax.Array, batch_size: int, frames: int,
          stride: int = 1) -> tuple[jax.Array, jax.Array]:
  """``batch_size`` random windows of ``frames`` steps of one episode, ``stride`` steps
  apart, seen by ``camera`` (an index into ``source.frames``), with the action between two
  of them (their mean): obs (B, L, H, W, 3) float32 in [0, 1], actions (B, L - 1, A);
  ``source.starts`` hold windows of ``span(frames, stride)`` steps. Works traced."""
  pick = jax.random.randint(key, (batch_size,), 0, source.starts.shape[0])
  start_B = source.starts[pick]
  obs = source.frames[camera, start_B[:, None] + stride * jnp.arange(frames)]
  acted = source.actions[start_B[:, None] + jnp.arange((frames - 1) * stride)]
  actions = acted.reshape(batch_size, frames - 1, stride, -1).mean(2)
  return obs.astype(jnp.float32) / 255.0, actions


def span(frames: int, stride: int) -> int:
  """Steps one training sample covers: ``frames`` frames ``stride`` steps apart."""
  return (frames - 1) * stride + 1


def paired_steps(recording: Recording, key: jax.Array, num: int) -> np.ndarray:
  """``num`` steps (indices into the part's S) for paired states: whole episodes in a random
  order, each episode's steps in order, so rows split early and late share at most one
  episode."""
  order = np.asarray(jax.random.permutation(key, len(recording.episodes)))
  o = recording.offsets
  return np.concatenate([np.arange(o[e], o[e + 1]) for e in order])[:num]


def paired_obs(recording: Recording, cameras: np.ndarray, steps: np.ndarray) -> jax.Array:
  """The same steps seen by each camera (``cameras``: indices into the loaded cameras, one
  per agent, repeats allowed): (A, N, H, W, 3) float32 in [0, 1]."""
  pixels = recording.frames[np.asarray(cameras)[:, None], np.asarray(steps)[None, :]]
  return jnp.asarray(pixels).astype(jnp.float32) / 255.0
