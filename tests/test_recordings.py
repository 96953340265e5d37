"""Recordings (issue 21): multi-camera episodes read as a data source, one agent per camera.

Planted recordings make every answer checkable: a frame's pixels hold 10 * episode + step
(``front``) or 200 minus that (``wrist``), and each step's action is (episode, step).
"""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from sjepa_jax import errors
from sjepa_jax import agents
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import episode_files
from sjepa_jax import evaluation
from sjepa_jax import recording_writer
from sjepa_jax import recordings
from sjepa_jax import tfds_local
from sjepa_jax import train
from sjepa_jax import world_dataset as dataset
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = recordings.Options(image_size=8, frames=3)


def planted_episode(e: int, length: int) -> dict:
  """Episode ``e``: every pixel of frame t is 10 e + t (``front``, 6 x 10: not square) or
  200 - (10 e + t) (``wrist``); action t is (e, t); labels ``step`` (t, a class), ``where``
  ((e, t), values) and ``same`` (constant: nothing to probe)."""
  t = np.arange(length)
  v = (10 * e + t).astype(np.uint8)
  frames = lambda x, h, w: np.broadcast_to(x[:, None, None, None], (length, h, w, 3)).copy()
  return {"observation": {"front": frames(v, 6, 10), "wrist": frames(200 - v, 4, 4),
                          "step": t.astype(np.int32),
                          "where": np.stack([np.full(length, e), t], 1).astype(np.float32),
                          "same": np.ones(length, np.float32)},
          "action": np.stack([np.full(length, e), t], 1).astype(np.float32),
          "source": f"planted episode {e}"}


def write_planted(data_dir: str, name: str, train_lengths, test_lengths=()) -> str:
  """Episodes 0, 1, ... of ``train_lengths`` steps, then the test split's."""
  eps = [planted_episode(e, n) for e, n in enumerate([*train_lengths, *test_lengths])]
  splits = {"train": lambda: eps[:len(train_lengths)]}
  if test_lengths:
    splits["test"] = lambda: eps[len(train_lengths):]
  return recording_writer.write(name, data_dir, splits, eps[0])


