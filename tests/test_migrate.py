"""Migration: the map from running statistics; the student program (its null students at
weight 0 are scratch, its students equal the same students alone, its controls do what
they say); the reading of the curves; the command."""

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
from sjepa_jax import distill
from sjepa_jax import flops
from sjepa_jax import migrate
from sjepa_jax import models
from sjepa_jax import world
from tests.conftest import tiny_config, init_agents

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_map_from_running_statistics_recovers_a_planted_rotation_and_scale():
  k1, k2 = jax.random.split(jax.random.key(0))
  r, _ = jnp.linalg.qr(jax.random.normal(k1, (8, 8)))
  stats = distill.init_stats(8, 8)
  for i in range(5):  # batches of 16 < 2 x dims: one batch alone would not pin the map
    z_s = jax.random.normal(jax.random.fold_in(k2, i), (16, 8)) * jnp.linspace(0.5, 2, 8)
    stats = distill.update_stats(stats, z_s, 0.4 * z_s @ r + 3.0, decay=0.8)
  m = distill.procrustes_map(stats)
  np.testing.assert_allclose(m.w, 0.4 * r, atol=1e-4)
  z = jax.random.normal(k1, (10, 8))
  np.testing.assert_allclose(m.apply(z), 0.4 * z @ r + 3.0, atol=1e-3)


def test_the_running_map_of_one_batch_is_the_procrustes_fit_of_that_batch():
  """One Procrustes (``align.procrustes_from_moments``) for the study and the migration."""
  k1, k2 = jax.random.split(jax.random.key(3))
  z_s, z_t = jax.random.normal(k1, (40, 6)), jax.random.normal(k2, (40, 5))
  stats = distill.update_stats(distill.init_stats(6, 5), z_s, z_t, decay=0.9)
  chex.assert_trees_all_close(distill.procrustes_map(stats), align.fit_procrustes(z_s, z_t),
                              atol=1e-5)


# --- Reading the curves ------------------------------------------------------------------

def test_flops_to_target_is_interpolated_exactly_on_a_planted_linear_curve():
  """Accuracy rising linearly in FLOPs, probed sparsely: the interpolated crossing is the
  planted one, not the next probe's FLOPs."""
  acc = lambda f: 0.2 + 1e-3 * f
  curve = [{"flops": f, "class_acc": acc(f)} for f in (0.0, 100.0, 400.0, 700.0)]
  assert migrate.flops_to_reach(curve, 0.45) == pytest.approx(250.0, abs=1e-9)
  assert migrate.flops_to_reach(curve, acc(400.0)) == pytest.approx(400.0)
  assert migrate.flops_to_reach(curve, 0.2) == 0.0  # there at initialisation
  assert migrate.flops_to_reach(curve, 0.95) is None
  # A dip after the crossing does not move it: the first bracket counts.
  dip = curve[:2] + [{"flops": 300.0, "class_acc": 0.5}, {"flops": 350.0, "class_acc": 0.3}]
  assert migrate.flops_to_reach(dip, 0.4) == pytest.approx(100.0 + 200.0 * 0.1 / 0.2)


def test_the_comparison_counts_the_teacher_excluded_and_amortised():
  """Planted curves where every figure is known by hand: scratch reaches 0.5 at 200 FLOPs,
  the migrating student at 50; its teacher cost 600 to train, so n students share it and
  50 + 600 / n < 200 first holds at n = 5."""
  line = lambda slope: [{"flops": f, "class_acc": slope * f} for f in (0.0, 100.0, 200.0)]
  curves = {"scratch": line(0.0025), "migrate": line(0.01), "random_teacher": line(0.001)}
  out = migrate.compare(curves, 0.5, {"migrate": 600.0, "random_teacher": 0.0})
  assert out["scratch"]["flops_to_target"] == pytest.approx(200.0)
  assert out["migrate"]["flops_to_target"] == pytest.approx(50.0)
  assert out["migrate"]["ratio"] == pytest.approx(0.25)
  assert out["migrate"]["ratio_with_teacher_training"] == pytest.approx(650 / 200)
  assert out["migrate"]["pays_after_n_students"] == 5
  assert out["random_teacher"]["ratio"] is None  # never reaches it: no made-up number
  assert out["random_teacher"]["pays_after_n_students"] is None
  assert migrate.pays_after(50.0, 200.0, 0.0) == 1  # a free teacher pays at once
  assert migrate.pays_after(200.0, 200.0, 0.0) is None


