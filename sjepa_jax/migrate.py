"""Migration: a new (student) agent learns faster by pulling toward a trained teacher.

The student trains on its own view with its usual JEPA loss plus a distillation term:
``weight * mean ||map(z_student) - z_teacher||^2 / D`` on the same world states seen from
the teacher's view, where the teacher is frozen (a forward pass per step).

**The map** is a scaled orthogonal (Procrustes) map from the student's latent space to
the teacher's, recomputed in closed form at every step from running estimates (EMA with
``migrate.map_decay``) of the two agents' latent means, the student's latent variance and
the student-teacher cross-covariance; the first step's batch initialises the estimates.
Gradients do not flow through it, so the student is pulled toward the teacher's geometry
up to a rotation and a scale, never forced into the teacher's coordinates. Refitting it
(one D x D SVD) is inside the compiled step, so its cost is counted with the step's.

**Compute** is counted in FLOPs on each step's traced program (``flops.count_flops``:
loops times their trip count, the SVD from its analytic count): the student's forward and
backward passes, its batch's rendering, the teacher's forward passes and the map fit for
the migrating student; the same step without teacher or map for the scratch student.
Evaluation probes are measurement, not training, and are counted for neither. Both
students start from the same initial parameters and see the same batches of their own
view.

Shapes: B = batch, L = frames, D = student latent size, E = teacher latent size.
"""

import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sjepa_jax import agents
from sjepa_jax import align
from sjepa_jax import checkpointing
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import errors
from sjepa_jax import flops
from sjepa_jax import loading
from sjepa_jax import metrics_io
from sjepa_jax import models
from sjepa_jax import objectives
from sjepa_jax import probes
from sjepa_jax import train
from sjepa_jax import world

PyTree = Any


class MapStats(NamedTuple):
  """Running (EMA) statistics of paired student and teacher latents."""
  mean_s: jax.Array  # (D,)
  mean_t: jax.Array  # (E,)
  var_s: jax.Array  # () mean squared norm of centred student latents
  cross: jax.Array  # (D, E) cross-covariance of centred latents
  count: jax.Array  # () batches seen


class Student(NamedTuple):
  agent: agents.AgentState
  stats: MapStats


def init_stats(dim_s: int, dim_t: int) -> MapStats:
  return MapStats(jnp.zeros(dim_s), jnp.zeros(dim_t), jnp.zeros(()), jnp.zeros((dim_s, dim_t)),
                  jnp.zeros((), jnp.int32))


def update_stats(stats: MapStats, z_s: jax.Array, z_t: jax.Array, decay: float) -> MapStats:
  """Folds a batch of paired latents (N, D), (N, E) into the running estimates."""
  mean_s, mean_t = z_s.mean(0), z_t.mean(0)
  zs, zt = z_s - mean_s, z_t - mean_t
  batch = MapStats(mean_s, mean_t, jnp.mean(jnp.sum(zs ** 2, -1)), zs.T @ zt / zs.shape[0],
                   stats.count)
  d = jnp.where(stats.count == 0, 0.0, decay)  # the first batch replaces the empty estimate
  mix = lambda old, new: d * old + (1 - d) * new
  return MapStats(mix(stats.mean_s, batch.mean_s), mix(stats.mean_t, batch.mean_t),
                  mix(stats.var_s, batch.var_s), mix(stats.cross, batch.cross),
                  stats.count + 1)


def procrustes_map(stats: MapStats) -> align.LinearMap:
  """The scaled orthogonal map student -> teacher from the running statistics."""
  return align.procrustes_from_moments(stats.cross, stats.var_s, stats.mean_s, stats.mean_t)


def migrate_step(learner: agents.Learner, teacher_model: models.WorldModel, weight: float,
                 map_decay: float, student: Student, student_view: world.View,
                 teacher_view: world.View, key: jax.Array, step: jax.Array, teacher: PyTree
                 ) -> tuple[Student, dict]:
  """One step of the migrating student (``teacher``: the teacher's encoder parameters).

  Keys are those of ``agents.train_step``: the student's batch is exactly the one a scratch
  student with the same key would train on, and the teacher sees the same episodes from
  its own view. With ``weight = 0`` the step equals ``agents.train_step``.
  """
  data_key, loss_key = jax.random.split(jax.random.fold_in(key, step))
  batch = learner.sample(data_key, student_view, None)
  seen = learner.sample(data_key, teacher_view, None)
  z_t = models.encode(teacher_model, teacher, seen.obs)  # frozen: no gradient
  z_t = z_t.reshape(-1, z_t.shape[-1])

  def loss(params):
    z_BxLxD = models.encode(learner.model, params["encoder"], batch.obs)
    jepa, metrics = objectives.jepa_loss(learner.model, learner.objective, params,
                                         student.agent.target, batch, loss_key, z_BxLxD)
    z_s = z_BxLxD.reshape(z_t.shape[0], -1)
    stats = update_stats(student.stats, jax.lax.stop_gradient(z_s), z_t, map_decay)
    linear_map = jax.lax.stop_gradient(procrustes_map(stats))
    distill = jnp.mean(jnp.sum((linear_map.apply(z_s) - z_t) ** 2, -1))
    metrics["distill"] = distill / z_t.shape[-1]
    return jepa + weight * metrics["distill"], (metrics, stats)

  grads, (metrics, stats) = jax.grad(loss, has_aux=True)(student.agent.params)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return Student(agents.apply_gradients(learner, student.agent, grads), stats), metrics