def decode(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(episode, step) from planted ``front`` frames (..., H, W, 3) in [0, 1]."""
  v = np.rint(np.asarray(obs)[..., 0, 0, 0] * 255).astype(int)
  return v // 10, v % 10


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  write_planted(path, "planted", [5, 2, 6, 4], [4, 3])  # episode 1 is short for 3 frames
  write_planted(path, "planted_train_only", [3, 4, 3, 5, 4])
  return path


@pytest.fixture
def planted_config(planted_dir):
  c = tiny_config()
  c.data.dataset, c.data.data_dir = "planted", planted_dir
  return c


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("world"))
  dataset.build(path, ("mountain", "forest"), episode_length=3, image_size=16, num_train=8,
                num_validation=0, num_test=6, seed=3)
  return path


WORLD = dataset.WorldConfig(("mountain", "forest"), 3, 16, 8, 0, 6, 3)


# --- Reading -----------------------------------------------------------------------------

def test_reads_a_world_recording_made_in_the_test(world_dir):
  lay = recordings.layout(WORLD.name, world_dir)
  assert lay.cameras == ("forest", "mountain") and lay.action_dim == 2
  assert lay.labels == {"class": "class", "distractor_centroid": "value", "position": "value",
                        "shape": "class", "size": "class"}
  train_part = recordings.load(WORLD.name, world_dir, "train", ["mountain", "forest"],
                               recordings.Options(16, 3))
  expected = dataset.generate_episodes(WORLD, "train", np.arange(8))
  for c, view in enumerate(["mountain", "forest"]):  # the stored size: bit for bit
    np.testing.assert_array_equal(train_part.frames[c],
                                  expected[f"obs_{view}"].reshape(24, 16, 16, 3))
  np.testing.assert_array_equal(train_part.labels["class"], expected["class"].reshape(24))
  np.testing.assert_allclose(train_part.labels["position"], expected["position"].reshape(24, 2))
  raw = train_part.actions * train_part.action_std + train_part.action_mean
  recorded = np.concatenate([expected["actions"], np.zeros((8, 1, 2))], 1).reshape(24, 2)
  np.testing.assert_allclose(raw, recorded, atol=1e-6)
  assert train_part.summary()["episodes"] == 8 and train_part.num_steps == 24


def test_samples_are_consecutive_steps_of_one_episode_with_their_actions(planted_dir):
  part = recordings.load("planted", planted_dir, "train", ["wrist", "front"], OPTIONS)
  obs, actions = jax.jit(recordings.batch, static_argnums=(3, 4))(
      jax.random.key(0), recordings.on_device(part), 1, 64, 3)  # camera 1: front
  chex.assert_shape(obs, (64, 3, 8, 8, 3))
  episode, step = decode(obs)
  assert (episode == episode[:, :1]).all() and (np.diff(step, axis=1) == 1).all()
  assert set(episode[:, 0]) == {0, 2, 3}  # never the 2-step episode 1
  raw = np.asarray(actions) * part.action_std + part.action_mean
  np.testing.assert_allclose(raw, np.stack([episode[:, :2], step[:, :2]], -1), atol=1e-5)
  wrist, _ = jax.jit(recordings.batch, static_argnums=(3, 4))(
      jax.random.key(0), recordings.on_device(part), 0, 64, 3)
  np.testing.assert_allclose(np.asarray(wrist) * 255, 200 - np.asarray(obs) * 255, atol=1e-3)


def test_a_stride_spaces_the_frames_and_averages_the_actions_between_them(planted_dir):
  """stride 2, 3 frames: steps t, t + 2, t + 4 of one episode (only episodes of 5 steps or
  more: 0 and 2), the actions between them the mean of (e, t), (e, t + 1) and of the next
  two."""
  part = recordings.load("planted", planted_dir, "train", ["front"],
                         OPTIONS._replace(frames=recordings.span(3, 2)))
  obs, actions = jax.jit(recordings.batch, static_argnums=(3, 4, 5))(
      jax.random.key(0), recordings.on_device(part), 0, 64, 3, 2)
  chex.assert_shape((obs, actions), ((64, 3, 8, 8, 3), (64, 2, 2)))
  episode, step = decode(obs)
  assert (episode == episode[:, :1]).all() and (np.diff(step, axis=1) == 2).all()
  assert set(episode[:, 0]) == {0, 2}
  raw = np.asarray(actions) * part.action_std + part.action_mean
  np.testing.assert_allclose(raw, np.stack([episode[:, :2], step[:, :2] + 0.5], -1), atol=1e-5)
  c = tiny_config()
  c.data.stride = 2
  with pytest.raises(ValueError, match=r"data.stride=2 spaces a recording's steps; the world is "
                                       r"not a recording: valid data.stride 1\."):
    data.source(c)


def test_actions_are_normalised_with_the_train_statistics(planted_dir):
  part = recordings.load("planted", planted_dir, "train", ["front"], OPTIONS)
  used = np.concatenate([planted_episode(e, n)["action"][:-1] for e, n in ((0, 5), (2, 6), (3, 4))])
  np.testing.assert_allclose(part.action_mean, used.mean(0), rtol=1e-6)
  np.testing.assert_allclose(part.action_std, used.std(0), rtol=1e-6)
  summary = part.summary()
  assert summary["action_mean"] == pytest.approx(used.mean(0).tolist())
  assert summary["windows"] == 3 + 4 + 2 and summary["steps"] == 15


def test_short_episodes_are_skipped_and_counted_or_refused(planted_dir):
  part = recordings.load("planted", planted_dir, "train", ["front"], OPTIONS)
  assert part.skipped_short == 1 and list(part.episodes) == [0, 2, 3]
  evaluation = recordings.load("planted", planted_dir, "eval", ["front"], OPTIONS)
  assert evaluation.skipped_short == 0 and evaluation.num_steps == 7  # single steps suffice
  with pytest.raises(ValueError, match=r"No episode of recording 'planted' \(train\[0:4\]\) "
                                       r"has 7 steps or more: all 4 are shorter"):
    recordings.load("planted", planted_dir, "train", ["front"], OPTIONS._replace(frames=7))


def test_splits_are_by_episode_never_by_step(planted_dir):
  parts = lambda f, name: {r: recordings.load(name, planted_dir, r, ["front"],
                                              OPTIONS._replace(holdout_fraction=f))
                           for r in ("train", "eval")}
  with_test = parts(0.2, "planted")
  assert str(with_test["eval"].part) == "test[0:2]"
  held = parts(0.4, "planted_train_only")  # 5 episodes: the last 2 held out
  assert (str(held["train"].part), str(held["eval"].part)) == ("train[0:3]", "train[3:5]")
  for split in (with_test, held):
    trained = set(decode(split["train"].frames[0] / 255.0)[0])
    scored = set(decode(split["eval"].frames[0] / 255.0)[0])
    assert trained and scored and not trained & scored
  with pytest.raises(ValueError, match=r"no 'test' split.*leaves 5 to train and 0 to evaluate"):
    parts(0.0, "planted_train_only")
  with pytest.raises(ValueError, match=r"no split 'training'; splits: test, train"):
    recordings.load("planted", planted_dir, "train", ["front"],
                    OPTIONS._replace(train_split="training"))


def test_the_paired_set_pairs_the_same_step_of_whole_episodes_across_cameras(planted_config):
  views = data.parse_views(planted_config, "front,wrist")
  src = data.source(planted_config)
  evaluation = data.load_images(src, "test", views)
  paired = data.paired_set(src, jax.random.key(1), data.stack_views(src, views), 7, evaluation)
  chex.assert_shape(paired.obs, (2, 7, 16, 16, 3))
  episode, step = decode(paired.obs[0])
  np.testing.assert_allclose(np.asarray(paired.obs[1]) * 255, 200 - np.asarray(paired.obs[0]) * 255,
                             atol=1e-3)  # the same step through the other camera
  np.testing.assert_array_equal(np.asarray(paired.labels["where"]), np.stack([episode, step], 1))
  assert set(episode) == {4, 5} and np.count_nonzero(np.diff(episode)) == 1  # whole episodes
  assert paired.num_classes == {"step": 4} and "same" not in paired.labels  # constant: dropped
  with pytest.raises(ValueError, match=r"Asked for 8 paired states, but the test\[0:2\] "
                                       "episodes of 'planted' hold only 7 steps"):
    data.paired_set(src, jax.random.key(1), data.stack_views(src, views), 8, evaluation)


def test_probes_fit_on_the_training_episodes_and_score_on_the_held_out_ones(planted_config):
  """eval.probe_fit "train": the fitting states are steps of training episodes, the scored
  ones steps of the evaluation split's; "eval": both from the evaluation split."""
  views = data.parse_views(planted_config, "front,wrist")
  src = data.source(planted_config)
  stacked, key = data.stack_views(src, views), jax.random.key(2)
  held_out = data.load_images(src, "test", views)
  on_train = data.fit_and_score_set(src, key, stacked, 9, 6, held_out,
                                    data.load_images(src, "train", views))
  chex.assert_shape(on_train.obs, (2, 15, 16, 16, 3))
  episode, step = decode(on_train.obs[0])
  assert set(episode[:9]) <= {0, 1, 2, 3} and set(episode[9:]) <= {4, 5}
  np.testing.assert_array_equal(np.asarray(on_train.labels["where"]), np.stack([episode, step], 1))
  np.testing.assert_array_equal(np.asarray(on_train.state[:, -2:]), np.stack([episode, step], 1))
  on_eval = data.fit_and_score_set(src, key, stacked, 5, 2, held_out)
  assert set(decode(on_eval.obs[0])[0]) <= {4, 5}
  with pytest.raises(ValueError, match=r"Unknown eval.probe_fit 'test'; valid: eval, train"):
    planted_config.eval.probe_fit = "test"
    configs.validate(planted_config)


def test_the_end_of_run_probes_fit_where_eval_probe_fit_says(planted_config):
  """At most eval.probe_train fitting and eval.probe_test scored states, each capped by its
  split: the training split's 15 steps (its episode 1 is too short for 3 frames) and the
  test split's 7, or shares of those 7."""
  views = data.parse_views(planted_config, "front,wrist")
  src = data.source(planted_config)
  held_out = data.load_images(src, "test", views)
  planted_config.eval.update(probe_train=100, probe_test=5)
  source = train._Source(src, None, None, None, held_out, None)  # pylint: disable=protected-access
  probe_set, n_fit = train._probe_states(planted_config, source, views)  # pylint: disable=protected-access
  episode, _ = decode(probe_set.obs[0])
  assert n_fit == 15 and len(episode) == 20
  assert set(episode[:15]) == {0, 2, 3} and set(episode[15:]) <= {4, 5}
  planted_config.eval.probe_fit = "eval"
  probe_set, n_fit = train._probe_states(planted_config, source, views)  # pylint: disable=protected-access
  assert n_fit == 6 and set(decode(probe_set.obs[0])[0]) == {4, 5}  # 100/105 of the 7


def test_frames_are_resized_by_stretching_and_flipped():
  frame = np.zeros((8, 16, 3), np.uint8)
  frame[:, :2, 0] = 255  # a red left edge, a green right edge
  frame[:, -2:, 1] = 255
  out = recordings.prepare_frames([frame], 4)[0]
  assert out.shape == (4, 4, 3)  # the whole width squeezed in: both edges kept, not cropped
  assert (out[:, 0, 0] > 100).all() and (out[:, -1, 1] > 100).all()
  assert (out[:, 1:3] < 50).all() and (out[:, 0, 1:] == 0).all()
  square = np.zeros((4, 4, 3), np.uint8)
  square[0, 1] = 255  # top row, second column
  np.testing.assert_array_equal(recordings.prepare_frames([square], 4)[0], square)
  assert recordings.prepare_frames([square], 4, "upside_down")[0][3, 1, 0] == 255
  assert recordings.prepare_frames([square], 4, "rotate180")[0][3, 2, 0] == 255
  with pytest.raises(ValueError, match="Unknown flip 'sideways'; valid: none, upside_down"):
    recordings.prepare_frames([frame], 8, "sideways")


@pytest.mark.parametrize("where", ["missing_dir", "empty_dir", "no_dir"])
def test_cameras_of_a_recording_not_found_say_where_it_was_looked_for(planted_config, where,
                                                                      tmp_path):
  """A wrong --data_dir said 'Unknown region view ... leave --dataset out': the error that
  opening the recording raised was swallowed, and the cameras were read as region views."""
  (tmp_path / "empty_dir").mkdir()
  planted_config.data.data_dir = "" if where == "no_dir" else str(tmp_path / where)
  expected = (FileNotFoundError, r"planted.*tfds build") if where != "no_dir" else (
      ValueError, "A recording's cameras need its --data_dir")
  with pytest.raises(expected[0], match=expected[1]) as info:
    data.parse_views(planted_config, "front,wrist")
  assert "region" not in str(info.value) or where == "no_dir"  # (images may come in memory)
  # World views beside a dataset still say to leave the dataset out, wherever it is.
  with pytest.raises(ValueError, match="valid region views: left.*leave --dataset out"):
    data.parse_views(planted_config, "mountain")


def test_views_labels_and_actions_come_from_the_recording(planted_config):
  with pytest.raises(ValueError, match="Unknown camera 'back' in recording 'planted'; cameras "
                                       "found: front, wrist"):
    data.parse_views(planted_config, "front,back")
  assert data.action_dim(planted_config) == 2
  planted_config.data.labels = "where,nope"
  with pytest.raises(ValueError, match="no probe label 'nope'; labels: same, step, where"):
    data.resolve(planted_config)
  planted_config.data.labels = "where"
  resolved = data.resolve(planted_config)
  assert resolved.data.action_dim == 2 and planted_config.data.action_dim == 0
  part = data.load_images(data.source(resolved), "test", ["front"])
  assert list(part.labels) == ["where"] and part.num_classes == {}


def test_camera_agents_trained_together_equal_agents_trained_alone(planted_config):
  planted_config.optim.eps = 1e-3  # see test_agents.test_vmapped_agents_equal_agents_trained_alone
  config = data.resolve(planted_config)

  def run(views):
    learner = configs.learner_from_config(config)
    step = train.make_step(learner, "lax_map", num_agents=len(views))
    state = agents.init_agents(learner, views, 0)
    source = data.on_device(data.load_images(data.source(config), "train", views))
    stacked, keys = data.stack_views(data.source(config), views), agents.agent_keys(0, views)
    for i in range(2):
      state, metrics = step(state, stacked, keys, i, source)
    return state, metrics
  together, metrics = run(["front", "wrist"])
  chex.assert_tree_all_finite(metrics)
  alone, _ = run(["wrist"])
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], together),
                              jax.tree.map(lambda x: x[0], alone), atol=1e-5, rtol=1e-5)


