"""Distillation: the students of the migration protocol as one program. Each student's map
(a scaled orthogonal map refitted in closed form every step from running statistics, or a
learned linear projector) and one step of every student on a leading student axis
(``migrate`` runs the protocol).

Shapes: S = students, B = batch, L = frames, N = B * L, D = student latent size, E =
teacher latent size.
"""

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sjepa_jax import agents
from sjepa_jax import align
from sjepa_jax import models
from sjepa_jax import objectives
from sjepa_jax import world

PyTree = Any
BOTH_MAPS = ("procrustes", "learned")


class MapStats(NamedTuple):
  """Running (EMA) statistics of paired student and teacher latents."""
  mean_s: jax.Array  # (D,)
  mean_t: jax.Array  # (E,)
  var_s: jax.Array  # () mean squared norm of centred student latents
  cross: jax.Array  # (D, E) cross-covariance of centred latents
  count: jax.Array  # () batches seen


class Student(NamedTuple):
  """Everything one student learns: the agent, its map's statistics, and the learned
  projector with its own optimiser state (trained only by a ``learned`` student)."""
  agent: agents.AgentState
  stats: MapStats
  projector: PyTree  # {"w": (D, E), "b": (E,)}
  projector_opt: optax.OptState


class Setting(NamedTuple):
  """One student's part in the protocol, as arrays ((S,) stacked on the student axis):
  values, not Python branches, so that one program serves every student."""
  weight: jax.Array  # () distillation weight; 0: trains exactly as the scratch student
  learned: jax.Array  # () bool: the learned projector instead of the refitted Procrustes map
  shuffle: jax.Array  # () bool: the map's statistics from pairs shuffled within the batch


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


def init_student(learner: agents.Learner, key: jax.Array, dim_t: int) -> Student:
  """A fresh student from its seed's key: the agent is exactly ``agents.init_agent``'s (so
  students of one seed share it); the projector a random linear map, variance-preserving."""
  agent = agents.init_agent(learner, key)
  dim_s = learner.model.encoder.dim
  projector = {"w": jax.random.normal(jax.random.fold_in(key, 1), (dim_s, dim_t))
                    / math.sqrt(dim_s), "b": jnp.zeros(dim_t)}
  return Student(agent, init_stats(dim_s, dim_t), projector, learner.optimizer.init(projector))


def _mapped(maps: tuple[str, ...], learned: jax.Array, stats: MapStats, projector: PyTree,
            z_s: jax.Array) -> jax.Array:
  """The student's latents in the teacher's space, by the map its setting picks. ``maps``
  is static: both in the program; one alone only to count what one kind of student costs."""
  refitted = lambda: jax.lax.stop_gradient(procrustes_map(stats)).apply(z_s)
  linear = lambda: z_s @ projector["w"] + projector["b"]
  if maps == ("procrustes",):
    return refitted()
  if maps == ("learned",):
    return linear()
  return jnp.where(learned, linear(), refitted())


def student_step(learner: agents.Learner, teacher_model: models.WorldModel, map_decay: float,
                 student: Student, setting: Setting, student_view: world.View,
                 teacher_view: world.View, teacher: PyTree, key: jax.Array, step: jax.Array,
                 maps: tuple[str, ...] = BOTH_MAPS) -> tuple[Student, dict]:
  """One step of one student (``teacher``: its teacher's encoder parameters).

  Keys are those of ``agents.train_step``: the student's batch is exactly the one a scratch
  student with the same key would train on, and the teacher sees the same episodes from its
  own view. With ``setting.weight = 0`` the agent's update is ``agents.train_step``'s.
  """
  data_key, loss_key = jax.random.split(jax.random.fold_in(key, step))
  batch = learner.sample(data_key, student_view, None)
  seen = learner.sample(data_key, teacher_view, None)
  z_t = models.encode(teacher_model, teacher, seen.obs)  # frozen: no gradient
  z_t = z_t.reshape(-1, z_t.shape[-1])
  # The control's shuffle breaks the pairing the map is fitted on, not the loss's pairs.
  perm = jax.random.permutation(jax.random.fold_in(data_key, 1), z_t.shape[0])
  z_t_fit = jnp.where(setting.shuffle, z_t[perm], z_t)

  def loss(params, projector):
    z_BxLxD = models.encode(learner.model, params["encoder"], batch.obs)
    jepa, metrics = objectives.jepa_loss(learner.model, learner.objective, params,
                                         student.agent.target, batch, loss_key, z_BxLxD)
    z_s = z_BxLxD.reshape(z_t.shape[0], -1)
    stats = update_stats(student.stats, jax.lax.stop_gradient(z_s), z_t_fit, map_decay)
    mapped = _mapped(maps, setting.learned, stats, projector, z_s)
    metrics["distill"] = jnp.mean(jnp.sum((mapped - z_t) ** 2, -1)) / z_t.shape[-1]
    return jepa + setting.weight * metrics["distill"], (metrics, stats)

  (g_agent, g_proj), (metrics, stats) = jax.grad(loss, argnums=(0, 1), has_aux=True)(
      student.agent.params, student.projector)
  metrics["grad_norm"] = optax.tree.norm(g_agent)
  updates, projector_opt = learner.optimizer.update(g_proj, student.projector_opt,
                                                    student.projector)
  return Student(agents.apply_gradients(learner, student.agent, g_agent), stats,
                 optax.apply_updates(student.projector, updates), projector_opt), metrics


def program(learner: agents.Learner, teacher_model: models.WorldModel, map_decay: float,
            student_view: world.View, how: str = "vmap") -> Callable:
  """Every student's step as one function ``(students, settings, teacher_views, teachers,
  keys, step) -> (students, metrics)``; every argument but ``step`` has a leading student
  axis. ``how``: ``vmap`` (batched) or ``lax_map`` (one student after another)."""
  one = functools.partial(student_step, learner, teacher_model, map_decay)

  def step(students, settings, teacher_views, teachers, keys, i):
    body = lambda a: one(a[0], a[1], student_view, a[2], a[3], a[4], i)
    args = (students, settings, teacher_views, teachers, keys)
    return jax.lax.map(body, args) if how == "lax_map" else jax.vmap(body)(args)

  return step
