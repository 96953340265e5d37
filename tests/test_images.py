"""Region views of a labelled image dataset: planted geometry, actions, and the study end to end."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjepa_jax import agents
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import evaluation
from sjepa_jax import images
from sjepa_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def striped_images(num: int, seed: int, side: int = 20):
  """Class c: horizontal stripes of period c + 2 at a random phase, plus noise; every
  region of the image shows its class."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, num)
  rows = np.arange(side)[None, :, None]
  phase = rng.integers(0, 6, (num, 1, 1))
  stripes = ((rows + phase) % (labels[:, None, None] + 2) == 0) * 200.0
  noisy = stripes + rng.uniform(0, 55, (num, side, side))
  return np.broadcast_to(noisy, (num, side, side)).astype(np.uint8), labels


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  images.store("stripes", path, {"train": striped_images(64, 0), "test": striped_images(64, 1)})
  return path


def test_regions_overlap_as_planted():
  names = ["left", "right", "top", "center"]
  overlap = images.overlap_matrix(names, 0.6, 20, 20)  # left: columns 0-11, right: 8-19
  np.testing.assert_allclose(np.diag(overlap), 1.0)
  assert overlap[0, 1] == pytest.approx(4 / 12) and overlap[1, 0] == pytest.approx(4 / 12)
  assert overlap[0, 2] == pytest.approx(12 * 12 / (20 * 12))  # left's top 12 rows
  assert overlap[3, 0] == pytest.approx(8 / 12)  # center: rows and columns 4-15
  assert overlap[0, 3] == pytest.approx(12 * 8 / (20 * 12))


def test_whole_region_at_its_own_size_is_its_pixels():
  pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  obs = images.region_obs(jnp.asarray(pixels), images.get_region("center", 0.5), 8)
  np.testing.assert_allclose(obs, pixels[:, 4:12, 4:12] / 255.0, atol=1e-6)


def test_actions_are_the_crops_offsets_and_scale_ratios():
  # Pixel values are their own coordinates, and bilinear sampling of a ramp is exact, so
  # each crop's mean value is its centre and its spread is its size.
  side, size = 24, 8
  r, c = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  pixels = np.stack([r * 10, c * 10, np.zeros_like(r)], -1)[None].astype(np.uint8)
  region = images.get_region("center", 0.5)  # pixels 6-17 both ways
  obs, actions = images.region_batch(jax.random.key(0), jnp.asarray(pixels), region,
                                     batch=5, frames=3, size=size, min_crop=0.5)
  assert obs.shape == (5, 3, size, size, 3) and actions.shape == (5, 2, 3)
  coords = np.asarray(obs) * 255 / 10  # (B, L, size, size, 2 + 1): row and column
  centre = coords[..., :2].mean((2, 3)) + 0.5
  extent = (coords[..., 0].max((2, 3)) - coords[..., 0].min((2, 3))) * size / (size - 1)
  assert (centre >= 6).all() and (centre <= 18).all()
  np.testing.assert_allclose(actions[..., :2], np.diff(centre, axis=1) / 12, atol=1e-4)
  np.testing.assert_allclose(actions[..., 2], np.diff(np.log(extent / 12), axis=1),
                             atol=1e-4)


def test_store_and_load_round_trip(dataset_dir):
  pixels, labels = striped_images(64, 1)
  test = images.load("stripes", dataset_dir, "test")
  assert test.pixels.shape == (64, 20, 20, 3) and test.num_classes == 4
  np.testing.assert_array_equal(test.pixels, np.repeat(pixels[..., None], 3, -1))
  np.testing.assert_array_equal(test.labels, labels)
  with pytest.raises(ValueError, match="no split 'validation'; valid splits: test, train"):
    images.load("stripes", dataset_dir, "validation")


def test_missing_dataset_says_where_and_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    images.load("cifar10", str(tmp_path), "train")
  message = str(e.value)
  assert str(tmp_path) in message and "tfds build cifar10" in message
  assert "nothing is ever downloaded" in message
  assert os.listdir(tmp_path) == []  # nothing written, nothing fetched
  with pytest.raises(ValueError, match="give --data_dir"):
    images.load("cifar10", "", "train")


def test_views_must_fit_the_source(config):
  with pytest.raises(ValueError, match="Region views need a dataset"):
    data.parse_views(config, "left,right")
  config.data.dataset = "stripes"
  with pytest.raises(ValueError, match="valid region views: left, right.*leave --dataset out"):
    data.parse_views(config, "forest")
  config.data.region_size = 1.5
  with pytest.raises(ValueError, match="region_size must be in"):
    configs.validate(config)


