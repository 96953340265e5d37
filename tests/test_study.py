"""The alignment-and-transfer study end to end, with a planted twin as the answer."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import sjepa_jax as sj
from sjepa_jax import align
from sjepa_jax import compare
from sjepa_jax import study
from sjepa_jax import summaries
from sjepa_jax import train
from sjepa_jax import world
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pixel_pca_keeps_the_top_principal_variance():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  low_rank = jax.random.normal(k1, (300, 5)) @ jax.random.normal(k2, (5, 48))
  obs = (low_rank + 0.01 * jax.random.normal(k3, (300, 48))).reshape(300, 4, 4, 3)
  feats = np.asarray(compare.pixel_pca(obs, 200, 5, jax.random.key(1)))
  x = np.asarray(obs).reshape(300, -1)[:200]
  top = np.linalg.svd(x - x.mean(0), compute_uv=False)[:5] ** 2
  np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(np.cov(feats[:200].T, bias=True)
                                                        * 200))[::-1], top, rtol=1e-3)


def test_the_identity_control_has_its_own_r2_key_and_the_margins_read_it():
  """The identity map's R^2 was stored as ``r2_lstsq``, the name of a fitted map's."""
  k1, k2 = jax.random.split(jax.random.key(2))
  z = jax.random.normal(k1, (64, 4))
  labels = {"class": jax.random.randint(k2, (64,), 0, 3), "position": z[:, :2]}
  space = compare.make_space(z, labels, 48, probe_steps=5, num_classes={"class": 3})
  out = compare.identity_control(space, space, labels, 48)
  assert out["r2_identity"] == pytest.approx(1.0) and "r2_lstsq" not in out
  pair = {"seed": 0, "r2_ridge": 0.5, "isometry_gap": 0.1, "native_acc": 0.8, "transfer_acc": 0.6,
          "controls": {"identity": {"r2_identity": -3.0, "transfer_acc": 0.1}}}
  margins = summaries.summarise([pair], chance_acc=0.1)["control_margins"]
  assert margins["identity"]["r2"] == pytest.approx(3.5)


@pytest.mark.slow
def test_align_and_probe_end_to_end_with_a_planted_twin(tmp_path):
  config = tiny_config()
  config.optim.eps = 1e-3  # so an agent trained alone equals its vmapped self to ~1e-6
  main, twin, ae = (str(tmp_path / n) for n in ("main", "twin", "ae"))
  train.train_and_evaluate(config, main, "mountain,forest,drone")
  # An agent's keys depend only on the seed and its view: this is main's forest agent again.
  train.train_and_evaluate(config, twin, "forest")
  config.objective.kind = "autoencoder"
  train.train_and_evaluate(config, ae, "mountain,forest")
  with pytest.raises(ValueError, match="at least two views with one seed; the runs hold.*forest"):
    study.run([twin], n_fit=16, n_test=16)

  out = subprocess.run(
      [sys.executable, "-m", "experiments.align_and_probe", f"--workdirs={main},{twin},{ae}",
       "--pairs=96", "--test_pairs=48", "--probe_steps=20"],
      cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Controls, means over the pairs" in out.stdout
  report = json.load(open(os.path.join(main, "report.json")))
  assert len(report["pairs"]) == 6  # ordered pairs of three views
  assert sorted(os.listdir(os.path.join(main, "figures"))) == [
      "alignment_scatter.png", "overlap_vs_alignment.png", "r2_vs_pairs.png",
      "singular_values.png", "transfer_table.png"]
  views, overlap = report["overlap"]["views"], np.asarray(report["overlap"]["matrix"])
  np.testing.assert_allclose(np.diag(overlap), 1.0)  # a view sees all it sees
  assert not np.allclose(overlap, overlap.T)  # asymmetric: a swapped pair would show
  for p in report["pairs"]:
    for field in ("source", "target", "overlap", "n_fit", "n_test", "r2_lstsq",
                  "r2_procrustes", "isometry_gap", "cka_unbiased", "native_acc",
                  "transfer_acc", "r2_shared_space"):
      assert field in p, field
    assert (p["n_fit"], p["n_test"]) == (96, 48)
    assert p["overlap"] == overlap[views.index(p["source"]), views.index(p["target"])]
    c = p["controls"]
    assert {"random_init", "shuffled_pairs", "identity", "pixel_pca"} <= set(c)
    assert c["shuffled_pairs"]["r2_ridge"] < 0.1  # a map of shuffled pairs predicts nothing
    assert (c["autoencoder"] is None) == ("drone" in (p["source"], p["target"]))
    assert ("same_view" in c) == (p["source"] == "forest")
    if p["source"] == "forest":  # the twin: the map is the identity, transfer is lossless
      twin_result = c["same_view"]
      assert twin_result["agents"] == ["forest", "forest_seed0"]
      assert twin_result["r2_ridge"] > 0.999 and twin_result["r2_procrustes"] > 0.999
      assert abs(twin_result["isometry_gap"]) < 1e-3
      assert twin_result["transfer_acc"] == pytest.approx(twin_result["native_acc"], abs=0.03)
  assert report["r2_vs_pairs"]["forest_to_mountain"]["n"][-1] == 96
  agents = report["agents"]  # every label's probe per agent, twin for twin
  for score in summaries.PROBE_SCORES:
    assert isinstance(agents["forest"][score], float), score
    if score != "class_mlp_acc":  # the diagnostic MLP probe reads the studied agents only
      assert agents["forest"][score] == agents["forest_seed0"][score], score
  assert "class_mlp_acc" not in agents["forest_seed0"]
  assert agents["forest"]["shape_acc"] != agents["mountain"]["shape_acc"]
  assert all(isinstance(f["pixel_pca_shape_acc"], float) for f in report["floors"].values())
  by_view = report["probes_by_view"]  # floors, the agents and the controls, per view
  assert list(by_view["mountain"]) == ["pixel_pca", "random_init", "jepa", "autoencoder"]
  assert by_view["forest"]["jepa"]["shape_acc"][2] == 2  # the agent and its twin
  assert by_view["mountain"]["jepa"]["class_acc"][0] == agents["mountain"]["class_acc"]
  assert set(report["summary"]["goals_met"]) == {"r2", "isometry_gap", "transfer",
                                                 "controls_worse"}


@pytest.mark.slow
def test_seeds_give_pairs_per_seed_spreads_and_free_same_view_ceilings(tmp_path):
  """Two seeds in one run: every figure is measured per seed, the summary's spread is the
  std of the per-seed means, and each view's two seeds pair up as its same-view ceiling;
  a supervised run joins as a control on the same views."""
  config = tiny_config()
  seeds_run, sup = str(tmp_path / "seeds"), str(tmp_path / "sup")
  train.train_and_evaluate(config, seeds_run, "mountain,forest", seeds=[0, 1])
  config.objective.kind = "supervised"
  train.train_and_evaluate(config, sup, "mountain,forest")
  report, extras = study.run([seeds_run, sup], n_fit=64, n_test=32, probe_steps=10)
  _check_exported_keys(report, extras, str(tmp_path / "keys"))
  assert sorted((p["seed"], p["target"], p["source"]) for p in report["pairs"]) == [
      (0, "forest", "mountain"), (0, "mountain", "forest"),
      (1, "forest", "mountain"), (1, "mountain", "forest")]
  s = report["summary"]
  assert s["seeds"] == [0, 1]
  per_seed = [np.mean([p["r2_ridge"] for p in report["pairs"] if p["seed"] == k])
              for k in (0, 1)]
  np.testing.assert_allclose(s["r2_ridge"], np.mean(per_seed), rtol=1e-6)
  np.testing.assert_allclose(s["spread"]["r2_ridge"], np.std(per_seed), rtol=1e-6)
  assert s["spread"]["r2_ridge"] > 0  # two seeds' agents differ
  for p in report["pairs"]:
    a, b = p["controls"]["same_view"]["agents"]
    assert a == f"{p['source']}_s{p['seed']}" and b == f"{p['source']}_s{1 - p['seed']}"
    assert p["controls"]["supervised"]["agents"] == [f"{p['target']}_supervised",
                                                    f"{p['source']}_supervised"]
  assert s["controls"]["same_view"]["pairs"] == 4
  assert report["agents"]["mountain_supervised"]["kind"] == "supervised"
  assert {"participation_ratio", "effective_rank", "rankme", "isotropic_effective_rank"} <= set(
      report["agents"]["forest_s1"])


def _check_exported_keys(report, extras, folder):
  """The exported files hold the study's maps and probes: loaded and applied on the
  held-out latents they score what the study reported, and they name who they join."""
  sizes = study.export(report, extras, folder)
  assert len(sizes) == 4 * 2 + 4 * len(world.scene.PROBED)  # 4 ordered pairs x 2 maps
  n_fit, labels = report["n_fit"], extras["labels"]
  pair = next(p for p in report["pairs"] if p["seed"] == 1 and p["source"] == "forest")
  path = os.path.join(folder, "maps", "mountain_s1_to_forest_s1.ridge.npz")
  meta = sj.load_meta(path)
  assert meta["source"]["name"] == "forest_s1" and meta["target"]["view"] == "mountain"
  assert meta["n_fit"] == n_fit and meta["held_out_r2"] == pair["r2_ridge"]
  source, target = extras["agents"]["forest_s1"], extras["agents"]["mountain_s1"]
  held_out = lambda a: a.encode(extras["obs"][(a.view, a.image_size)][n_fit:])
  mapped = sj.load(path).apply(held_out(target))
  np.testing.assert_allclose(float(align.r2_score(mapped, held_out(source))),
                             pair["r2_ridge"], atol=1e-4)
  probe = sj.load(os.path.join(folder, "probes", "forest_s1.class.npz"))
  np.testing.assert_allclose(float(probe.score(mapped, labels["class"][n_fit:])),
                             pair["transfer_acc"], atol=1e-6)
  with pytest.raises(ValueError, match="takes latents of size 16, got 3"):
    sj.load(path).apply(np.zeros((2, 3)))


@pytest.mark.parametrize("change, failed", [
    ({}, None),
    ({"r2_ridge": 0.89}, "r2"),
    ({"isometry_gap": 0.06}, "isometry_gap"),
    ({"transfer_acc": 0.84, "native_acc": 0.86}, "transfer"),  # 98% of native, under 0.85
    ({"transfer_acc": 0.86, "native_acc": 0.95}, "transfer"),  # over 0.85, 90% of native
    ({"pixel_pca": 0.81}, "controls_worse"),  # a control's transfer only 0.09 below
])
def test_goal_verdicts_fail_exactly_the_goal_that_is_missed(change, failed):
  """A planted summary that meets every goal, then one goal missed at a time."""
  pair = {"seed": 0, "r2_ridge": 0.95, "isometry_gap": 0.02, "native_acc": 0.92,
          "transfer_acc": 0.9,
          "controls": {"random_init": {"r2_ridge": 0.1, "transfer_acc": 0.2},
                       # R^2 far below, transfer set by the case: a verdict on R^2 passes it.
                       "pixel_pca": {"r2_ridge": 0.5, "transfer_acc": 0.5}}}
  pair.update({k: v for k, v in change.items() if k != "pixel_pca"})
  if "pixel_pca" in change:
    pair["controls"]["pixel_pca"]["transfer_acc"] = change["pixel_pca"]
  met = summaries.summarise([pair], chance_acc=0.1)["goals_met"]
  assert {k for k, ok in met.items() if not ok} == ({failed} if failed else set())
