"""The world as a local tensorflow-datasets dataset: fixed splits of multi-view episodes.

Built offline (nothing downloads, TensorFlow is not needed) in the ``array_record`` format
and read back as random-access data sources::

  builder = build(data_dir, views=("mountain", "forest"), episode_length=8)
  train = builder.as_data_source()["train"]  # train[i]: dict of numpy arrays
  # later, without this module's parameters:
  tfds.builder_from_directory(builder.data_path).as_data_source()

Each example is one episode: ``obs_<view>`` (T, H, W, 3) uint8 per view, ``actions``
(T - 1, 2) and the focal object's labels ``class``, ``shape``, ``size`` (T,), ``position``
and ``velocity`` (T, 2), and the distractors' centroid (T, 2). The config name is derived
from every parameter, so different parameters never reuse a stale directory.
"""

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
from typing import Iterator, Sequence

from absl import logging
import jax
import numpy as np
import tensorflow_datasets as tfds

from sjepa_jax.world import episodes
from sjepa_jax.world import views as views_lib

SPLITS = ("train", "validation", "test")
_CHUNK = 32  # episodes rendered per jitted call while writing


@dataclasses.dataclass(eq=False)  # tfds' BuilderConfig is a mutable dataclass
class WorldConfig(tfds.core.BuilderConfig):
  """What to write: views, episode length, image size, episodes per split, seed."""
  name: str = ""
  views: tuple[str, ...] = ("mountain", "forest", "drone", "river")
  episode_length: int = 8
  image_size: int = 64
  num_train: int = 1000
  num_validation: int = 100
  num_test: int = 200
  seed: int = 0

  def __post_init__(self):
    self.views = tuple(views_lib.parse_views(self.views))
    if self.episode_length < 2:
      raise ValueError(f"episode_length must be at least 2, got {self.episode_length}.")
    if not self.name:
      params = {f.name: getattr(self, f.name) for f in dataclasses.fields(WorldConfig)
                if f.name not in ("name", "version", "release_notes", "supported_versions",
                                  "description", "tags")}
      digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
      self.name = f"{'-'.join(self.views)}_t{self.episode_length}_s{self.image_size}_{digest}"


class SjepaWorld(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Multi-view episodes of the embedded world (local builder, no download)."""
  name = "sjepa_world"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "The distractors' centroid per frame (a diagnostic label).",
                   "2.0.0": "The focal object's shape and size, the two parts of its class; "
                            "its colour is fixed, so no longer a label."}
  BUILDER_CONFIG_CLASS = WorldConfig
  # tfds looks for checksums beside the builder's module via importlib_resources, which is
  # not installed; this builder downloads nothing, so it needs no checksums.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    t, s = c.episode_length, c.image_size
    # BYTES encoding stores raw buffers: no int64 upcast, so writing is far faster than NONE.
    tensor = lambda shape, dtype: tfds.features.Tensor(
        shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
    features = {f"obs_{v}": tensor((t, s, s, 3), np.uint8) for v in c.views}
    features.update(actions=tensor((t - 1, 2), np.float32), **{"class": tensor((t,), np.int32)},
                    shape=tensor((t,), np.int32), size=tensor((t,), np.int32),
                    position=tensor((t, 2), np.float32), velocity=tensor((t, 2), np.float32),
                    distractor_centroid=tensor((t, 2), np.float32))
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 disable_shuffling=True)  # examples stay in episode order

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    sizes = {"train": c.num_train, "validation": c.num_validation, "test": c.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items() if n > 0}

  def _generate_examples(self, split: str, num: int) -> Iterator[tuple[int, dict]]:
    c = self.builder_config
    for start in range(0, num, _CHUNK):
      chunk = generate_episodes(c, split, np.arange(start, min(start + _CHUNK, num)))
      for i in range(len(chunk["actions"])):
        yield start + i, {k: v[i] for k, v in chunk.items()}


def episode_keys(seed: int, split: str, indices: np.ndarray) -> jax.Array:
  """The key of each episode: a function of (seed, split, index) alone."""
  split_key = jax.random.fold_in(jax.random.key(seed), SPLITS.index(split))
  return jax.vmap(lambda i: jax.random.fold_in(split_key, i))(indices)


@functools.lru_cache(maxsize=8)
def _sampler(views: tuple[str, ...], length: int, size: int):
  """One compiled sampler per (views, length, size): renders _CHUNK episodes per call."""
  stacked = views_lib.stack_views(views)
  return jax.jit(jax.vmap(lambda k: episodes.sample_episode(k, stacked, length, size)))


def generate_episodes(config: WorldConfig, split: str, indices: np.ndarray) -> dict:
  """Episodes ``indices`` of ``split`` as a dict of numpy arrays with a leading batch axis."""
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


@contextlib.contextmanager
def _quiet():
  """Hides tfds' progress bars, its stdout banners and absl's config-name warning."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logging.set_verbosity(verbosity)


def build(data_dir: str, views: Sequence[str] | str = WorldConfig.views, **params) -> SjepaWorld:
  """Writes the dataset into ``data_dir`` (a no-op if that config is already there).

  ``params`` are the other ``WorldConfig`` fields. The write is atomic: tfds writes into a
  temporary directory and renames it when every split is complete.
  """
  config = WorldConfig(views=tuple(views_lib.parse_views(views)), **params)
  with _quiet():
    builder = SjepaWorld(config=config, data_dir=data_dir)
    builder.download_and_prepare(
        file_format="array_record", download_dir=os.path.join(data_dir, "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def load(data_path: str, split: str):
  """Random-access source of one split of a built dataset: ``source[i]`` is an episode.

  ``data_path`` is ``builder.data_path`` (``<data_dir>/sjepa_world/<config>/<version>``);
  reading needs neither this builder's parameters nor TensorFlow.
  """
  if not os.path.isdir(data_path):
    raise FileNotFoundError(f"No built dataset at {data_path!r}; build it with "
                            "`python -m experiments.build_dataset --data_dir=...`.")
  with _quiet():
    sources = tfds.builder_from_directory(data_path).as_data_source()
  if split not in sources:
    raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(sorted(sources))}.")
  return sources[split]
