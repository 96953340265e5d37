"""Migration: the map from running statistics, equality with scratch at weight 0, the command."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import migrate as migrate_config
from sjepa_jax import agents
from sjepa_jax import align
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import flops
from sjepa_jax import metrics_io
from sjepa_jax import migrate
from sjepa_jax import models
from sjepa_jax import train
from sjepa_jax import world
from tests.conftest import tiny_config, init_agents

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_map_from_running_statistics_recovers_a_planted_rotation_and_scale():
  k1, k2 = jax.random.split(jax.random.key(0))
  r, _ = jnp.linalg.qr(jax.random.normal(k1, (8, 8)))
  stats = migrate.init_stats(8, 8)
  for i in range(5):  # batches of 16 < 2 x dims: one batch alone would not pin the map
    z_s = jax.random.normal(jax.random.fold_in(k2, i), (16, 8)) * jnp.linspace(0.5, 2, 8)
    stats = migrate.update_stats(stats, z_s, 0.4 * z_s @ r + 3.0, decay=0.8)
  m = migrate.procrustes_map(stats)
  np.testing.assert_allclose(m.w, 0.4 * r, atol=1e-4)
  z = jax.random.normal(k1, (10, 8))
  np.testing.assert_allclose(m.apply(z), 0.4 * z @ r + 3.0, atol=1e-3)


def test_the_running_map_of_one_batch_is_the_procrustes_fit_of_that_batch():
  """One Procrustes (``align.procrustes_from_moments``) for the study and the migration."""
  k1, k2 = jax.random.split(jax.random.key(3))
  z_s, z_t = jax.random.normal(k1, (40, 6)), jax.random.normal(k2, (40, 5))
  stats = migrate.update_stats(migrate.init_stats(6, 5), z_s, z_t, decay=0.9)
  chex.assert_trees_all_close(migrate.procrustes_map(stats), align.fit_procrustes(z_s, z_t),
                              atol=1e-5)


def test_flops_to_reach_is_the_first_point_at_target_or_none():
  curve = [{"flops": 0.0, "class_acc": 0.1}, {"flops": 5.0, "class_acc": 0.6},
           {"flops": 9.0, "class_acc": 0.5}]
  assert migrate.flops_to_reach(curve, 0.55) == 5.0
  assert migrate.flops_to_reach(curve, 0.7) is None


def _student_config(teacher_config):
  c = migrate_config.get_config()
  c.num_train_steps = 4
  c.eval_every = 2
  c.eval.probe_train, c.eval.probe_test, c.eval.probe_steps = 48, 16, 10
  return migrate.student_config(teacher_config, c)


def _scratch_and_student(weight: float, steps: int = 2):
  """A scratch and a migrating student after ``steps`` steps from the same initial
  parameters, keys and batches; the migrating student's last metrics."""
  teacher_config = tiny_config()
  config = _student_config(teacher_config)
  config.migrate.weight = weight
  teacher = init_agents(teacher_config, ["mountain"], 7).params["encoder"]
  teacher = jax.tree.map(lambda x: x[0], teacher)
  teacher_model = configs.model_from_config(teacher_config)
  learner = configs.learner_from_config(config)
  key = agents.agent_keys(0, ["forest"])[0]
  scratch = agents.init_agent(learner, key)
  student = migrate.Student(scratch, migrate.init_stats(16, 16))
  sv, tv = world.get_view("forest"), world.get_view("mountain")
  m = config.migrate
  scratch_step = jax.jit(lambda s, i: agents.train_step(learner, s, sv, key, i))
  student_step = jax.jit(lambda s, i: migrate.migrate_step(
      learner, teacher_model, m.weight, m.map_decay, s, sv, tv, key, i, teacher))
  for i in range(steps):
    scratch, _ = scratch_step(scratch, i)
    student, metrics = student_step(student, i)
  return scratch, student, metrics


def test_zero_weight_migration_is_exactly_scratch_training():
  scratch, student, metrics = _scratch_and_student(0.0)
  chex.assert_trees_all_close(student.agent, scratch, atol=1e-6)
  assert float(metrics["distill"]) > 0  # measured, but weightless
  assert int(student.stats.count) == 2