def test_a_run_on_frames_of_pure_noise_warns_that_it_learned_less_than_pixels(tmp_path):
  """Frames of uniform noise, and a label that is one of their pixels: pixel PCA keeps every
  pixel (48 of them, D = 48) and reads it; an agent that learns no structure (there is
  none) reads it worse. The run's probe report and its warning line say so."""
  rng = np.random.default_rng(0)
  def episode(e):
    frames = rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    return {"observation": {"front": frames, "pixel": frames[:, 1, 2, :1] / 255.0},
            "action": rng.normal(size=(8, 2)).astype(np.float32), "source": f"noise {e}"}
  eps = [episode(e) for e in range(40)]
  data_dir = str(tmp_path / "tfds")
  recording_writer.write("noise", data_dir, {"train": lambda: eps[:10],
                                             "test": lambda: eps[10:]}, eps[0])
  c = tiny_config()
  c.data.dataset, c.data.data_dir = "noise", data_dir
  c.data.image_size, c.model.patch, c.model.dim = 4, 2, 48
  c.eval.probe_train, c.eval.probe_test = 160, 80  # of the test split's 240 states
  report = train.train_and_evaluate(c, str(tmp_path / "run"), ["front"])
  scores = report["front"]
  assert scores["pixel_pca/pixel_r2"] > 0.95 > scores["trained/pixel_r2"]
  warning = evaluation.below_pixels_warning(report)
  assert warning.startswith("Warning: learned less than pixels: front pixel_r2 ")
  assert "\n" not in warning and "docs/recordings.md" in warning


