"""Migration: a new (student) agent learns faster by pulling toward a trained teacher.

A migrating student trains on its own view with its usual JEPA loss plus a distillation
term, ``weight * mean ||map(z_student) - z_teacher||^2 / E``, on the same world states seen
from the teacher's view; the teacher is frozen (a forward pass per step).

**The map** is a scaled orthogonal (Procrustes) map from the student's latent space to the
teacher's, recomputed in closed form at every step from running estimates (EMA with
``migrate.map_decay``) of the two agents' latent means, the student's latent variance and
the student-teacher cross-covariance; the first step's batch initialises the estimates.
Gradients do not flow through it, so the student is pulled toward the teacher's geometry up
to a rotation and a scale, never forced into the teacher's coordinates.

**The protocol** is one program over a leading student axis (S): a scratch student (weight
0), the migrating student, and controls whose saving, if any, is the extra loss term and
not the teacher's knowledge (``ROLES``): a random-init teacher, a map fitted on shuffled
pairs, a learned linear projector in place of the refitted map, and optionally a same-view
teacher and a supervised one. Every student of one seed starts from the same parameters
and sees the same batches. What differs between students enters as arrays (``Setting``,
the teacher's encoder parameters and view, stacked per student), so one jitted step serves
them all, under ``jax.vmap`` or ``lax.map`` as agents do in ``train``.

**Compute** is counted in FLOPs (``flops.count_flops``) per student as its step would cost
alone: the scratch student's is ``agents.train_step``'s; a migrating one's adds its
teacher's batch and forward pass and its map (the refitted map's statistics and SVD, or the
projector's pass and update). The program computes both maps for every student so that one
program serves all; that waste is the program's, reported beside (``program``). Probes are
measurement and count for no one.

Shapes: S = students, B = batch, L = frames, N = B * L, D = student latent size, E =
teacher latent size.
"""

import math
import time
from typing import Any, Callable, NamedTuple, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjepa_jax import agents
from sjepa_jax import checkpointing
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import distill
from sjepa_jax import errors
from sjepa_jax import flops
from sjepa_jax import loading
from sjepa_jax import metrics_io
from sjepa_jax import models
from sjepa_jax import probes
from sjepa_jax import train
from sjepa_jax import world

PyTree = Any
# Every student of the protocol: (its teacher, distils?, learned projector?, shuffled
# pairs?). Teachers: ``trained`` (the teacher), ``random`` (its initial parameters),
# ``same_view`` (another seed of the student's view), ``supervised`` (a run trained on the
# labels). The last two are optional.
ROLES = {
    "scratch": ("trained", False, False, False),
    "migrate": ("trained", True, False, False),
    "random_teacher": ("random", True, False, False),
    "shuffled_pairs": ("trained", True, False, True),
    "learned_projector": ("trained", True, True, False),
    "same_view": ("same_view", True, False, False),
    "supervised": ("supervised", True, False, False),
}
OPTIONAL_ROLES = ("same_view", "supervised")


# --- Reading the curves ------------------------------------------------------------------

def flops_to_reach(curve: list[dict], target: float, metric: str = "class_acc"
                   ) -> float | None:
  """Cumulative FLOPs at which the curve first reaches ``target``, interpolated linearly
  between the two probes that bracket the crossing (probes are sparse; accuracy between
  them is assumed to rise linearly in FLOPs). A curve that starts at the target reaches it
  at its first point; None if no probe does."""
  for i, point in enumerate(curve):
    if point[metric] >= target:
      if i == 0:
        return point["flops"]
      prev = curve[i - 1]
      frac = (target - prev[metric]) / (point[metric] - prev[metric])
      return prev["flops"] + frac * (point["flops"] - prev["flops"])
  return None


def declare_target(pilot_curve: list[dict], fraction: float = 0.5) -> float:
  """The declared target from a separate seed's scratch curve: ``fraction`` of the way from
  its accuracy at the first probe after initialisation to its final accuracy, so it lies
  between what a scratch student knows early and what it ends with."""
  early, final = pilot_curve[1]["class_acc"], pilot_curve[-1]["class_acc"]
  return early + fraction * (final - early)