def test_weighted_migration_moves_the_student_away_from_scratch():
  """The converse: with the same keys and batches, a weight > 0 must change the encoder
  (else the comparison of the scratch and migrating curves measures nothing)."""
  scratch, student, _ = _scratch_and_student(1.0, steps=3)
  init = agents.init_agent(configs.learner_from_config(_student_config(tiny_config())),
                           agents.agent_keys(0, ["forest"])[0])
  norm = lambda a, b: float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))
  moved = norm(scratch.params["encoder"], init.params["encoder"])
  apart = norm(student.agent.params["encoder"], scratch.params["encoder"])
  # Measured: apart = 0.9% of moved (two updates after a zero-learning-rate first step); a
  # weight the step ignores leaves apart at 0 (the zero-weight test holds it to 1e-6).
  assert apart > 1e-3 * moved, (apart, moved)


def _step_flops_by_parts(student_view: str, teacher_view: str) -> dict[str, float]:
  """The scratch step's count, and the parts the migrating step adds, each counted alone:
  rendering the teacher's batch, the teacher's forward pass, the D x E SVD of the map fit
  (14 D E^2 + 8 E^3, thin) and the N x D x E products of the statistics and the map."""
  teacher_config = tiny_config()
  config = _student_config(teacher_config)
  d, dim_s, dim_t = config.data, config.model.dim, teacher_config.model.dim
  key = agents.agent_keys(0, [student_view])[0]
  sv, tv = world.get_view(student_view), world.get_view(teacher_view)
  learner = configs.learner_from_config(config)
  teacher_learner = configs.learner_from_config(teacher_config)
  agent = jax.eval_shape(lambda: agents.init_agent(learner, key))
  teacher = jax.eval_shape(lambda: agents.init_agent(teacher_learner, key).params["encoder"])
  m = config.migrate
  obs = jax.ShapeDtypeStruct((d.batch_size, d.frames, d.image_size, d.image_size, 3),
                             jnp.float32)
  n = d.batch_size * d.frames
  student = migrate.Student(agent, migrate.init_stats(dim_s, dim_t))
  return {
      "scratch": flops.count_flops(lambda s, k, i: agents.train_step(learner, s, sv, k, i),
                                   agent, key, jnp.int32(0)),
      "migrate": flops.count_flops(lambda s, k, i, t: migrate.migrate_step(
          learner, teacher_learner.model, m.weight, m.map_decay, s, sv, tv, k, i, t),
          student, key, jnp.int32(0), teacher),
      "render": flops.count_flops(lambda k: data.world_batch(
          k, tv, d.batch_size, d.frames, d.image_size), key),
      "teacher": flops.count_flops(lambda t, o: models.encode(teacher_learner.model, t, o),
                                   teacher, obs),
      "svd": 14 * dim_s * dim_t**2 + 8 * dim_t**3,
      "products": 2 * n * dim_s * dim_t}


def test_the_migrating_step_costs_scratch_plus_the_teacher_and_the_map_fit():
  """Not the step's own count restated: its excess over scratch, against its parts counted
  one by one. The products (the cross-covariance, the map and its gradient) are measured
  at 4.2 N x D x E products; anything the step did not count would fall below the band."""
  c = _step_flops_by_parts("drone", "mountain")
  extra = c["migrate"] - c["scratch"]
  known = c["render"] + c["teacher"] + c["svd"]
  assert known + 3 * c["products"] <= extra <= known + 6 * c["products"], c


