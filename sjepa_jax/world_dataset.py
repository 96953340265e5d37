"""The world as a recording: its episodes in the RLDS layout every recording uses.

Each view is a camera, ``observation/<view>`` uint8 (T, H, W, 3); the focal object's labels
that probes read (``scene.PROBED``: class, shape, size, position and the distractors'
centroid) are the other observation fields; ``action`` is the push in world units (the last
step's is zero: it leads nowhere). ``build`` writes fixed train/validation/test splits with
``recording_writer.write`` (array_record, atomic, no download, no TensorFlow), and
``sjepa_jax.recordings`` reads them like any other recording::

  path = build(data_dir, views=("mountain", "forest"), episode_length=8)
  # python -m experiments.train --dataset=<its name> --data_dir=<data_dir> \\
  #     --views=mountain,forest

Each episode's key is (seed, split, index), so a dataset is reproducible. Its name is
derived from every parameter: different parameters never reuse a stale directory, and the
same parameters reuse the dataset already written.
"""

import dataclasses
import functools
import hashlib
import json
from typing import Iterator, Sequence

import jax
import numpy as np

from sjepa_jax import errors
from sjepa_jax import recording_writer
from sjepa_jax.world import episodes as episodes_lib
from sjepa_jax.world import scene
from sjepa_jax.world import views as views_lib

SPLITS = ("train", "validation", "test")
_CHUNK = 32  # episodes rendered per jitted call while writing


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """What to write: views, episode length, image size, episodes per split, seed."""
  views: tuple[str, ...] = ("mountain", "forest", "drone", "river")
  episode_length: int = 8
  image_size: int = 64
  num_train: int = 1000
  num_validation: int = 100
  num_test: int = 200
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "views", tuple(views_lib.parse_views(self.views)))
    if self.episode_length < 2:
      raise errors.UserError(f"episode_length must be at least 2, got {self.episode_length}.")
    if self.num_train < 1:
      raise errors.UserError(f"num_train must be at least 1, got {self.num_train}.")

  @property
  def name(self) -> str:
    """The dataset's name: its views, length and size, and a digest of every parameter."""
    params = json.dumps(dataclasses.asdict(self), sort_keys=True)
    digest = hashlib.sha1(params.encode()).hexdigest()[:10]
    return (f"world_{'_'.join(self.views)}_t{self.episode_length}_s{self.image_size}_"
            f"{digest}")

  @property
  def sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}


def episode_keys(seed: int, split: str, indices: np.ndarray) -> jax.Array:
  """The key of each episode: a function of (seed, split, index) alone."""
  split_key = jax.random.fold_in(jax.random.key(seed), SPLITS.index(split))
  return jax.vmap(lambda i: jax.random.fold_in(split_key, i))(indices)


@functools.lru_cache(maxsize=8)
def _sampler(views: tuple[str, ...], length: int, size: int):
  """One compiled sampler per (views, length, size): renders _CHUNK episodes per call."""
  stacked = views_lib.stack_views(views)
  return jax.jit(jax.vmap(lambda k: episodes_lib.sample_episode(k, stacked, length, size)))


def generate_episodes(config: WorldConfig, split: str, indices: np.ndarray) -> dict:
  """Episodes ``indices`` of ``split`` as a dict of numpy arrays with a leading batch axis:
  ``obs_<view>`` (N, T, H, W, 3) uint8, ``actions`` (N, T - 1, 2) and every label of
  ``scene.labels`` (N, T, ...)."""
  sample = _sampler(config.views, config.episode_length, config.image_size)
  out = []
  for start in range(0, len(indices), _CHUNK):
    chunk = indices[start:start + _CHUNK]
    padded = np.pad(chunk, (0, _CHUNK - len(chunk)))  # fixed shape: one compilation
    ep = jax.device_get(sample(episode_keys(config.seed, split, padded)))
    ep = jax.tree.map(lambda x: x[:len(chunk)], ep)
    arrays = {f"obs_{v}": np.round(ep.obs[:, i] * 255).astype(np.uint8)
              for i, v in enumerate(config.views)}
    arrays["actions"] = ep.actions.astype(np.float32)
    arrays.update({k: np.asarray(v) for k, v in ep.labels.items()})
    out.append(arrays)
  return {k: np.concatenate([a[k] for a in out]) for k in out[0]}


def episodes(config: WorldConfig, split: str, num: int | None = None) -> Iterator[dict]:
  """The first ``num`` (default: all) episodes of ``split`` as recordings write them."""
  num = config.sizes[split] if num is None else num
  for start in range(0, num, _CHUNK):
    chunk = generate_episodes(config, split, np.arange(start, min(start + _CHUNK, num)))
    for i in range(len(chunk["actions"])):
      obs = {v: chunk[f"obs_{v}"][i] for v in config.views}
      obs.update({k: chunk[k][i] for k in scene.PROBED})
      action = np.concatenate([chunk["actions"][i], np.zeros((1, 2), np.float32)])
      yield {"observation": obs, "action": action,
             "source": f"world seed {config.seed} {split} episode {start + i}"}


def build(data_dir: str, views: Sequence[str] | str = WorldConfig.views, **params) -> str:
  """Writes the world's episodes as a recording in ``data_dir`` (kept as it is if these
  parameters were written before); returns its path, ``<data_dir>/<name>/<version>``.

  ``params`` are the other ``WorldConfig`` fields. The write is atomic: tfds writes into a
  temporary directory and renames it when every split is complete.
  """
  config = WorldConfig(views=tuple(views_lib.parse_views(views)), **params)
  first = next(episodes(config, "train", 1))
  splits = {s: functools.partial(episodes, config, s) for s, n in config.sizes.items() if n}
  return recording_writer.write(config.name, data_dir, splits, first, exist_ok=True,
                          description=f"The sjepa-jax world, {config}.")