# --- The experiment ----------------------------------------------------------------------

def student_config(teacher_config: ml_collections.ConfigDict,
                   config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The teacher's architecture and training settings, with the migration run's budget,
  evaluation and migration settings: the student differs from the teacher only in view.
  The student is always a JEPA agent; the teacher may be of any kind (a supervised teacher
  bounds what migration can pass on)."""
  c = ml_collections.ConfigDict(teacher_config.to_dict())
  c.objective.kind = "jepa"
  c.num_train_steps = config.num_train_steps
  c.optim.warmup_steps = min(c.optim.warmup_steps, config.num_train_steps // 2)
  c.eval_every = config.eval_every
  c.eval = config.eval
  c.migrate = config.migrate
  return c


# The migration config's numbers and the values that mean something (configs.check_ranges).
RANGES = {"num_train_steps": (1, None, True), "eval_every": (1, None, True),
          "migrate.weight": (0, None, True), "migrate.map_decay": (0, 1, True),
          "eval.probe_train": (1, None, True), "eval.probe_test": (1, None, True),
          "eval.probe_steps": (1, None, True)}


def validate(config: ml_collections.ConfigDict, target_acc: float) -> None:
  """Rejects settings that cannot mean anything, naming the valid range."""
  if not 0.0 < target_acc <= 1.0:
    raise errors.UserError(f"target_acc must be in (0, 1], got {target_acc}.")
  configs.check_ranges(config, RANGES)
  if config.migrate.map_decay == 1.0:  # the map would never leave its first batch's estimate
    raise errors.UserError("config.migrate.map_decay must be below 1, got 1.0.")


def evaluate(learner: agents.Learner, params: PyTree, probe_set: data.PairedSet, n_fit: int,
             probe_steps: int) -> dict[str, float]:
  """Held-out probe scores of the student's frozen latents (``probes.evaluate``)."""
  z = models.encode_chunked(learner.model, params["encoder"], probe_set.obs[0])
  return probes.evaluate(z, probe_set.labels, n_fit, probe_set.num_classes, probe_steps)[1]


def flops_to_reach(curve: list[dict], target: float, metric: str = "class_acc"
                   ) -> float | None:
  """Cumulative FLOPs at the first evaluation reaching ``target``; None if none does."""
  for point in curve:
    if point[metric] >= target:
      return point["flops"]
  return None


def train_student(config: ml_collections.ConfigDict, teacher: loading.Agent | None,
                  student_view: str, seed: int, probe_set: data.PairedSet,
                  writer: metrics_io.MetricWriter) -> tuple[list[dict], float]:
  """Trains one student (scratch when ``teacher`` is None) and returns its curve of probe
  scores against cumulative FLOPs and training wall time, and its FLOPs per step. The
  curve also goes to ``writer`` as ``migrate/<scratch|migrate>/<score>``."""
  mode = "scratch" if teacher is None else "migrate"
  learner = configs.learner_from_config(config)
  key = agents.agent_keys(seed, [student_view])[0]
  agent = agents.init_agent(learner, key)
  sv = world.get_view(student_view)
  if teacher is None:
    fn = lambda s, k, i: agents.train_step(learner, s, sv, k, i)
    state = agent
  else:
    tv = world.get_view(teacher.view)
    m = config.migrate
    fn = lambda s, k, i, t: migrate_step(learner, teacher.model, m.weight, m.map_decay, s, sv,
                                         tv, k, i, t)
    state = Student(agent, init_stats(config.model.dim, teacher.config.model.dim))
  extra = () if teacher is None else (teacher.params["encoder"],)
  step_fn, step_flops = flops.compile_and_count(fn, state, key, jnp.int32(0), *extra,
                                                donate_argnums=0)
  evaluate_now = lambda p: evaluate(learner, p, probe_set, config.eval.probe_train,
                                    config.eval.probe_steps)
  params = lambda s: s.params if teacher is None else s.agent.params
  curve = [{"step": 0, "flops": 0.0, "wall_s": 0.0, **evaluate_now(params(state))}]
  wall, checked = 0.0, 0
  for step in range(config.num_train_steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, key, jnp.int32(step), *extra)
    if (step + 1) % config.eval_every == 0 or step + 1 == config.num_train_steps:
      metrics = jax.device_get(metrics)
      wall += time.perf_counter() - start
      train.check_finite({k: np.reshape(v, (1, -1)) for k, v in metrics.items()},
                         [f"{mode} student on {student_view}"], checked, step + 1, None)
      checked = step + 1
      point = {"step": step + 1, "flops": step_flops * (step + 1), "wall_s": wall,
               **evaluate_now(params(state))}
      curve.append(point)
      writer.write_scalars(step + 1, {f"migrate/{mode}/{k}": v for k, v in point.items()
                                      if k != "step"})
      logging.info("%s student, step %d: class %.3f, position %.3f", mode, step + 1,
                   point["class_acc"], point.get("position_r2", float("nan")))
    else:
      wall += time.perf_counter() - start
  return curve, step_flops


def teacher_training_flops(teacher: loading.Agent) -> float:
  """What training the teacher cost: its run's step FLOPs (one agent) times its steps."""
  learner = configs.learner_from_config(teacher.config)
  key = agents.agent_keys(teacher.seed, [teacher.view])[0]
  state = jax.eval_shape(lambda: agents.init_agent(learner, key))
  view = world.get_view(teacher.view)
  per_step = flops.count_flops(lambda s, k, i: agents.train_step(learner, s, view, k, i),
                               state, key, jnp.int32(0))
  return per_step * teacher.config.num_train_steps


def run(teacher_workdir: str, teacher_view: str | None, student_view: str,
        config: ml_collections.ConfigDict, target_acc: float, seed: int = 0,
        teacher_seed: int | None = None, logdir: str | None = None) -> dict[str, Any]:
  """Scratch and migrating students on ``student_view``, same budget; the report.
  ``teacher_seed`` picks the teacher where its run trained the view with several seeds.
  With ``logdir``, both curves also go to TensorBoard event files there.

  ``ratio`` counts what the student's training costs (its steps, the teacher's forward
  passes and the map fits), not the teacher's own training: the teacher already exists and
  serves any number of students. ``ratio_with_teacher_training`` adds that cost once.
  """
  validate(config, target_acc)
  student_view = world.parse_views(student_view)[0]
  meta_views = checkpointing.read_meta(teacher_workdir)[0]["views"]
  if teacher_view is None:
    others = [v for v in meta_views if v != student_view]
    if not others:
      raise errors.UserError(f"The teacher run {teacher_workdir!r} has no agent on a view other "
                             f"than the student's ({student_view}); it holds {meta_views}.")
    teacher_view = others[0]
  if teacher_view == student_view:
    raise errors.UserError(f"The teacher's view must differ from the student's; both are "
                           f"{student_view!r}.")
  teacher = loading.load_agent(teacher_workdir, teacher_view, seed=teacher_seed)
  teacher_config = teacher.config
  if teacher_config.data.dataset:
    raise errors.UserError(f"Migration runs on the embedded world; the teacher run "
                           f"{teacher_workdir!r} was trained on dataset "
                           f"{teacher_config.data.dataset!r}.")
  config = student_config(teacher_config, config)
  e = config.eval
  probe_set = data.world_paired_set(jax.random.key(e.seed), world.stack_views([student_view]),
                                    e.probe_train + e.probe_test, config.data.image_size)
  curves, per_step = {}, {}
  with metrics_io.MetricWriter(logdir, enabled=logdir is not None) as writer:
    for mode, t in (("scratch", None), ("migrate", teacher)):
      curves[mode], per_step[mode] = train_student(config, t, student_view, seed, probe_set,
                                                   writer)
  report = {"target_acc": target_acc, "teacher_workdir": teacher_workdir,
            "teacher_view": teacher_view, "teacher_seed": teacher_seed,
            "teacher_kind": teacher_config.objective.kind, "student_view": student_view,
            "seed": seed,
            "steps": config.num_train_steps, "flops_per_step": per_step,
            "migrate": config.migrate.to_dict(), "curves": curves}
  report.update(_ratio(curves, target_acc))
  report["teacher_training_counted_in_ratio"] = False
  report["teacher_training_flops"] = teacher_training_flops(teacher)
  if report["ratio"] is not None:
    report["ratio_with_teacher_training"] = ((report["flops_migrate"]
                                              + report["teacher_training_flops"])
                                             / report["flops_scratch"])
  # Where the requested target is out of reach, the scratch student's own final accuracy
  # is the highest target both runs can be compared at (chosen after the fact: say so).
  final = curves["scratch"][-1]["class_acc"]
  report["at_scratch_final_acc"] = {"target_acc": final, **_ratio(curves, final)}
  return report


def _ratio(curves: dict, target: float) -> dict[str, float | None]:
  scratch = flops_to_reach(curves["scratch"], target)
  migrate = flops_to_reach(curves["migrate"], target)
  ratio = None if scratch is None or migrate is None or scratch == 0 else migrate / scratch
  return {"flops_scratch": scratch, "flops_migrate": migrate, "ratio": ratio}
