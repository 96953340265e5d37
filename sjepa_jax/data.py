"""Batches for agents, made on the device inside the step, from one of two sources.

- The embedded world (the default): each agent renders its own episodes from its own view.
- A labelled image dataset read through tensorflow-datasets (``config.data.dataset``): each
  agent sees a fixed region of the images (``sjepa_jax.images``).

Each agent draws its own samples (its own key) and sees them only through its own view:
agents share the source's rules, never data. A fixed *paired* set (the same states or
images seen from every view) serves evaluation only: probes and cross-agent alignment.

Shapes: A = agents, B = batch, L = frames per sample, N = paired states.
"""

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjepa_jax import images
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
  label's class count; the other labels are values."""
  obs: jax.Array  # (A, N, H, W, 3)
  labels: dict[str, jax.Array]  # each (N, ...)
  num_classes: dict[str, int]


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
                   dict(scene.LABEL_CLASSES))


def world_pairs(views: str | Sequence[str], num: int, size: int = 32, seed: int = 0
                ) -> PairedSet:
  """``num`` random world states seen from each named view, with their labels: paired
  observations ``obs[v]`` (N, H, W, 3) of view ``v`` for fitting and scoring maps and
  probes. A different ``seed`` gives other states (fit on one, score on another)."""
  stacked = world.stack_views(views)
  return world_paired_set(jax.random.key(seed), stacked, num, size)


_regions_obs = jax.jit(jax.vmap(images.region_obs, in_axes=(None, 0, None)), static_argnums=2)


# --- The source a config names -----------------------------------------------------------

def is_world(config: ml_collections.ConfigDict) -> bool:
  return not config.data.dataset


def parse_views(config: ml_collections.ConfigDict, names: str | Sequence[str]) -> list[str]:
  """Checks view names against the config's source: world views, or dataset regions."""
  try:
    return world.parse_views(names) if is_world(config) else images.parse_regions(names)
  except ValueError as e:
    hint = (" Region views need a dataset (--dataset)." if is_world(config) else
            " World views need no dataset: leave --dataset out.")
    raise ValueError(str(e) + hint) from e


def stack_views(config: ml_collections.ConfigDict, names: Sequence[str]) -> Any:
  """The views stacked along a leading agent axis: ``world.View`` or ``images.Region``.
  A name may repeat (the same view for agents of several seeds)."""
  unique = list(dict.fromkeys(names))
  if is_world(config):
    stacked = world.stack_views(unique)
  else:
    stacked = images.stack_regions(unique, config.data.region_size)
  index = np.asarray([unique.index(n) for n in names])
  return jax.tree.map(lambda x: x[index], stacked)


def action_dim(config: ml_collections.ConfigDict) -> int:
  return 2 if is_world(config) else images.ACTION_DIM


def load_images(config: ml_collections.ConfigDict, split: str) -> images.Images | None:
  """One split of the config's dataset in memory; None for the world."""
  if is_world(config):
    return None
  return images.load(config.data.dataset, config.data.data_dir, split)


def sampler(config: ml_collections.ConfigDict):
  """``sample(key, view, pixels) -> Batch``, one agent's training batch from the config's
  source: world rollouts (``pixels`` unused), or sub-crops of its region of ``pixels``
  (N, H, W, 3) uint8 images of the dataset's train split."""
  d = config.data
  size, batch_size, frames, min_crop = d.image_size, d.batch_size, d.frames, d.min_crop
  if is_world(config):
    return lambda key, view, pixels=None: world_batch(key, view, batch_size, frames, size)
  dataset = d.dataset

  def sample(key, view, pixels=None):
    if pixels is None:
      raise ValueError(f"Config names dataset {dataset!r}, but no images were passed: give "
                       "the train split's pixels (data.load_images(config, 'train').pixels).")
    return Batch(*images.region_batch(key, pixels, view, batch_size, frames, size, min_crop))
  return sample


def paired_set(config: ml_collections.ConfigDict, key: jax.Array, views: Any, num: int,
               source: images.Images | None = None) -> PairedSet:
  """``num`` states seen from every stacked view: random world states, or (for a dataset)
  ``num`` images drawn without replacement from ``source``, each agent seeing its region."""
  if source is None:
    return world_paired_set(key, views, num, config.data.image_size)
  if num > len(source.labels):
    raise ValueError(f"Asked for {num} paired images, but split {config.data.eval_split!r} "
                     f"of {config.data.dataset!r} holds only {len(source.labels)}: lower "
                     "--pairs and --test_pairs (or the eval sizes).")
  index = np.asarray(jax.random.permutation(key, len(source.labels))[:num])
  pixels = jnp.asarray(source.pixels[index])
  obs = _regions_obs(pixels, views, config.data.image_size)
  return PairedSet(obs, {"class": jnp.asarray(source.labels[index])},
                   {"class": source.num_classes})