def test_the_target_is_declared_from_a_separate_seeds_scratch_curve():
  pilot = {"seed": 9, "students": {"scratch": {"curve": [
      {"step": 0, "class_acc": 0.3}, {"step": 50, "class_acc": 0.4},
      {"step": 100, "class_acc": 0.6}, {"step": 150, "class_acc": 0.8}]}}}
  target, rule = migrate.target_from_pilot(pilot, [0, 1], 0.5)
  assert target == pytest.approx(0.6)  # halfway from 0.4 (first probe) to 0.8 (final)
  assert "seed-9" in rule
  with pytest.raises(ValueError, match="separate seed"):
    migrate.target_from_pilot(pilot, [9], 0.5)


# --- The student program -----------------------------------------------------------------

def _student_config(teacher_config):
  c = migrate_config.get_config()
  c.num_train_steps = 4
  c.eval_every = 2
  c.eval.probe_train, c.eval.probe_test, c.eval.probe_steps = 48, 16, 10
  return migrate.student_config(teacher_config, c)


class _Protocol:
  """Tiny students on ``forest`` (seed 0) of every role, with a stand-in trained teacher on
  ``mountain`` (random parameters of another seed) and its own initial parameters."""

  def __init__(self, how="lax_map"):
    teacher_config = tiny_config()
    self.config = _student_config(teacher_config)
    self.learner = configs.learner_from_config(self.config)
    self.teacher_model = configs.model_from_config(teacher_config)
    trained = jax.tree.map(lambda x: x[0], init_agents(teacher_config, ["mountain"], 7)
                           .params["encoder"])
    initial = agents.init_params(self.teacher_model, agents.agent_keys(8, ["mountain"])[0],
                                 16, 2)["encoder"]
    self.teachers = {"trained": {"params": trained, "view": "mountain"},
                     "random": {"params": initial, "view": "mountain"}}
    self.names = migrate.roles(self.teachers)
    self.sv = world.get_view("forest")
    self.step = jax.jit(distill.program(self.learner, self.teacher_model, 0.9, self.sv, how))

  def stacked(self, weight):
    return migrate.stack_students(self.learner, self.teachers, self.names, [0], "forest",
                                  weight, 16)

  def run(self, weight, steps=2):
    """The program's students after ``steps`` steps, and their initial state."""
    _, students, settings, views, params, keys = self.stacked(weight)
    first = students
    for i in range(steps):
      students, _ = self.step(students, settings, views, params, keys, jnp.int32(i))
    return students, first

  def alone(self, weight, steps=2):
    """The same students, each trained alone by ``student_step``, restacked."""
    _, students, settings, views, params, keys = self.stacked(weight)
    one = jax.jit(lambda s, st, v, t, k, i: distill.student_step(
        self.learner, self.teacher_model, 0.9, s, st, self.sv, v, t, k, i))
    out = []
    for a in range(len(self.names)):
      pick = lambda t: jax.tree.map(lambda x: x[a], t)
      s = pick(students)
      for i in range(steps):
        s, _ = one(s, pick(settings), pick(views), pick(params), pick(keys), jnp.int32(i))
      out.append(s)
    return jax.tree.map(lambda *x: jnp.stack(x), *out)


@pytest.fixture(scope="module")
def protocol():
  return _Protocol()


def _student(students, protocol, role):
  return jax.tree.map(lambda x: x[protocol.names.index(role)], students)


def test_the_roster_holds_scratch_the_migrating_student_and_the_controls(protocol):
  assert protocol.names == ["scratch", "migrate", "random_teacher", "shuffled_pairs",
                            "learned_projector"]
  _, _, settings, _, params, _ = protocol.stacked(1.0)
  np.testing.assert_array_equal(settings.weight, [0, 1, 1, 1, 1])
  np.testing.assert_array_equal(settings.learned, [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(settings.shuffle, [0, 0, 0, 1, 0])
  pick = lambda a: jax.tree.map(lambda x: x[a], params)
  chex.assert_trees_all_equal(pick(2), protocol.teachers["random"]["params"])
  chex.assert_trees_all_equal(pick(1), protocol.teachers["trained"]["params"])


def test_null_students_at_weight_zero_are_the_scratch_student_exactly(protocol):
  """Every student weighs its teacher 0: whatever its teacher or map, its agent is the
  scratch student's bit for bit, and that is ``agents.train_step``'s."""
  students, _ = protocol.run(0.0)
  scratch = _student(students, protocol, "scratch").agent
  for role in protocol.names[1:]:
    chex.assert_trees_all_equal(_student(students, protocol, role).agent, scratch)
  key = agents.agent_keys(0, ["forest"])[0]
  alone = agents.init_agent(protocol.learner, key)
  step = jax.jit(lambda s, i: agents.train_step(protocol.learner, s, protocol.sv, key, i))
  for i in range(2):
    alone, _ = step(alone, jnp.int32(i))
  chex.assert_trees_all_close(scratch, alone, atol=1e-6)


def _norm(a, b):
  return float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))


