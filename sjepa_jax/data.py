"""Batches for agents, made on the device inside the step, from one of three sources.

- The embedded world (the default): each agent renders its own episodes from its own view.
- A labelled image dataset read through tensorflow-datasets (``config.data.dataset``): each
  agent sees a fixed region of the images (``sjepa_jax.images``).
- A recording (``config.data.dataset`` names a dataset of episodes, ``sjepa_jax.recordings``):
  each agent sees one camera, with the recorded actions.

A dataset's split is loaded once (``load_images``) and its train split placed on the device
(``on_device``: a dataset's images, a recording's frames, actions and window starts): the
sampler indexes it inside the jitted step.

Each agent draws its own samples (its own key) and sees them only through its own view:
agents share the source's rules, never data. A fixed *paired* set (the same states or
images seen from every view) serves evaluation only: probes and cross-agent alignment.

Shapes: A = agents, B = batch, L = frames per sample, N = paired states.
"""

import copy
import json
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjepa_jax import errors
from sjepa_jax import images
from sjepa_jax import recordings
from sjepa_jax import world
from sjepa_jax.world import scene


class Batch(NamedTuple):
  """Short rollouts from one view: frame t + 1 follows frame t under actions[:, t]. The
  world's batches carry the focal object's labels per frame (for the supervised ceiling)."""
  obs: jax.Array  # (B, L, H, W, 3) float32 in [0, 1]
  actions: jax.Array  # (B, L - 1, 2)
  labels: dict[str, jax.Array] | None = None  # class (B, L), position (B, L, 2)


def world_batch(key: jax.Array, view: world.View, batch: int, frames: int, size: int) -> Batch:
  """``batch`` independent random rollouts of ``frames`` frames seen from one view. Actions
  are the pushes in units of the largest push, so they enter the predictor in [-1, 1]."""
  one_view = jax.tree.map(lambda x: jnp.asarray(x)[None], view)
  def sample(k):
    ep = world.sample_episode(k, one_view, frames, size)
    return ep.obs[0], ep.actions / scene.MAX_PUSH, {"class": ep.labels["class"],
                                                    "position": ep.labels["position"]}
  return Batch(*jax.vmap(sample)(jax.random.split(key, batch)))


class PairedSet(NamedTuple):
  """The same N states seen from every agent's view, with the labels a probe reads: the
  world's ``scene.PROBED``, or a dataset's ``class``. ``num_classes`` gives each integer
  label's class count; the other labels are values. ``state`` is everything known of each
  state as one vector (the world's full state; a recording's labels), None for images."""
  obs: jax.Array  # (A, N, H, W, 3)
  labels: dict[str, jax.Array]  # each (N, ...)
  num_classes: dict[str, int]
  state: jax.Array | None = None  # (N, S)


def world_paired_set(key: jax.Array, views: world.View, num: int, size: int) -> PairedSet:
  """N random states (with random focal velocity) rendered from every stacked view."""
  k_state, k_vel, k_noise = jax.random.split(key, 3)
  states = jax.vmap(world.random_state)(jax.random.split(k_state, num))
  vel = jax.random.uniform(k_vel, (num, 2), minval=-scene.MAX_SPEED, maxval=scene.MAX_SPEED)
  states = states._replace(vel=states.vel.at[:, 0].set(vel / jnp.sqrt(2.0)))
  noise = jax.random.split(k_noise, num)
  obs = jax.lax.map(lambda sk: world.observe(sk[0], views, size, sk[1]), (states, noise),
                    batch_size=64)
  labels = jax.vmap(world.labels)(states)
  return PairedSet(jnp.swapaxes(obs, 0, 1), {k: labels[k] for k in scene.PROBED},
                   dict(scene.LABEL_CLASSES), jax.vmap(world.state_features)(states))


def world_pairs(views: str | Sequence[str], num: int, size: int = 32, seed: int = 0
                ) -> PairedSet:
  """``num`` random world states seen from each named view, with their labels: paired
  observations ``obs[v]`` (N, H, W, 3) of view ``v`` for fitting and scoring maps and
  probes. A different ``seed`` gives other states (fit on one, score on another)."""
  stacked = world.stack_views(views)
  return world_paired_set(jax.random.key(seed), stacked, num, size)


def state_of(labels: dict[str, jax.Array], num_classes: dict[str, int]) -> jax.Array:
  """Labels as one state vector per example, (N, S): values as they are, class ids
  one-hot."""
  parts = [jax.nn.one_hot(y, num_classes[k]) if k in num_classes
           else jnp.reshape(y, (y.shape[0], -1)).astype(jnp.float32)
           for k, y in sorted(labels.items())]
  return jnp.concatenate(parts, 1)