def target_from_pilot(pilot: dict, seeds: Sequence[int], fraction: float
                      ) -> tuple[float, str]:
  """The target declared from a pilot run's report (a scratch student of a seed the
  students do not use), and the rule that declared it, for the report."""
  seed = pilot.get("seed")
  curve = pilot.get("students", {}).get("scratch", {}).get("curve")
  if curve is None or len(curve) < 2:
    raise errors.UserError("The pilot report holds no scratch curve with a probe after step 0 "
                           "(give a report.json that experiments.migrate wrote).")
  if seed in seeds:
    raise errors.UserError(f"The pilot's seed {seed} is one of the student seeds {list(seeds)}: "
                           "the target must come from a separate seed.")
  target = declare_target(curve, fraction)
  return target, (f"{fraction:g} of the way from the seed-{seed} scratch curve's class "
                  f"accuracy at step {curve[1]['step']} ({curve[1]['class_acc']:.3f}) to its "
                  f"final ({curve[-1]['class_acc']:.3f}, step {curve[-1]['step']})")


def pays_after(student_flops: float | None, scratch_flops: float | None,
               teacher_flops: float) -> int | None:
  """The fewest students n over which the teacher's training, shared, still leaves
  migration cheaper than scratch: the least n with ``student + teacher / n < scratch``;
  None if no n does (the student alone costs as much as scratch, or a run never reaches
  the target)."""
  if student_flops is None or scratch_flops is None or student_flops >= scratch_flops:
    return None
  return math.floor(teacher_flops / (scratch_flops - student_flops)) + 1


def compare(curves: dict[str, list[dict]], target: float,
            teacher_flops: dict[str, float]) -> dict[str, dict]:
  """Per student: its FLOPs to ``target``; its ratio against scratch with the teacher's
  training excluded, and counted once; and the n at which that training, amortised over n
  students, pays. ``teacher_flops``: each student's teacher's training FLOPs."""
  scratch = flops_to_reach(curves["scratch"], target)
  out = {}
  for role, curve in curves.items():
    f = flops_to_reach(curve, target)
    t = teacher_flops.get(role, 0.0)
    ok = f is not None and scratch
    out[role] = {"flops_to_target": f, "ratio": f / scratch if ok else None,
                 "teacher_training_flops": t,
                 "ratio_with_teacher_training": (f + t) / scratch if ok else None,
                 "pays_after_n_students": pays_after(f, scratch, t) if role != "scratch"
                                          else None}
  return out


# --- The experiment ----------------------------------------------------------------------