# --- Bad input ---------------------------------------------------------------------------

def _bad(episode: dict, where: str = "episode 7") -> str:
  with pytest.raises(ValueError) as e:
    recording_writer.normalise_episode(episode, where)
  return str(e.value)


def test_each_bad_episode_is_named_before_anything_is_written():
  good = planted_episode(0, 4)
  no_action = {**good, "action": None}
  assert "episode 7: no action field" in _bad(no_action)
  short_camera = {**good, "observation": {**good["observation"],
                                           "wrist": good["observation"]["wrist"][:3]}}
  assert "different numbers of steps" in _bad(short_camera) and "'wrist': 3" in _bad(short_camera)
  no_camera = {**good, "observation": {"step": good["observation"]["step"]}}
  assert "no camera" in _bad(no_camera)
  nan = {**good, "action": good["action"].copy()}
  nan["action"][2, 1] = np.nan
  assert "'action' holds a NaN or inf at step 2" in _bad(nan)
  inf = {**good, "observation": {**good["observation"], "where": good["observation"]["where"] * 1}}
  inf["observation"]["where"][3] = np.inf
  assert "'where' holds a NaN or inf at step 3" in _bad(inf)
  first = recording_writer.signature(recording_writer.normalise_episode(good, "a")[0])
  lacking = {**good, "observation": {k: v for k, v in good["observation"].items() if k != "wrist"}}
  with pytest.raises(ValueError, match="episode 3 lacks 'observation/wrist', which episode 0 has"):
    recording_writer.check_same_signature(
        first, recording_writer.signature(recording_writer.normalise_episode(lacking, "b")[0]),
        "episode 0", "episode 3")