_regions_obs = jax.jit(jax.vmap(images.region_obs, in_axes=(None, 0, None)), static_argnums=2)


# --- The source, decided once at the boundary --------------------------------------------

WORLD, IMAGES, RECORDING = "world", "images", "recording"


class Source(NamedTuple):
  """What a run's agents see and how it is read, decided once from a config (``source``):
  the functions below take it, never the config. ``kind`` is ``WORLD``, ``IMAGES`` (a
  labelled image dataset seen through regions) or ``RECORDING`` (a dataset of episodes,
  whose ``layout`` and read ``options`` it carries)."""
  kind: str
  image_size: int
  dataset: str = ""
  data_dir: str = ""
  train_split: str = "train"
  eval_split: str = "test"
  region_size: float = 0.6
  layout: recordings.Layout | None = None
  options: recordings.Options | None = None


def recording_options(config: ml_collections.ConfigDict) -> recordings.Options:
  """How the config reads a recording."""
  d = config.data
  return recordings.Options(d.image_size, recordings.span(d.frames, d.stride),
                            d.flip, d.labels, d.train_split, d.eval_split, d.holdout_fraction)


def source(config: ml_collections.ConfigDict) -> Source:
  """The config's source; a dataset is opened here, once (its features only)."""
  d = config.data
  # Without a data_dir nothing is read: a dataset's images handed over in memory.
  recording = bool(d.dataset and d.data_dir) and recordings.is_recording(d.dataset, d.data_dir)
  if d.stride != 1 and not recording:
    raise errors.UserError(f"data.stride={d.stride} spaces a recording's steps; "
                           f"{'the world' if not d.dataset else repr(d.dataset)} is not a "
                           "recording: valid data.stride 1.")
  if not d.dataset:
    return Source(WORLD, d.image_size)
  return Source(RECORDING if recording else IMAGES, d.image_size, d.dataset, d.data_dir,
                d.train_split, d.eval_split, d.region_size,
                recordings.layout(d.dataset, d.data_dir) if recording else None,
                recording_options(config) if recording else None)


def parse_views(config: ml_collections.ConfigDict, names: str | Sequence[str]) -> list[str]:
  """Checks view names against the config's source: world views, dataset regions, or a
  recording's cameras."""
  try:
    src = source(config)
  except (OSError, errors.UserError):  # the dataset cannot be opened: say why...
    listed = names.split(",") if isinstance(names, str) else names
    if not any(n.strip() in world.VIEWS for n in listed):
      raise
    src = Source(IMAGES, config.data.image_size)  # ...unless world views say the dataset
    # itself is the mistake (below)
  if src.kind == RECORDING:
    return recordings.parse_cameras(names, src.layout)
  try:
    return world.parse_views(names) if src.kind == WORLD else images.parse_regions(names)
  except ValueError as e:
    hint = (" Region views need a dataset (--dataset); camera views a recording." if
            src.kind == WORLD else " World views need no dataset: leave --dataset out." + (
                "" if config.data.data_dir else " A recording's cameras need its --data_dir."))
    raise errors.UserError(str(e) + hint) from e


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with what a recording decides filled in (its action size, so trained agents
  load without the data), after checking it against the recording (labels, splits); other
  sources' configs unchanged."""
  src = source(config)
  if src.kind != RECORDING:
    return config
  lay, o = src.layout, src.options
  recordings.select_labels(lay, o.labels)
  recordings.parts(lay, o.train_split, o.eval_split, o.holdout_fraction)
  if config.data.action_dim not in (0, lay.action_dim):
    raise errors.UserError(f"config.data.action_dim is {config.data.action_dim}, but recording "
                           f"{lay.name!r} has actions of size {lay.action_dim}: leave it 0.")
  resolved = copy.deepcopy(config)
  resolved.data.action_dim = lay.action_dim
  return resolved


def action_dim(config: ml_collections.ConfigDict) -> int:
  """The action size: the world's push (2), a crop's move (3), or a recording's, saved in
  ``data.action_dim`` by ``resolve`` (read from the recording when 0)."""
  if not config.data.dataset:
    return 2
  if config.data.get("action_dim", 0) > 0:  # runs on a recording save it: no data needed
    return config.data.action_dim
  src = source(config)
  return src.layout.action_dim if src.kind == RECORDING else images.ACTION_DIM


