"""Local tensorflow-datasets: opening a prepared dataset, reading a split without
TensorFlow where its files allow, and writing examples as a new one. Nothing downloads.

``tfds`` here stands for the ``tensorflow_datasets`` package and imports it on first use,
so ``import sjepa_jax`` (a notebook fitting a map, the world's runs) does not pay for it
until a dataset is read or written.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import os
import re
import tempfile
from typing import TYPE_CHECKING, Any, Iterator

from absl import logging

from sjepa_jax import errors

if TYPE_CHECKING:
  import tensorflow_datasets


class _Lazy:
  """``tensorflow_datasets``, imported when an attribute is first read."""

  def __getattr__(self, name: str) -> Any:
    return getattr(importlib.import_module("tensorflow_datasets"), name)


tfds: tensorflow_datasets = _Lazy()  # type: ignore[assignment]


def missing_message(name: str, data_dir: str) -> str:
  return (f"Dataset {name!r} is not in the data directory {data_dir!r}, and nothing is ever "
          "downloaded. Prepare it offline: on a machine with internet run "
          f"`tfds build {name} --data_dir=<dir>` (or `tfds.builder({name!r}, data_dir=<dir>)"
          f".download_and_prepare()` in Python), then copy <dir>/{name} into {data_dir!r}. "
          "Arrays you already have locally become such a dataset with "
          "`python -m experiments.import_images` (labelled images) or "
          "`python -m experiments.import_episodes` (multi-camera episodes).")


def _open(name: str, data_dir: str) -> tensorflow_datasets.core.DatasetBuilder:
  if not name:
    raise errors.UserError("No dataset named: give --dataset=<tfds name> (and --data_dir).")
  if not data_dir:
    raise errors.UserError(f"Dataset {name!r} needs its local tfds directory: give --data_dir "
                           "(config.data.data_dir); nothing is ever downloaded.")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(missing_message(name, data_dir))
  try:
    b = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(missing_message(name, data_dir)) from e
  if not b.is_prepared():
    raise FileNotFoundError(missing_message(name, data_dir))
  return b


@functools.lru_cache(maxsize=16)
def _opened(name: str, data_dir: str, stamp: int) -> tensorflow_datasets.core.DatasetBuilder:
  del stamp  # part of the cache key only: a rewritten dataset is opened afresh
  return _open(name, data_dir)


def builder(name: str, data_dir: str) -> tensorflow_datasets.core.DatasetBuilder:
  """The prepared dataset ``name`` in ``data_dir``, opened once (again when its directory
  changes), or a clear error saying how to prepare it."""
  where = os.path.join(data_dir or "", name or "")
  stamp = os.stat(where).st_mtime_ns if name and data_dir and os.path.isdir(where) else 0
  return _opened(name, data_dir, stamp)


def is_array_record(b: tensorflow_datasets.core.DatasetBuilder) -> bool:
  """Whether ``b``'s files are read directly (tfds data sources), without TensorFlow."""
  return b.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD


def as_numpy(b: tensorflow_datasets.core.DatasetBuilder, split: str, importer: str,
             **kwargs) -> Any:
  """A split of a tfrecord dataset (what `tfds build` writes by default) through tf.data,
  or a clear error naming the extra that installs TensorFlow and how to convert the
  dataset instead (``importer``: the command that imports such arrays)."""
  if importlib.util.find_spec("tensorflow") is None:
    raise errors.MissingExtraError(
        f"Dataset {b.name!r} is stored as {b.info.file_format.value} files, which only "
        "TensorFlow's tf.data reads: install the extra with `pip install -e .[tfrecord]`, or "
        "convert it to array_record (`tfds build --file_format=array_record`, or arrays "
        f"through `python -m {importer}`).")
  return tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False, **kwargs))


@functools.cache
def _arrays_builder() -> type:
  """tfds' builder without a class of one's own, for generators of examples only: tfds'
  own asks each split whether it is a tf.data.Dataset, which imports TensorFlow."""

  class ArraysBuilder(tfds.dataset_builders.AdhocBuilder, skip_registration=True):

    def _split_generators(self, dl_manager):
      del dl_manager
      return {name: self._generate_examples_iterator(examples)
              for name, examples in self._split_datasets.items()}

  return ArraysBuilder


def write_examples(name: str, data_dir: str,
                   features: tensorflow_datasets.features.FeaturesDict,
                   splits: dict[str, Iterator[tuple[int, dict]]], version: str = "1.0.0",
                   description: str = "") -> str:
  """Writes (key, example) generators, one per split, as a local tfds dataset in the
  ``array_record`` format (read back without TensorFlow); returns its directory.

  Examples keep their order (index i is the generator's i-th). tfds writes into a temporary
  directory and renames it when every split is complete, so a failure leaves nothing.
  """
  tfds.display_progress_bar(False)
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # tfds logs each file it writes
  with contextlib.redirect_stdout(io.StringIO()):  # its banner says "downloaded"; nothing is
    b = _arrays_builder()(
        name=name, version=version, features=features, data_dir=data_dir,
        split_datasets=splits, description=description or None,
        disable_shuffling=True,  # examples keep their order: index i is the arrays' row i
        file_format="array_record")  # read back without TensorFlow
    try:  # tfds makes an (empty) downloads/ folder: a temporary one, so nothing is left
      with tempfile.TemporaryDirectory() as downloads:
        b.download_and_prepare(
            download_dir=downloads,
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
      logging.set_verbosity(verbosity)
  return str(b.data_dir)


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check_new_name(name: str) -> None:
  """Refuses a dataset name tfds cannot read back: not snake_case, or already registered."""
  if not _NAME.match(name):
    suggestion = re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_") or "my_images"
    raise errors.UserError(f"Dataset name {name!r} cannot be read back by tfds: use lowercase "
                           "letters, digits and underscores, starting with a letter (e.g. "
                           f"{suggestion!r}).")
  try:
    tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError:
    return
  raise errors.UserError(f"Dataset name {name!r} is already registered by tensorflow-datasets; "
                         "reading it back would load theirs: choose another (e.g. "
                         f"{name + '_local'!r}).")
