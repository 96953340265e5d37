"""The world written as a recording: built offline, read back exactly by the one reader
of recordings (and by plain tfds)."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sjepa_jax import recordings
from sjepa_jax import world_dataset as dataset

PARAMS = dict(episode_length=3, image_size=8, num_train=3, num_validation=0, num_test=2, seed=5)
VIEWS = ("forest", "mountain")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return data_dir, dataset.build(data_dir, VIEWS, **PARAMS)


def test_round_trip_is_bit_identical(built):
  data_dir, _ = built
  config = dataset.WorldConfig(VIEWS, **PARAMS)
  for role, split, n in (("train", "train", 3), ("eval", "test", 2)):
    part = recordings.load(config.name, data_dir, role, list(VIEWS), recordings.Options(8, 3))
    expected = dataset.generate_episodes(config, split, np.arange(n))
    for c, view in enumerate(VIEWS):
      np.testing.assert_array_equal(part.frames[c],
                                    expected[f"obs_{view}"].reshape(n * 3, 8, 8, 3))
    for k in ("class", "shape", "size", "position", "distractor_centroid"):
      np.testing.assert_array_equal(part.labels[k],
                                    expected[k].reshape((n * 3,) + expected[k].shape[2:]))
    assert "velocity" not in part.labels  # one frame does not show it: not probed


def test_episodes_are_rlds_steps_readable_with_plain_tfds(built):
  _, path = built
  episode = tfds.builder_from_directory(path).as_data_source()["train"][1]
  steps = [episode["steps"][t] for t in range(len(episode["steps"]))]
  expected = dataset.generate_episodes(dataset.WorldConfig(VIEWS, **PARAMS), "train",
                                       np.arange(2))
  assert [s["is_first"] for s in steps] == [True, False, False]
  assert [s["is_last"] for s in steps] == [False, False, True]
  assert set(steps[0]["observation"]) == {*VIEWS, "class", "shape", "size", "position",
                                          "distractor_centroid"}
  np.testing.assert_array_equal(np.stack([s["action"] for s in steps[:2]]),
                                expected["actions"][1])
  np.testing.assert_array_equal(steps[2]["action"], [0, 0])  # the last step's leads nowhere
  np.testing.assert_array_equal(steps[1]["observation"]["forest"], expected["obs_forest"][1, 1])


def test_splits_differ_and_rebuild_is_a_no_op(built):
  data_dir, path = built
  name = dataset.WorldConfig(VIEWS, **PARAMS).name
  options = recordings.Options(8, 3)
  train = recordings.load(name, data_dir, "train", ["mountain"], options).frames
  test = recordings.load(name, data_dir, "eval", ["mountain"], options).frames
  assert not np.array_equal(train[0, :6], test[0])
  info = os.path.join(path, "dataset_info.json")
  mtime = os.path.getmtime(info)
  assert dataset.build(data_dir, VIEWS, **PARAMS) == path
  assert os.path.getmtime(info) == mtime


def test_different_parameters_never_share_a_name():
  a = dataset.WorldConfig(views=VIEWS, **PARAMS)
  b = dataset.WorldConfig(views=VIEWS, **{**PARAMS, "seed": 6})
  assert a.name != b.name and a.name.startswith("world_forest_mountain_t3_s8_")


def test_bad_input_is_a_clear_error(built):
  data_dir, _ = built
  with pytest.raises(ValueError, match="Unknown view 'lake'"):
    dataset.WorldConfig(views=("lake",))
  with pytest.raises(ValueError, match="episode_length"):
    dataset.WorldConfig(episode_length=1)
  with pytest.raises(FileNotFoundError, match="not in the data directory"):
    recordings.layout("world_missing", data_dir)