def stack_views(src: Source, names: Sequence[str]) -> Any:
  """The views stacked along a leading agent axis: ``world.View``, ``images.Region``, or a
  recording's camera indices (A,) int32 into a split loaded with the same ``names``
  (``load_images``). A name may repeat (the same view for agents of several seeds)."""
  unique = list(dict.fromkeys(names))
  if src.kind == WORLD:
    stacked = world.stack_views(unique)
  elif src.kind == RECORDING:
    stacked = np.arange(len(unique), dtype=np.int32)
  else:
    stacked = images.stack_regions(unique, src.region_size)
  index = np.asarray([unique.index(n) for n in names])
  return jax.tree.map(lambda x: x[index], stacked)


def view_order(src: Source) -> list[str]:
  """Every view name of the source in its canonical order (reports list views so)."""
  if src.kind == WORLD:
    return list(world.VIEWS)
  return list(src.layout.cameras) if src.kind == RECORDING else list(images.REGIONS)


def load_images(src: Source, split: str, views: Sequence[str] | None = None
                ) -> images.Images | recordings.Recording | None:
  """One split of the source's dataset in memory: labelled images, or a recording's part
  (its ``train_split``: the episodes that train; any other: those that evaluate) with the
  frames of ``views`` (default: every camera), in that order. None for the world."""
  if src.kind == WORLD:
    return None
  if src.kind == RECORDING:
    role = "train" if split == src.train_split else "eval"
    cameras = list(dict.fromkeys(views)) if views else list(src.layout.cameras)
    return recordings.load(src.dataset, src.data_dir, role, cameras, src.options)
  return images.load(src.dataset, src.data_dir, split)


def on_device(loaded: images.Images | recordings.Recording | None) -> Any:
  """What the jitted step indexes, on the device: a dataset's images, a recording's
  ``recordings.OnDevice``; None for the world."""
  if loaded is None:
    return None
  if isinstance(loaded, recordings.Recording):
    return recordings.on_device(loaded)
  return jnp.asarray(loaded.pixels)


def num_states(loaded: images.Images | recordings.Recording) -> int:
  """How many paired states a loaded split can give: its images, or its steps."""
  if isinstance(loaded, recordings.Recording):
    return loaded.num_steps
  return len(loaded.labels)


def sampler(dataset: str, batch_size: int, frames: int, size: int, min_crop: float,
            stride: int = 1):
  """``sample(key, view, pixels) -> Batch``, one agent's training batch: world rollouts
  without a ``dataset`` (``pixels`` unused); sub-crops of its region of ``pixels``, the
  train split's (N, H, W, 3) uint8 images; or windows of its camera's steps when ``pixels``
  is a recording's ``recordings.OnDevice``. Reads no data: agents load without it."""
  if not dataset:
    return lambda key, view, pixels=None: world_batch(key, view, batch_size, frames, size)

  def sample(key, view, pixels=None):
    if pixels is None:
      raise errors.UserError(f"Config names dataset {dataset!r}, but no data was passed: give the "
                             "train split on the device (data.on_device(data.load_images("
                             "data.source(config), 'train', views))).")
    if isinstance(pixels, recordings.OnDevice):
      return Batch(*recordings.batch(key, pixels, view, batch_size, frames, stride))
    return Batch(*images.region_batch(key, pixels, view, batch_size, frames, size, min_crop))
  return sample


def paired_set(src: Source, key: jax.Array, views: Any, num: int,
               loaded: images.Images | recordings.Recording | None = None,
               spread: bool = False) -> PairedSet:
  """``num`` states seen from every stacked view: random world states; for a dataset,
  ``num`` images drawn without replacement from ``loaded``, each agent seeing its region;
  for a recording, ``num`` steps of whole episodes of ``loaded`` (``recordings.paired_steps``;
  ``spread``: steps drawn from all its episodes) seen by each agent's camera, with their
  labels."""
  if loaded is None:
    return world_paired_set(key, views, num, src.image_size)
  if num > num_states(loaded):
    where = (f"the {loaded.part} episodes of {loaded.name!r} hold only {loaded.num_steps} "
             "steps" if isinstance(loaded, recordings.Recording) else
             f"split {src.eval_split!r} of {src.dataset!r} holds only {len(loaded.labels)}")
    raise errors.UserError(f"Asked for {num} paired states, but {where}: lower --pairs and "
                           "--test_pairs (or the eval sizes).")
  if isinstance(loaded, recordings.Recording):
    steps = (np.sort(np.asarray(jax.random.permutation(key, loaded.num_steps))[:num])
             if spread else recordings.paired_steps(loaded, key, num))
    labels = {k: jnp.asarray(v[steps]) for k, v in loaded.labels.items()}
    return PairedSet(recordings.paired_obs(loaded, np.asarray(views), steps), labels,
                     dict(loaded.num_classes), state_of(labels, loaded.num_classes))
  index = np.asarray(jax.random.permutation(key, len(loaded.labels))[:num])
  pixels = jnp.asarray(loaded.pixels[index])
  obs = _regions_obs(pixels, views, src.image_size)
  return PairedSet(obs, {"class": jnp.asarray(loaded.labels[index])},
                   {"class": loaded.num_classes})