def student_config(teacher_config: ml_collections.ConfigDict,
                   config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The teacher's architecture and training settings, with the migration run's budget,
  evaluation and migration settings: the student differs from the teacher only in view.
  The student is always a JEPA agent; the teacher may be of any kind."""
  c = ml_collections.ConfigDict(teacher_config.to_dict())
  c.objective.kind = "jepa"
  c.num_train_steps = config.num_train_steps
  c.optim.warmup_steps = min(c.optim.warmup_steps, config.num_train_steps // 2)
  c.eval_every = config.eval_every
  c.eval = config.eval
  c.migrate = config.migrate
  c.time_scratch_steps = config.get("time_scratch_steps", 0)
  return c


# The migration config's numbers and the values that mean something (configs.check_ranges).
RANGES = {"num_train_steps": (1, None, True), "eval_every": (1, None, True),
          "migrate.weight": (0, None, True), "migrate.map_decay": (0, 1, True),
          "migrate.target_fraction": (0, 1, True), "time_scratch_steps": (0, None, True),
          "eval.probe_train": (1, None, True), "eval.probe_test": (1, None, True),
          "eval.probe_steps": (1, None, True)}


class Plan(NamedTuple):
  """Who teaches whom: the teachers' runs and the students' seeds (from the flags)."""
  teacher_workdir: str
  student_view: str
  seeds: Sequence[int]
  teacher_view: str | None = None
  teacher_seed: int | None = None
  same_view_seed: int | None = None  # a seed of the student's view in the teacher's run
  supervised_workdir: str | None = None  # a run trained with objective.kind=supervised
  supervised_view: str | None = None  # default: the teacher's view


def validate(config: ml_collections.ConfigDict, target_acc: float | None,
             plan: Plan | None = None) -> None:
  """Rejects settings that cannot mean anything, naming the valid range; before anything
  loads or compiles."""
  if target_acc is not None and not 0.0 < target_acc <= 1.0:
    raise errors.UserError(f"target_acc must be in (0, 1], got {target_acc}.")
  configs.check_ranges(config, RANGES)
  if config.migrate.map_decay == 1.0:  # the map would never leave its first batch's estimate
    raise errors.UserError("config.migrate.map_decay must be below 1, got 1.0.")
  if plan is None:
    return
  if not plan.seeds or len(set(plan.seeds)) != len(plan.seeds):
    raise errors.UserError(f"Student seeds must be distinct and at least one, got "
                           f"{list(plan.seeds)}.")
  if plan.same_view_seed is not None and plan.same_view_seed in plan.seeds:
    raise errors.UserError(f"same_view_seed {plan.same_view_seed} is also a student seed: that "
                           "teacher started from the student's own initial parameters. Pick a "
                           f"seed outside {list(plan.seeds)}.")
  if plan.supervised_view is not None and plan.supervised_workdir is None:
    raise errors.UserError("supervised_view needs supervised_workdir (the supervised run).")


def evaluate(learner: agents.Learner, params: PyTree, obs: jax.Array,
             probe_set: data.PairedSet, n_fit: int, probe_steps: int) -> list[dict]:
  """Held-out probe scores of every student's frozen latents (``probes.evaluate``);
  ``params``: stacked (S,) student parameters, ``obs`` the probe states from their view."""
  s = jax.tree.leaves(params)[0].shape[0]
  z = models.encode_chunked(learner.model, params["encoder"], obs[None], index=[0] * s)
  return [probes.evaluate(z[i], probe_set.labels, n_fit, probe_set.num_classes,
                          probe_steps)[1] for i in range(s)]


def teacher_training_flops(teacher: loading.Agent) -> float:
  """What training the teacher cost: its run's step FLOPs (one agent) times its steps."""
  learner = configs.learner_from_config(teacher.config)
  key = agents.agent_keys(teacher.seed, [teacher.view])[0]
  state = jax.eval_shape(lambda: agents.init_agent(learner, key))
  view = world.get_view(teacher.view)
  per_step = flops.count_flops(lambda s, k, i: agents.train_step(learner, s, view, k, i),
                               state, key, jnp.int32(0))
  return per_step * teacher.config.num_train_steps


_ARCHITECTURE = ("encoder", "dim", "patch", "width", "depth", "pool", "compute_dtype")


def load_teachers(plan: Plan) -> dict[str, dict]:
  """Every teacher the plan names: {kind: {"agent", "params" (encoder), "view"}}. They
  must share an encoder architecture (one program runs them all)."""
  student_view = plan.student_view
  meta_views = checkpointing.read_meta(plan.teacher_workdir)[0]["views"]
  teacher_view = plan.teacher_view
  if teacher_view is None:
    others = [v for v in meta_views if v != student_view]
    if not others:
      raise errors.UserError(f"The teacher run {plan.teacher_workdir!r} has no agent on a view "
                             f"other than the student's ({student_view}); it holds {meta_views}.")
    teacher_view = others[0]
  if teacher_view == student_view:
    raise errors.UserError(f"The teacher's view must differ from the student's; both are "
                           f"{student_view!r} (a same-view teacher is --same_view_seed).")
  trained = loading.load_agent(plan.teacher_workdir, teacher_view, seed=plan.teacher_seed)
  if trained.config.data.dataset:
    raise errors.UserError(f"Migration runs on the embedded world; the teacher run "
                           f"{plan.teacher_workdir!r} was trained on dataset "
                           f"{trained.config.data.dataset!r}.")
  teachers = {"trained": {"agent": trained, "params": trained.params["encoder"],
                          "view": teacher_view},
              "random": {"agent": trained, "params": trained.initial_params()["encoder"],
                         "view": teacher_view}}
  if plan.same_view_seed is not None:
    a = loading.load_agent(plan.teacher_workdir, student_view, seed=plan.same_view_seed)
    teachers["same_view"] = {"agent": a, "params": a.params["encoder"], "view": student_view}
  if plan.supervised_workdir is not None:
    a = loading.load_agent(plan.supervised_workdir, plan.supervised_view or teacher_view,
                           seed=plan.teacher_seed)
    if a.kind != "supervised":
      raise errors.UserError(f"The supervised teacher in {plan.supervised_workdir!r} was trained "
                             f"with objective.kind={a.kind!r}; valid: supervised.")
    teachers["supervised"] = {"agent": a, "params": a.params["encoder"], "view": a.view}
  for kind, t in teachers.items():
    mine, theirs = (t["agent"].config.model, trained.config.model)
    bad = [f for f in _ARCHITECTURE if mine[f] != theirs[f]]
    if bad or t["agent"].image_size != trained.image_size:
      raise errors.UserError(f"The {kind} teacher's encoder differs from the teacher's in "
                             f"{bad or ['image_size']}; one program runs teachers of one "
                             "encoder architecture.")
  return teachers


def roles(teachers: dict[str, dict]) -> list[str]:
  """The students the available teachers allow, in ``ROLES`` order."""
  return [r for r, (t, *_) in ROLES.items() if t in teachers]


def stack_students(learner: agents.Learner, teachers: dict[str, dict], names: list[str],
                   seeds: Sequence[int], student_view: str, weight: float, dim_t: int):
  """The student axis, seed-major over (seed, role): initial states, settings, teacher
  views and encoder parameters, and keys, each stacked (S,)."""
  entries = [(s, r) for s in seeds for r in names]
  keys = jnp.stack([agents.agent_keys(s, [student_view])[0] for s, _ in entries])
  students = jax.jit(jax.vmap(lambda k: distill.init_student(learner, k, dim_t)))(keys)
  spec = [ROLES[r] for _, r in entries]
  settings = distill.Setting(
      jnp.asarray([weight if d else 0.0 for _, d, _, _ in spec], jnp.float32),
      jnp.asarray([l for *_, l, _ in spec]), jnp.asarray([sh for *_, sh in spec]))
  chosen = [teachers[t] for t, *_ in spec]
  views = jax.tree.map(lambda *x: np.stack(x), *[world.get_view(t["view"]) for t in chosen])
  params = jax.tree.map(lambda *x: jnp.stack(x), *[t["params"] for t in chosen])
  return entries, students, settings, views, params, keys


def _step_flops(learner, teacher_model, map_decay, students, settings, views, params, keys,
                student_view) -> dict[str, float]:
  """FLOPs per step of a scratch student, of a student of each map kind run alone, and of
  the whole program (one student's step, both maps, times S)."""
  one = lambda t: jax.eval_shape(lambda u: jax.tree.map(lambda x: x[0], u), t)  # counts only
  student, setting, view, teacher, key = map(one, (students, settings, views, params, keys))
  sv = world.get_view(student_view)
  count = lambda maps: flops.count_flops(
      lambda s, st, v, t, k, i: distill.student_step(
          learner, teacher_model, map_decay, s, st, sv, v, t, k, i, maps=maps),
      student, setting, view, teacher, key, jnp.int32(0))
  return {"scratch": flops.count_flops(
              lambda s, k, i: agents.train_step(learner, s, sv, k, i), student.agent, key,
              jnp.int32(0)),
          "procrustes": count(("procrustes",)), "learned": count(("learned",)),
          "program": count(distill.BOTH_MAPS) * keys.shape[0]}


def _time_scratch(learner, student_view: str, key: jax.Array, steps: int) -> float | None:
  """Seconds per step of one scratch student trained alone (``agents.train_step``), for
  the program's overhead; None when ``steps`` is 0."""
  if not steps:
    return None
  sv = world.get_view(student_view)
  fn = jax.jit(lambda s, i: agents.train_step(learner, s, sv, key, i), donate_argnums=0)
  state = agents.init_agent(learner, key)
  state, m = fn(state, jnp.int32(0))  # compiles
  jax.block_until_ready(m)
  start = time.perf_counter()
  for i in range(1, steps + 1):
    state, m = fn(state, jnp.int32(i))
  jax.block_until_ready(m)
  return (time.perf_counter() - start) / steps


def train_students(config: ml_collections.ConfigDict, learner: agents.Learner,
                   teacher_model: models.WorldModel, student_view: str, stacked: tuple,
                   names: list[str], probe: Callable[[PyTree], list[dict]],
                   writer: metrics_io.MetricWriter) -> tuple[list[list[dict]], dict]:
  """Trains every student in one program; returns each one's curve (probe scores at step
  0 and every ``eval_every`` steps, with cumulative FLOPs and the program's wall time) and
  the timing. ``stacked``: ``stack_students``' (students, settings, views, params, keys);
  ``names`` label the student axis in errors and TensorBoard."""
  students, settings, views, params, keys = stacked
  how = configs.agent_map(config)
  step_fn = jax.jit(distill.program(learner, teacher_model, config.migrate.map_decay,
                            world.get_view(student_view), how), donate_argnums=0)
  start = time.perf_counter()
  step_fn = step_fn.lower(students, settings, views, params, keys, jnp.int32(0)).compile()
  compile_s = time.perf_counter() - start
  curves = [[{"step": 0, "wall_s": 0.0, **p}] for p in probe(students.agent.params)]
  wall, checked = 0.0, 0
  for step in range(config.num_train_steps):
    start = time.perf_counter()
    students, metrics = step_fn(students, settings, views, params, keys, jnp.int32(step))
    if (step + 1) % config.eval_every and step + 1 != config.num_train_steps:
      wall += time.perf_counter() - start
      continue
    metrics = jax.device_get(metrics)
    wall += time.perf_counter() - start
    train.check_finite(metrics, names, checked, step + 1, None)
    checked = step + 1
    for name, curve, p in zip(names, curves, probe(students.agent.params)):
      curve.append({"step": step + 1, "wall_s": wall, **p})
      writer.write_scalars(step + 1, {f"migrate/{name}/{k}": v for k, v in p.items()})
    logging.info("step %d: class %s", step + 1,
                 " ".join(f"{n}={c[-1]['class_acc']:.3f}" for n, c in zip(names, curves)))
  return curves, {"compile_s": compile_s, "train_wall_s": wall,
                  "program_s_per_step": wall / config.num_train_steps, "student_map": how}


def run(plan: Plan, config: ml_collections.ConfigDict, target_acc: float,
        logdir: str | None = None) -> list[dict[str, Any]]:
  """Every student of ``ROLES`` the plan's teachers allow, for every seed, in one program;
  one report per seed (``report_for_seed``). With ``logdir``, the curves also go to
  TensorBoard event files there."""
  validate(config, target_acc, plan)
  plan = plan._replace(student_view=world.parse_views(plan.student_view)[0])
  teachers = load_teachers(plan)
  trained = teachers["trained"]["agent"]
  config = student_config(trained.config, config)
  learner = configs.learner_from_config(config)
  names = roles(teachers)
  dim_t = trained.config.model.dim
  entries, *stacked = stack_students(learner, teachers, names, plan.seeds, plan.student_view,
                                     config.migrate.weight, dim_t)
  labels = [f"s{s}/{r}" for s, r in entries]
  e = config.eval
  probe_set = data.world_paired_set(
      jax.random.key(e.seed), world.stack_views([plan.student_view, teachers["trained"]["view"]]),
      e.probe_train + e.probe_test, config.data.image_size)
  probe = lambda p: evaluate(learner, p, probe_set.obs[0], probe_set, e.probe_train,
                             e.probe_steps)
  per_step = _step_flops(learner, trained.model, config.migrate.map_decay, *stacked,
                         plan.student_view)
  with metrics_io.MetricWriter(logdir, enabled=logdir is not None) as writer:
    curves, timing = train_students(config, learner, trained.model, plan.student_view,
                                    tuple(stacked), labels, probe, writer)
  timing["scratch_alone_s_per_step"] = _time_scratch(
      learner, plan.student_view, stacked[-1][0], config.time_scratch_steps)
  native = probes.evaluate(trained.encode(probe_set.obs[1]), probe_set.labels, e.probe_train,
                           probe_set.num_classes, e.probe_steps)[1]
  shared = {"target_acc": target_acc, "teacher_native_acc": native["class_acc"],
            "teacher_native_position_r2": native.get("position_r2"),
            "teachers": {k: {"workdir": t["agent"].workdir, "view": t["view"],
                             "seed": t["agent"].seed, "kind": t["agent"].kind,
                             "initial_params": k == "random",
                             "training_flops": 0.0 if k == "random"
                             else teacher_training_flops(t["agent"])}
                         for k, t in teachers.items()},
            "student_view": plan.student_view, "steps": config.num_train_steps,
            "eval_every": config.eval_every, "migrate": config.migrate.to_dict(),
            "flops_per_step": per_step, "timing": timing}
  return [report_for_seed(shared, seed, {r: c for (s, r), c in zip(entries, curves)
                                         if s == seed})
          for seed in plan.seeds]


def report_for_seed(shared: dict, seed: int, curves: dict[str, list[dict]]) -> dict:
  """One student seed's report: every student's curve against its own FLOPs, final scores,
  and its FLOPs to the target against scratch (``compare``)."""
  per_step = shared["flops_per_step"]
  cost = lambda r: per_step["scratch"] if r == "scratch" else per_step[
      "learned" if ROLES[r][2] else "procrustes"]
  curves = {r: [{**p, "flops": cost(r) * p["step"]} for p in c] for r, c in curves.items()}
  teacher_flops = {r: shared["teachers"][ROLES[r][0]]["training_flops"] for r in curves
                   if r != "scratch"}
  students = {r: {"final_acc": c[-1]["class_acc"],
                  "final_position_r2": c[-1].get("position_r2"),
                  "flops_per_step": cost(r), "curve": c} for r, c in curves.items()}
  for r, cmp in compare(curves, shared["target_acc"], teacher_flops).items():
    students[r].update(cmp)
  # The headline, where a table of goals reads it: the migrating student's ratio.
  headline = {"ratio": students["migrate"]["ratio"],
              "teacher_kind": shared["teachers"]["trained"]["kind"]}
  return {**shared, **headline, "seed": seed,
          "scratch_final_acc": curves["scratch"][-1]["class_acc"],
          "flops_to_target": "linear interpolation between the probes bracketing the "
                             "first crossing", "students": students}