def test_students_on_the_student_axis_equal_the_same_students_alone(protocol):
  """``lax.map`` (the CPU default) runs each student's own step: equal to float tolerance
  (measured: bit for bit)."""
  students, first = protocol.run(1.0)
  chex.assert_trees_all_close(students, protocol.alone(1.0), atol=1e-6, rtol=1e-6)
  # Not vacuous: the migrating student has left the scratch one.
  norm = _norm
  apart = norm(_student(students, protocol, "migrate").agent.params,
               _student(students, protocol, "scratch").agent.params)
  moved = norm(_student(students, protocol, "scratch").agent.params,
               _student(first, protocol, "scratch").agent.params)
  assert apart > 1e-3 * moved, (apart, moved)


def test_vmapped_students_equal_the_same_students_alone_to_float_noise(protocol):
  """``vmap`` batches the students' matmuls, which rounds differently; Adam's first update
  divides each gradient by its own magnitude, so that noise reaches the parameters at
  about 0.3% of how far they moved (measured: 5.3e-4 of 0.196 after two steps). A wrong
  teacher, key or setting moves a student by its whole step."""
  batched = _Protocol("vmap")
  students, first = batched.run(1.0)
  alone = protocol.alone(1.0)
  moved = _norm(alone.agent.params, first.agent.params)
  assert _norm(students.agent.params, alone.agent.params) < 2e-2 * moved
  chex.assert_trees_all_close(students.stats, alone.stats, atol=1e-3, rtol=1e-3)


def test_the_shuffled_control_fits_its_map_on_shuffled_pairs(protocol):
  """Same batch, same teacher: the shuffle leaves the means and the student's variance as
  they are and changes the cross-covariance the map is fitted from."""
  students, _ = protocol.run(1.0, steps=1)
  paired = _student(students, protocol, "migrate").stats
  shuffled = _student(students, protocol, "shuffled_pairs").stats
  for field in ("mean_s", "mean_t", "var_s"):
    np.testing.assert_allclose(getattr(shuffled, field), getattr(paired, field), atol=1e-5)
  diff = float(jnp.linalg.norm(shuffled.cross - paired.cross))
  assert diff > 0.3 * float(jnp.linalg.norm(paired.cross)), diff


def test_the_learned_projector_trains_and_only_there(protocol):
  """The projector moves by its gradient only in the learned student: elsewhere (and at
  weight 0) only weight decay touches it, identically."""
  trained, first = protocol.run(1.0)
  unweighted, _ = protocol.run(0.0)
  proj = lambda s, role: _student(s, protocol, role).projector
  norm = lambda a, b: float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))
  learned = norm(proj(trained, "learned_projector"), proj(unweighted, "learned_projector"))
  assert learned > 1e-3 * float(optax.tree.norm(proj(first, "learned_projector"))), learned
  chex.assert_trees_all_equal(proj(trained, "migrate"), proj(unweighted, "migrate"))


def _step_flops_by_parts(student_view: str, teacher_view: str) -> dict[str, float]:
  """Each kind of student's count, and the parts a migrating step adds, each counted alone:
  rendering the teacher's batch, the teacher's forward pass, the D x E SVD of the map fit
  (14 D E^2 + 8 E^3, thin) and the N x D x E products of the statistics and the map."""
  teacher_config = tiny_config()
  config = _student_config(teacher_config)
  d, dim_s, dim_t = config.data, config.model.dim, teacher_config.model.dim
  key = agents.agent_keys(0, [student_view])[0]
  learner = configs.learner_from_config(config)
  teacher_learner = configs.learner_from_config(teacher_config)
  one = lambda x: jax.tree.map(lambda y: y[None], x)
  student = jax.eval_shape(lambda: one(distill.init_student(learner, key, dim_t)))
  teacher = jax.eval_shape(lambda: one(agents.init_agent(teacher_learner, key)
                                       .params["encoder"]))
  setting = one(distill.Setting(jnp.float32(1), jnp.bool_(False), jnp.bool_(False)))
  views = one(world.get_view(teacher_view))
  counted = migrate._step_flops(learner, teacher_learner.model, 0.9, student, setting, views,
                                teacher, key[None], student_view)
  obs = jax.ShapeDtypeStruct((d.batch_size, d.frames, d.image_size, d.image_size, 3),
                             jnp.float32)
  tv = world.get_view(teacher_view)
  return {**counted,
          "render": flops.count_flops(lambda k: data.world_batch(
              k, tv, d.batch_size, d.frames, d.image_size), key),
          "teacher": flops.count_flops(lambda t, o: models.encode(teacher_learner.model, t, o),
                                       jax.eval_shape(lambda t: jax.tree.map(lambda x: x[0], t),
                                                      teacher), obs),
          "svd": 14 * dim_s * dim_t**2 + 8 * dim_t**3,
          "products": 2 * d.batch_size * d.frames * dim_s * dim_t}