# Where probes and maps are fitted (config.eval.probe_fit): "eval", on part of the evaluation
# split, scored on the rest of it; "train", on the training split, scored on the evaluation
# split. The world's states are independent draws, so it is the same there.
PROBE_FITS = ("eval", "train")


def fit_and_score_set(src: Source, key: jax.Array, views: Any, n_fit: int, n_test: int,
                      eval_images: Any, fit_images: Any = None) -> PairedSet:
  """``n_fit + n_test`` paired states: the first ``n_fit`` fit probes and maps, the rest
  score them. Without ``fit_images`` all come from ``eval_images`` (``paired_set``: a
  recording's whole episodes, so the two parts share at most one); with it (a dataset's or a
  recording's training split), the first ``n_fit`` come from it, a recording's drawn from
  all its episodes (a label that varies mostly between episodes, such as where an object
  starts, has as many values to fit as there are episodes), and the rest from
  ``eval_images``."""
  if fit_images is None or eval_images is None:
    return paired_set(src, key, views, n_fit + n_test, eval_images)
  k_fit, k_test = jax.random.split(key)
  fit = paired_set(src, k_fit, views, n_fit, fit_images, spread=True)
  test = paired_set(src, k_test, views, n_test, eval_images)
  # A part's class counts are those it holds, and a label constant in one part is dropped
  # from it: the set keeps the labels of both, with the larger count.
  labels = {k: jnp.concatenate([v, test.labels[k]]) for k, v in fit.labels.items()
            if k in test.labels}
  num_classes = {k: max(n, test.num_classes[k]) for k, n in fit.num_classes.items()
                 if k in labels}
  return PairedSet(jnp.concatenate([fit.obs, test.obs], 1), labels, num_classes,
                   None if fit.state is None else state_of(labels, num_classes))


def overlap_matrix(src: Source, views: Sequence[str], loaded: Any, key: jax.Array
                   ) -> np.ndarray | None:
  """(V, V) pixel overlap of the views (row a: the fraction of a's pixels b also sees):
  measured on 256 random world states, or the regions' geometry. None for a recording:
  its cameras' poses and depth are not recorded, so which pixels two cameras share is
  undefined."""
  if src.kind == WORLD:
    states = jax.vmap(world.random_state)(jax.random.split(key, 256))
    return np.asarray(world.overlap_matrix(states, world.stack_views(views)))
  if src.kind == RECORDING:
    return None
  return images.overlap_matrix(views, src.region_size, *loaded.pixels.shape[1:3])


SOURCE_FILE = "source.json"  # a run on a recording states its splits here (train.py)


def describe(src: Source, loaded: Any, workdir: str | None = None) -> Any:
  """What a report says about the source: ``world``; a dataset's split and image shape; a
  recording's cameras, frame handling and the evaluated part's episodes and steps, beside
  the training part's as the run in ``workdir`` stated them (``SOURCE_FILE``)."""
  if src.kind == WORLD:
    return "world"
  if src.kind == IMAGES:
    return {"dataset": src.dataset, "split": src.eval_split, "region_size": src.region_size,
            "image_shape": list(loaded.pixels.shape[1:])}
  out = {"dataset": loaded.name, "kind": "recording", "cameras": list(loaded.cameras),
         "image_size": src.image_size, "flip": src.options.flip,
         "resize": "stretched to the square (PIL bilinear, antialiased)",
         "labels": {k: ("class" if k in loaded.num_classes else "value")
                    for k in loaded.labels}, "eval": loaded.summary()}
  stated = os.path.join(workdir or "", SOURCE_FILE)
  if workdir and os.path.exists(stated):
    with open(stated) as f:
      out["train"] = json.load(f).get("train")
  return out