def test_the_reader_refuses_non_finite_values_and_damaged_files(tmp_path):
  data_dir = str(tmp_path / "tfds")
  episodes = [planted_episode(e, 4) for e in range(2)]
  episodes[1]["observation"]["where"][2, 0] = np.nan  # written by another tool, unchecked
  recording_writer.write("dirty", data_dir, {"train": lambda: episodes}, episodes[0])
  with pytest.raises(ValueError, match=r"episode 1 of split 'train'.*'where' holds a NaN or "
                                       "inf at step 2"):
    recordings.load("dirty", data_dir, "eval", ["front"],
                    OPTIONS._replace(holdout_fraction=0.5))
  path = write_planted(data_dir, "damaged", [4, 4, 4])
  shard = next(f for f in os.listdir(path) if "array_record" in f)
  with open(os.path.join(path, shard), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(path, shard)) // 2)
  with pytest.raises(ValueError, match=r"'damaged' cannot be read.*may be damaged"):
    recordings.load("damaged", data_dir, "train", ["front"], OPTIONS._replace(frames=2))


def test_a_recording_without_actions_is_refused(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
      "observation": {"front": tfds.features.Tensor(shape=(2, 2, 3), dtype=np.uint8)}})})
  frames = np.zeros((2, 2, 3), np.uint8)
  tfds_local.write_examples("actionless", str(tmp_path), features,
                            {"train": iter([(0, {"steps": [{"observation": {"front": frames}}]})])})
  with pytest.raises(ValueError, match="no `action` field in its steps"):
    recordings.layout("actionless", str(tmp_path))