def test_each_student_costs_scratch_plus_its_teacher_and_its_map():
  """Not the step's own count restated: each kind's excess over scratch, against its parts
  counted one by one. Beyond the teacher's batch and pass (and the refitted map's SVD), the
  rest is N x D x E products and elementwise work: measured 4.8 products for the refitted
  map (statistics, map, its gradient), 5.1 for the projector (its pass, two gradients, the
  statistics every student keeps, its AdamW update); anything uncounted falls below."""
  c = _step_flops_by_parts("drone", "mountain")
  known = c["render"] + c["teacher"]
  refitted = c["procrustes"] - c["scratch"]
  assert known + c["svd"] + 3 * c["products"] <= refitted <= known + c["svd"] + 6 * c["products"], c
  learned = c["learned"] - c["scratch"]
  assert known + 4 * c["products"] <= learned <= known + 7 * c["products"], c
  # The program computes both maps for its one student: more than either alone.
  assert c["program"] > max(c["procrustes"], c["learned"])


# --- The command -------------------------------------------------------------------------

def _command(*flags_):
  return subprocess.run([sys.executable, "-m", "experiments.migrate", *flags_], cwd=ROOT,
                        capture_output=True, text=True)


@pytest.mark.parametrize("flags_,message", [
    (["--target_acc=1.5"], "error: target_acc must be in (0, 1], got 1.5."),
    (["--target_acc=0.6", "--seeds=0,0"], "error: Student seeds must be distinct"),
    (["--target_acc=0.6", "--seeds=0,1", "--same_view_seed=1"], "error: same_view_seed 1 is"),
    ([], "error: Give exactly one of --target_acc"),
])
def test_bad_flags_give_one_line_before_anything_loads(tmp_path, flags_, message):
  out = _command(f"--teacher_workdir={tmp_path / 'none'}", "--student_view=mountain", *flags_)
  assert out.returncode == 1, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), out.stderr[-2000:]


def test_migrate_rejects_bad_settings():
  config = migrate_config.get_config()
  with pytest.raises(ValueError, match="target_acc must be in"):
    migrate.validate(config, 1.5)
  config.migrate.map_decay = 1.0
  with pytest.raises(ValueError, match="map_decay must be below 1, got 1.0"):
    migrate.validate(config, 0.85)


@pytest.mark.slow
def test_migrate_command_end_to_end_writes_a_report_per_seed(tmp_path):
  from sjepa_jax import train  # pylint: disable=g-import-not-at-top
  teacher_dir = str(tmp_path / "teacher")
  train.train_and_evaluate(tiny_config(), teacher_dir, "mountain,forest")
  out_dir = str(tmp_path / "out")
  out = _command(f"--teacher_workdir={teacher_dir}", "--teacher_view=mountain",
                 "--student_view=drone", "--target_acc=0.3", f"--workdir={out_dir}",
                 "--seeds=0,1", "--config.num_train_steps=4", "--config.eval_every=2",
                 "--config.time_scratch_steps=2", "--config.eval.probe_train=48",
                 "--config.eval.probe_test=16", "--config.eval.probe_steps=10")
  assert out.returncode == 0, out.stderr[-3000:]
  for seed in (0, 1):
    where = os.path.join(out_dir, f"seed{seed}")
    report = json.load(open(os.path.join(where, "report.json")))
    assert os.path.exists(os.path.join(where, "accuracy_vs_flops.png"))
    assert report["seed"] == seed and report["student_view"] == "drone"
    assert list(report["students"]) == ["scratch", "migrate", "random_teacher",
                                        "shuffled_pairs", "learned_projector"]
    assert report["teachers"]["random"]["training_flops"] == 0.0
    assert report["teachers"]["trained"]["training_flops"] > 0
    per_step = report["flops_per_step"]
    assert per_step["scratch"] < per_step["procrustes"]
    students = report["students"]
    for role, s in students.items():
      assert [p["step"] for p in s["curve"]] == [0, 2, 4]
      np.testing.assert_allclose([p["flops"] for p in s["curve"]],
                                 [0, 2 * s["flops_per_step"], 4 * s["flops_per_step"]])
      assert s["curve"][0]["class_acc"] == students["scratch"]["curve"][0]["class_acc"]
      assert s["flops_to_target"] == migrate.flops_to_reach(s["curve"], 0.3)
    assert report["scratch_final_acc"] == students["scratch"]["final_acc"]
    assert 0 <= report["teacher_native_acc"] <= 1
    assert report["timing"]["program_s_per_step"] > 0