def test_vmapped_region_agents_equal_agents_trained_alone(config, dataset_dir):
  config.data.dataset, config.data.data_dir = "stripes", dataset_dir
  config.optim.eps = 1e-3  # see test_agents.test_vmapped_agents_equal_agents_trained_alone
  pixels = jnp.asarray(images.load("stripes", dataset_dir, "train").pixels)

  def run(views):
    learner = configs.learner_from_config(config)
    step = train.make_step(learner, "lax_map", num_agents=len(views))
    state = agents.init_agents(learner, views, 0)
    stacked, keys = data.stack_views(data.source(config), views), agents.agent_keys(0, views)
    for i in range(2):
      state, metrics = step(state, stacked, keys, i, pixels)
    return state, metrics
  together, metrics = run(["left", "right"])
  chex.assert_tree_all_finite(metrics)
  alone, _ = run(["right"])
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], together),
                              jax.tree.map(lambda x: x[0], alone), atol=1e-5, rtol=1e-5)


def train_cli(workdir: str, views: str, data_dir: str) -> dict:
  """``experiments.train`` on the stripes dataset with a tiny model; returns probe.json."""
  out = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--dataset=stripes",
       f"--data_dir={data_dir}", f"--views={views}", f"--workdir={workdir}",
       "--config=experiments/configs/smoke.py", "--config.num_train_steps=4",
       "--config.model.dim=16", "--config.model.width=16", "--config.model.patch=4",
       "--config.data.batch_size=8", "--config.data.image_size=16",
       "--config.optim.eps=1e-3",  # an agent trained alone equals its vmapped self to ~1e-6
       "--config.optim.warmup_steps=1", "--config.eval.probe_train=48",
       "--config.eval.probe_test=16", "--config.eval.probe_steps=10",
       "--config.eval.alignment_pairs=16"],
      cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.load(open(os.path.join(workdir, "probe.json")))


@pytest.mark.slow
def test_train_and_align_on_a_dataset_end_to_end(tmp_path, dataset_dir):
  main, twin = str(tmp_path / "main"), str(tmp_path / "twin")
  probe = train_cli(main, "left,right", dataset_dir)
  assert set(probe) == {"left", "right"} and "trained/class_acc" in probe["left"]
  assert "trained/position_r2" not in probe["left"]  # a dataset has labels, not positions
  # The same right agent again, alone: its keys depend only on the seed and its view.
  train_cli(twin, "right", dataset_dir)

  out = subprocess.run(
      [sys.executable, "-m", "experiments.align_and_probe", f"--workdirs={main},{twin}",
       "--pairs=40", "--test_pairs=24", "--probe_steps=20"],
      cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.load(open(os.path.join(main, "report.json")))
  assert report["source"] == {"dataset": "stripes", "split": "test", "region_size": 0.6,
                              "image_shape": [20, 20, 3]}
  assert set(report["probes_by_view"]["left"]["jepa"]) == {"class_acc", "class_mlp_acc"}
  assert [(p["source"], p["target"]) for p in report["pairs"]] == [("left", "right"),
                                                                   ("right", "left")]
  for p in report["pairs"]:
    assert p["overlap"] == pytest.approx(4 / 12)
    assert (p["n_fit"], p["n_test"]) == (40, 24)
    for field in ("r2_lstsq", "r2_procrustes", "isometry_gap", "cka_unbiased", "native_acc",
                  "transfer_acc"):
      assert np.isfinite(p[field]), field
    assert "transfer_position_r2" not in p
    assert {"random_init", "shuffled_pairs", "identity", "pixel_pca"} <= set(p["controls"])
  ceiling = report["pairs"][1]["controls"]["same_view"]  # right: the planted twin
  assert ceiling["agents"] == ["right", "right_seed0"]
  assert ceiling["r2_ridge"] > 0.999 and abs(ceiling["isometry_gap"]) < 1e-3
  assert ceiling["transfer_acc"] == pytest.approx(ceiling["native_acc"], abs=0.05)


def test_eval_split_must_differ_from_train_split(config):
  config.data.dataset, config.data.eval_split = "stripes", "train"
  with pytest.raises(ValueError, match="both 'train'.*never trained on"):
    configs.validate(config)


def test_probe_set_keeps_its_share_on_a_small_split(config):
  config.eval.probe_train, config.eval.probe_test = 4000, 1000
  assert evaluation.probe_train_size(config, 6000) == 4000
  assert evaluation.probe_train_size(config, 1500) == 1200  # 80%, as 4000 of 5000


def test_import_images_refuses_float_images(tmp_path):
  npz = str(tmp_path / "floats.npz")
  np.savez(npz, images=np.random.default_rng(0).random((10, 8, 8)), labels=np.arange(10))
  out = subprocess.run(
      [sys.executable, "-m", "experiments.import_images", f"--npz={npz}", "--name=floats",
       f"--data_dir={tmp_path / 'tfds'}", "--test_size=2"],
      cwd=ROOT, capture_output=True, text=True)
  assert out.returncode != 0 and "images must be integers in [0, 255]" in out.stderr
  assert not (tmp_path / "tfds").exists()  # nothing half-written