@pytest.mark.slow
def test_migrate_command_end_to_end_counts_the_teachers_flops(tmp_path):
  teacher_dir = str(tmp_path / "teacher")
  train.train_and_evaluate(tiny_config(), teacher_dir, "mountain,forest")
  out_dir = str(tmp_path / "out")
  out = subprocess.run(
      [sys.executable, "-m", "experiments.migrate", f"--teacher_workdir={teacher_dir}",
       "--student_view=drone", "--target_acc=0.3", f"--workdir={out_dir}",
       "--config.num_train_steps=4", "--config.eval_every=2", "--config.eval.probe_train=48",
       "--config.eval.probe_test=16", "--config.eval.probe_steps=10"],
      cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.load(open(os.path.join(out_dir, "report.json")))
  assert os.path.exists(os.path.join(out_dir, "accuracy_vs_flops.png"))
  assert report["teacher_view"] == "mountain" and report["student_view"] == "drone"
  per_step = report["flops_per_step"]
  parts = _step_flops_by_parts("drone", "mountain")
  assert per_step == {"scratch": parts["scratch"], "migrate": parts["migrate"]}
  curves = report["curves"]
  for mode in ("scratch", "migrate"):
    assert [p["step"] for p in curves[mode]] == [0, 2, 4]
    np.testing.assert_allclose([p["flops"] for p in curves[mode]],
                               [0, 2 * per_step[mode], 4 * per_step[mode]])
  assert curves["scratch"][0] == curves["migrate"][0]  # same init
  # The FLOPs to reach each target and their ratio, by hand from the curves. The scratch
  # student always reaches its own final accuracy, so that entry is never vacuous.
  assert report["at_scratch_final_acc"]["target_acc"] == curves["scratch"][-1]["class_acc"]
  assert report["at_scratch_final_acc"]["flops_scratch"] is not None
  for entry in (report, report["at_scratch_final_acc"]):
    first = {mode: next((p["flops"] for p in curves[mode]
                         if p["class_acc"] >= entry["target_acc"]), None) for mode in curves}
    assert (entry["flops_scratch"], entry["flops_migrate"]) == (first["scratch"],
                                                                first["migrate"])
    if first["scratch"] and first["migrate"] is not None:
      assert entry["ratio"] == pytest.approx(first["migrate"] / first["scratch"])
    else:
      assert entry["ratio"] is None  # never a made-up number (nor a division by 0 FLOPs)


def test_the_ratio_is_the_migrating_students_flops_over_the_scratch_ones():
  """Planted curves where every case of the ratio is known by hand."""
  curve = lambda *points: [{"flops": f, "class_acc": a} for f, a in points]
  curves = {"scratch": curve((0, 0.1), (10, 0.3), (20, 0.6), (30, 0.7)),
            "migrate": curve((0, 0.1), (15, 0.65), (30, 0.8))}
  assert migrate._ratio(curves, 0.6) == {"flops_scratch": 20, "flops_migrate": 15,
                                         "ratio": 0.75}
  assert migrate._ratio(curves, 0.75)["ratio"] is None  # scratch never gets there
  assert migrate._ratio(curves, 0.1)["ratio"] is None  # both at 0 FLOPs: no ratio


def test_a_nan_is_reported_between_the_last_checked_step_and_this_one(monkeypatch):
  """Each finiteness check names the steps since the previous one, as training's do (from
  the last checked step): with 4 steps checked every 3, steps 0-3, then 3-4. The last,
  shorter window was named from step 2, a step already checked."""
  windows = []
  check = train.check_finite
  monkeypatch.setattr(train, "check_finite", lambda metrics, names, first, last, ckpt: (
      windows.append((first, last)), check(metrics, names, first, last, ckpt)))
  config = _student_config(tiny_config())
  config.num_train_steps, config.eval_every = 4, 3
  e = config.eval
  probe_set = data.world_paired_set(jax.random.key(e.seed), world.stack_views(["forest"]),
                                    e.probe_train + e.probe_test, config.data.image_size)
  curve, _ = migrate.train_student(config, None, "forest", 0, probe_set,
                                   metrics_io.MetricWriter("", enabled=False))
  assert [p["step"] for p in curve] == [0, 3, 4]
  assert windows == [(0, 3), (3, 4)]


def test_migrate_rejects_bad_settings(tmp_path):
  config = migrate_config.get_config()
  with pytest.raises(ValueError, match="target_acc must be in"):
    migrate.validate(config, 1.5)
  config.migrate.map_decay = 1.0
  with pytest.raises(ValueError, match="map_decay must be below 1, got 1.0"):
    migrate.validate(config, 0.85)