def test_tfrecord_recordings_without_tensorflow_name_the_extra(tmp_path, monkeypatch):
  path = write_planted(str(tmp_path / "a"), "stored_as_tfrecord", [3, 3])
  info_path = os.path.join(path, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  info["fileFormat"] = "tfrecord"
  with open(info_path, "w") as f:
    json.dump(info, f)
  real = tfds_local.importlib.util.find_spec
  monkeypatch.setattr(tfds_local.importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorflow" else real(name, *a))
  with pytest.raises(errors.MissingExtraError, match=r"pip install -e \.\[tfrecord\]"):
    recordings.load("stored_as_tfrecord", str(tmp_path / "a"), "train", ["front"],
                    OPTIONS._replace(frames=2, holdout_fraction=0.5))


# --- Importing ---------------------------------------------------------------------------

def _cli(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def test_import_of_npz_files_per_episode_or_indexed_gives_one_recording(tmp_path):
  eps = [planted_episode(e, n) for e, n in enumerate([4, 3, 5])]
  flat = lambda ep: {**ep["observation"], "actions": ep["action"][:-1]}  # T - 1 actions
  for e, ep in enumerate(eps):
    np.savez(tmp_path / f"ep_{e}.npz", **flat(ep))
  rows = {k: np.concatenate([flat(ep)[k] if k != "actions" else ep["action"] for ep in eps])
          for k in flat(eps[0])}
  np.savez(tmp_path / "all.npz", episode=np.repeat([7, 3, 9], [4, 3, 5]), **rows)
  for name, files in (("per_episode", str(tmp_path / "ep_*.npz")),
                      ("indexed", str(tmp_path / "all.npz"))):
    written = episode_files.store(name, str(tmp_path / "tfds"), episode_files.npz_episodes(
        episode_files.find([files], "--npz")), test_episodes=1)
    assert written["episodes"] == {"train": 2, "test": 1}
    assert written["steps"] == {"train": 7, "test": 5}
    part = recordings.load(name, str(tmp_path / "tfds"), "eval", ["front", "wrist"],
                           recordings.Options(6, 2))
    assert decode(part.frames[0][:, :1, :1] / 255.0)[0].tolist() == [2] * 5
    np.testing.assert_array_equal(part.actions[:-1], eps[2]["action"][:-1])  # as recorded


def test_import_of_robomimic_hdf5_reads_demos_in_order(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top  (in requirements.txt: never skipped)
  path = str(tmp_path / "libero.hdf5")
  with h5py.File(path, "w") as f:
    group = f.create_group("data")
    group.attrs["problem_info"] = json.dumps({"language_instruction": "push the red block"})
    for e in (0, 2, 10, 1):  # written out of order: demo_10 is the last one
      ep = planted_episode(e, 3 + e % 3)
      demo = group.create_group(f"demo_{e}")
      demo.create_dataset("actions", data=ep["action"])
      demo.create_dataset("rewards", data=np.arange(len(ep["action"])) / 10)
      demo.create_dataset("dones", data=np.arange(len(ep["action"])) == len(ep["action"]) - 1)
      obs = demo.create_group("obs")
      marked = ep["observation"]["wrist"].copy()
      marked[:, 0] = 255  # the top row white: stored upside down, as robosuite renders
      obs.create_dataset("agentview_rgb", data=marked[:, ::-1])
      obs.create_dataset("eye_in_hand_rgb", data=ep["observation"]["front"])
      obs.create_dataset("ee_pos", data=ep["observation"]["where"])
      obs.create_dataset("depth", data=np.zeros((len(ep["action"]), 4, 4, 1), np.float32))
  refs = episode_files.hdf5_episodes([path])
  assert [r.where.split()[-1] for r in refs] == ["data/demo_0", "data/demo_1", "data/demo_2",
                                                 "data/demo_10"]
  written = episode_files.store("libero_like", str(tmp_path / "tfds"), refs)
  assert written["skipped"] == {"depth": "float32, (4, 4, 1) per step"}
  lay = recordings.layout("libero_like", str(tmp_path / "tfds"))
  assert lay.cameras == ("agentview_rgb", "eye_in_hand_rgb") and lay.labels == {"ee_pos": "value"}
  part = recordings.load("libero_like", str(tmp_path / "tfds"), "train", ["agentview_rgb"],
                         recordings.Options(4, 2, flip="upside_down", holdout_fraction=0.25))
  marked = planted_episode(0, 3)["observation"]["wrist"]
  marked[:, 0] = 255
  np.testing.assert_array_equal(part.frames[0][:3], marked)  # demo_0, the right way up
  step = tfds_local.builder("libero_like", str(tmp_path / "tfds")).as_data_source()["train"][3]
  last = step["steps"][len(step["steps"]) - 1]
  assert last["language_instruction"] == b"push the red block" and last["is_terminal"]
  assert last["reward"] == pytest.approx(0.3)


def test_bad_files_give_one_line_and_leave_nothing(tmp_path):
  np.savez(tmp_path / "ep_0.npz", **planted_episode(0, 4)["observation"],
           actions=planted_episode(0, 4)["action"])
  good = (tmp_path / "ep_0.npz").read_bytes()
  (tmp_path / "ep_1.npz").write_bytes(good[:len(good) // 2])  # truncated
  out = _cli("experiments.import_episodes", f"--npz={tmp_path / 'ep_*.npz'}", "--name=broken",
             f"--data_dir={tmp_path / 'tfds'}")
  assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
      f"error: {tmp_path / 'ep_1.npz'} is not a readable .npz file"), out.stderr[-2000:]
  assert not (tmp_path / "tfds").exists()
  (tmp_path / "ep_1.npz").unlink()
  np.savez(tmp_path / "ep_1.npz", **planted_episode(1, 4)["observation"])  # no actions
  with pytest.raises(ValueError, match=r"ep_1.npz: no action field"):
    episode_files.store("broken", str(tmp_path / "tfds"), episode_files.npz_episodes(
        episode_files.find([str(tmp_path / "ep_*.npz")], "--npz")))
  assert not (tmp_path / "tfds").exists()
  (tmp_path / "garbage.hdf5").write_bytes(b"not an hdf5 file" * 10)
  if episode_files.importlib.util.find_spec("h5py") is not None:
    with pytest.raises(ValueError, match="garbage.hdf5 is not a readable HDF5 file"):
      episode_files.hdf5_episodes([str(tmp_path / "garbage.hdf5")])


def test_pybullet_recording_imports_as_a_recording(tmp_path):
  pytest.importorskip("pybullet")
  out = _cli("experiments.record_pybullet", f"--out={tmp_path / 'pb'}", "--episodes=2",
             "--steps=4", "--image_size=16", "--cameras=front,wrist")
  assert out.returncode == 0, out.stderr[-2000:]
  written = episode_files.store("pushing", str(tmp_path / "tfds"), episode_files.npz_episodes(
      episode_files.find([str(tmp_path / "pb" / "ep_*.npz")], "--npz")))
  assert written["steps"] == {"train": 8, "test": 0}
  lay = recordings.layout("pushing", str(tmp_path / "tfds"))
  assert lay.cameras == ("front", "wrist") and lay.action_dim == 3
  assert lay.labels == {"effector_position": "value", "joint_positions": "value",
                        "object_orientation": "value", "object_position": "value",
                        "object_shape": "class"}


# --- End to end --------------------------------------------------------------------------

@pytest.mark.slow
def test_build_train_and_study_a_world_recording_end_to_end(world_dir, tmp_path):
  workdir = str(tmp_path / "run")
  out = _cli("experiments.train", f"--dataset={WORLD.name}", f"--data_dir={world_dir}",
             "--views=mountain,forest", f"--workdir={workdir}",
             "--config=experiments/configs/smoke.py", "--config.num_train_steps=4",
             "--config.model.dim=16", "--config.model.width=16", "--config.model.patch=4",
             "--config.data.batch_size=8", "--config.data.image_size=16",
             "--config.optim.warmup_steps=1", "--config.eval.probe_train=10",
             "--config.eval.probe_test=8", "--config.eval.probe_steps=10",
             "--config.eval.alignment_pairs=16")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Recording parts" in out.stdout and "actions normalised with the train mean" in out.stdout
  probe = json.load(open(os.path.join(workdir, "probe.json")))
  assert set(probe) == {"mountain", "forest"} and "trained/position_r2" in probe["forest"]
  out = _cli("experiments.align_and_probe", f"--workdir={workdir}", "--pairs=10",
             "--test_pairs=8", "--probe_steps=10")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Overlap undefined" in out.stdout
  report = json.load(open(os.path.join(workdir, "report.json")))
  source = report["source"]
  assert source["kind"] == "recording" and source["cameras"] == ["forest", "mountain"]
  assert (source["eval"]["episodes"], source["eval"]["steps"]) == (6, 18)
  assert (source["train"]["episodes"], source["train"]["steps"]) == (8, 24)
  assert report["overlap"]["matrix"] is None and report["overlap"]["undefined"]
  assert {"class_acc", "position_r2"} <= set(report["probes_by_view"]["mountain"]["jepa"])
  for p in report["pairs"]:
    assert p["overlap"] is None and np.isfinite(p["r2_ridge"]) and "transfer_position_r2" in p
    assert {"random_init", "shuffled_pairs", "identity", "pixel_pca"} <= set(p["controls"])
