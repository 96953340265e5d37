"""The benchmarks and show_views write the tables they print as JSON (what docs/ keeps and
the README quotes), run here at toy sizes in fresh processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module: str, *flags: str) -> None:
  out = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.slow
def test_render_and_align_benchmarks_write_their_tables(tmp_path):
  render_json, align_json = tmp_path / "render.json", tmp_path / "align.json"
  _run("benchmarks.render", "--batches=1,2", "--size=8", "--repeats=1",
       "--views=mountain,river", f"--json={render_json}")
  table = json.loads(render_json.read_text())["frames_per_second"]
  assert set(table) == {"mountain", "river"} and set(table["river"]) == {"1", "2"}
  assert all(f > 0 for row in table.values() for f in row.values())
  _run("benchmarks.align", "--n=64", "--dim=8", "--n_quadratic=32", "--repeats=1",
       f"--json={align_json}")
  report = json.loads(align_json.read_text())
  assert [r["operation"] for r in report["rows"]][:2] == ["lstsq map", "ridge map (fixed l2)"]
  assert report["total_jax_ms"] == pytest.approx(sum(r["jax_ms"] for r in report["rows"]))


@pytest.mark.slow
def test_show_views_writes_the_overlap_matrix_it_prints(tmp_path):
  path = tmp_path / "views.json"
  _run("experiments.show_views", "--views=mountain,forest", "--size=8", "--rows=1",
       "--overlap_states=2", f"--out={tmp_path / 'v.png'}", f"--json={path}")
  report = json.loads(path.read_text())
  overlap = np.asarray(report["overlap"])
  assert report["views"] == ["mountain", "forest"] and overlap.shape == (2, 2)
  np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-6)  # a view sees all it sees


def test_op_profile_times_the_ops_of_a_gradient_and_names_their_phase():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import op_profile  # pylint: disable=g-import-not-at-top
  w, x = jnp.ones((64, 48)), jnp.ones((32, 64))
  compiled = jax.jit(jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w) ** 2))).lower(w).compile()
  compiled(w).block_until_ready()
  seconds = op_profile.trace_op_seconds(lambda: compiled(w), steps=3)
  rows = op_profile.op_table(compiled.as_text(), seconds, steps=3)
  assert sum(r["share"] for r in rows) == pytest.approx(1.0)
  assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
  # The forward x @ w is (32, 48); the gradient x^T @ g is (64, 48), under transpose.
  matmuls = {(r["phase"], r["shape"]) for r in rows if "dot" in r["what"]}
  assert matmuls == {("forward", "f32[32,48]"), ("backward", "f32[64,48]")}, rows
  assert op_profile.summarise(rows)["matmul ops"] > 0


@pytest.mark.slow
def test_the_scaling_benchmark_times_each_agent_count_and_mapping(tmp_path):
  path = tmp_path / "scaling.json"
  _run("benchmarks.scaling", "--recipes=default", "--agents=1,2", "--modes=lax_map",
       "--steps=1", "--repeats=1", "--batch=4", "--image_size=16", "--peak_tflops=1",
       f"--json={path}")
  report = json.loads(path.read_text())
  assert [(r["recipe"], r["agent_map"], r["agents"]) for r in report["rows"]] == [
      ("default", "lax_map", 1), ("default", "lax_map", 2)]
  one, two = report["rows"]
  assert two["step_flops"] == pytest.approx(2 * one["step_flops"], rel=0.03)  # A agents' work
  for r in report["rows"]:
    assert r["agent_steps_per_s"] > 0 and r["compile_s"] > 0
    assert r["images_per_s"] == pytest.approx(r["agent_steps_per_s"] * 4 * 3)  # batch x frames
    assert r["mfu"] == pytest.approx(r["flops_per_s"] / 1e12)


@pytest.mark.slow
def test_rendering_beside_the_step_trains_on_the_same_batches(tmp_path):
  path = tmp_path / "beside.json"
  _run("benchmarks.render_beside_step", "--batch=4", "--image_size=16", "--rounds=1",
       "--steps=2", f"--json={path}")
  report = json.loads(path.read_text())
  assert set(report["ms"]) == {"render", "train", "in turn", "beside, one device",
                               "beside, two devices"}
  assert all(v > 0 for v in report["ms"].values())
  assert report["same_parameters"] is True  # every feeding trains on the same batches


@pytest.mark.slow
def test_the_sources_benchmark_studies_each_source_beside_its_floors_and_ceiling(tmp_path):
  """One source (the world, tiny): JEPA on two seeds and an autoencoder, then the study; its
  report holds every floor, the two-seed ceiling and the wall times, and is reused."""
  from benchmarks import sources  # pylint: disable=import-outside-toplevel
  from tests.conftest import tiny_config  # pylint: disable=import-outside-toplevel
  run = lambda: sources.run_source("world", "", str(tmp_path / "runs"), [0, 1],
                                   str(tmp_path / "out"), base=tiny_config, pairs=(64, 32))
  report = run()
  assert set(report["wall_s"]) == {"jepa", "autoencoder", "study"}
  by_kind = report["probes_by_view"]["forest"]
  assert {"jepa", "autoencoder", "pixel_pca", "random_init"} <= set(by_kind)
  assert by_kind["jepa"]["position_r2"][2] == 2  # both seeds
  assert "same_view" in report["summary"]["controls"]
  assert json.loads((tmp_path / "out" / "world" / "report.json").read_text()) == report
  assert run() == report  # read back: nothing trained or studied again
  table = sources.rows(report)
  assert ("forest", "position_r2") in {(v, label) for v, label, *_ in table}
  # The goal: above pixel PCA by 0.1, or by half of what it leaves to 1, where it reads.
  assert sources.label_goal("x_r2", 0.61, 0.5, 0.0) and not sources.label_goal("x_r2", 0.59, 0.5, 0.0)
  assert sources.label_goal("x_r2", 0.9, 0.1, 0.0) is None  # pixel PCA does not read it
  assert sources.label_goal("x_acc", 0.98, 0.95, 0.5) and not sources.label_goal("x_acc", 0.97, 0.95, 0.5)
  assert sources.label_goal("x_acc", 0.9, 0.52, 0.5) is None
  with pytest.raises(ValueError, match=r"Not in .*: mujoco_tabletop\. Make them first: "
                                       r"mujoco_tabletop: python -m experiments.record_mujoco"):
    sources.check_available(["world", "mujoco_tabletop"], str(tmp_path))
  with pytest.raises(ValueError, match=r"Unknown source\(s\) moon; valid: world, "):
    sources.check_available(["moon"], str(tmp_path))
