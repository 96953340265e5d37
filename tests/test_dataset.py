"""The world as a local tensorflow-datasets dataset: build offline, read back exactly."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sjepa_jax.world import dataset

PARAMS = dict(episode_length=3, image_size=8, num_train=3, num_validation=0, num_test=2, seed=5)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return dataset.build(data_dir, ("forest", "mountain"), **PARAMS)


def test_round_trip_is_bit_identical(built):
  config = built.builder_config
  for split, n in (("train", 3), ("test", 2)):
    source = dataset.load(str(built.data_path), split)
    assert len(source) == n
    expected = dataset.generate_episodes(config, split, np.arange(n))
    for i in range(n):
      example = source[i]
      assert sorted(example) == sorted(expected)
      for k, v in expected.items():
        assert example[k].dtype == v.dtype
        np.testing.assert_array_equal(example[k], v[i])
  assert source[0]["obs_forest"].shape == (3, 8, 8, 3)


def test_splits_differ_and_rebuild_is_a_no_op(built):
  train = dataset.load(str(built.data_path), "train")[0]["obs_mountain"]
  test = dataset.load(str(built.data_path), "test")[0]["obs_mountain"]
  assert not np.array_equal(train, test)
  info = os.path.join(built.data_path, "dataset_info.json")
  mtime = os.path.getmtime(info)
  again = dataset.build(os.path.dirname(os.path.dirname(os.path.dirname(built.data_path))),
                        ("forest", "mountain"), **PARAMS)
  assert str(again.data_path) == str(built.data_path)
  assert os.path.getmtime(info) == mtime


def test_readable_with_plain_tfds(built):
  source = tfds.builder_from_directory(str(built.data_path)).as_data_source()["train"]
  assert set(source[1]) >= {"obs_forest", "obs_mountain", "actions", "class", "position"}


def test_different_parameters_never_share_a_directory():
  a = dataset.WorldConfig(views=("forest", "mountain"), **PARAMS)
  b = dataset.WorldConfig(views=("forest", "mountain"), **{**PARAMS, "seed": 6})
  assert a.name != b.name


def test_bad_input_is_a_clear_error(built, tmp_path):
  with pytest.raises(ValueError, match="Unknown split 'dev'"):
    dataset.load(str(built.data_path), "dev")
  with pytest.raises(FileNotFoundError, match="No built dataset"):
    dataset.load(str(tmp_path / "missing"), "train")
  with pytest.raises(ValueError, match="Unknown view 'lake'"):
    dataset.WorldConfig(views=("lake",))
  with pytest.raises(ValueError, match="episode_length"):
    dataset.WorldConfig(episode_length=1)
