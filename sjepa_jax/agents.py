"""Agents: what one agent is made of, its state, who is on the agent axis, and one train
step.

A ``Learner`` is everything about how an agent learns that is not learnt: its networks
(``models.WorldModel``), optimiser, ``objectives.Objective`` and batch sampler, built once
from a run's config by ``config.learner_from_config``.
``train_step(learner, state, view, key, step)`` is written for one agent and trained for
many with ``jax.vmap`` or ``jax.lax.map`` over a leading agent axis of the state, views
and keys: every agent draws its own batch from its own view with its own key, so nothing
passes between agents. Keys are ``fold_in(agent_key, step)``, so a resumed run continues
exactly and keys are never saved. An agent's key depends only on the seed and its view's
name, so an agent trains the same whether it is trained alone or beside others.

Shapes: A = agents.
"""

import dataclasses
import functools
import itertools
import zlib
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sjepa_jax import data
from sjepa_jax import errors
from sjepa_jax import models
from sjepa_jax import objectives

PyTree = Any
Hparams = dict[str, Any]  # a swept field -> its value (one agent), or values (A,) stacked


class AgentState(NamedTuple):
  """Everything one agent learns (leaves gain a leading agent axis when stacked)."""
  params: PyTree  # online networks
  target: PyTree  # EMA copy of the encoder's params (the target of EMA objectives)
  opt_state: optax.OptState


Sampler = Callable[[jax.Array, Any, jax.Array | None], data.Batch]


@dataclasses.dataclass(frozen=True)
class Learner:
  """How one agent learns, built once: networks, optimiser, objective, and ``sample(key,
  view, pixels)`` for its batches (``pixels``: a dataset's train images; None for the
  world). ``image_size`` and ``action_dim`` shape the dummy input of ``init_agent``."""
  model: models.WorldModel
  optimizer: optax.GradientTransformation
  objective: objectives.Objective
  sample: Sampler
  image_size: int
  action_dim: int
  lr: float = 1e-3  # the optimiser's peak learning rate (a swept ``optim.lr`` scales it)

  def value(self, hparams: Hparams, field: str) -> Any:
    """A number of the objective or the optimiser: this agent's swept value, if any."""
    if field in hparams:
      return hparams[field]
    return self.lr if field == "optim.lr" else getattr(self.objective, field.split(".")[1])


# --- Keys and state ----------------------------------------------------------------------

# Numbers of a run that may differ between the agents of one program (a sweep): they enter
# the step as values, not shapes, so every combination trains in the same jitted program.
SWEEPABLE = ("objective.prediction_weight", "objective.inverse_weight",
             "objective.variance_weight", "objective.covariance_weight",
             "objective.sigreg_weight", "objective.token_weight", "objective.seq_weight",
             "objective.ema_decay", "optim.lr")


class Roster(NamedTuple):
  """Who is on the agent axis: one entry per agent, view-major over (view, seed, swept
  values)."""
  names: list[str]  # the view; ``_s<seed>`` with several seeds; ``_<field><value>`` swept
  views: list[str]
  seeds: list[int]
  hparams: list[dict[str, float]]  # each agent's swept values ({} without a sweep)


def parse_sweep(specs: Sequence[str] | None) -> dict[str, list[float]]:
  """``field=v1,v2,...`` strings to {field: values}: the sweep, every combination of them
  one more set of agents. An unknown field, or one that is not a number, lists the valid
  ones."""
  sweep = {}
  for spec in specs or ():
    field, _, values = spec.partition("=")
    field = field.strip().removeprefix("config.")
    if field not in SWEEPABLE:
      raise errors.UserError(f"Cannot sweep {field!r} in one program; valid fields (numbers, not "
                             f"shapes): {', '.join(SWEEPABLE)}.")
    try:
      sweep[field] = [float(v) for v in values.split(",") if v.strip()]
    except ValueError as e:
      raise errors.UserError(f"--sweep={spec!r}: values must be numbers, comma-separated.") from e
    if not sweep[field] or len(set(sweep[field])) != len(sweep[field]):
      raise errors.UserError(f"--sweep={spec!r}: give distinct values, comma-separated.")
  return sweep


def roster(views: Sequence[str], seeds: int | Sequence[int],
           sweep: dict[str, list[float]] | None = None) -> Roster:
  """Every (view, seed, swept values) as one agent: seeds and sweep values are just more
  entries on the agent axis."""
  seeds = [seeds] if isinstance(seeds, int) else list(seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise errors.UserError(f"Seeds must be distinct and at least one, got {seeds}.")
  sweep = sweep or {}
  combos = [dict(zip(sweep, c)) for c in itertools.product(*sweep.values())]
  entries = [(v, s, c) for v in views for s in seeds for c in combos]
  suffix = lambda c: "".join(f"_{k.split('.')[-1]}{x:g}" for k, x in c.items())
  names = [(v if len(seeds) == 1 else f"{v}_s{s}") + suffix(c) for v, s, c in entries]
  return Roster(names, [v for v, _, _ in entries], [s for _, s, _ in entries],
                [c for _, _, c in entries])


def hparams_label(hparams: dict[str, float]) -> str:
  """Swept values as a table shows them: `` inverse_weight=4 lr=0.001`` ("" without a sweep)."""
  return "".join(f" {k.split('.')[-1]}={v:g}" for k, v in hparams.items())


def stacked_hparams(hparams: Sequence[dict[str, float]]) -> Hparams:
  """Each swept field's values over the agents, (A,) float32 (empty without a sweep)."""
  fields = hparams[0].keys() if hparams else ()
  return {k: jnp.asarray([h[k] for h in hparams], jnp.float32) for k in fields}


def with_sweep_maxima(config: ml_collections.ConfigDict,
                      hparams: Sequence[dict[str, float]]) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose swept fields hold their largest value: the networks and
  terms a run needs are those of any of its agents (a term one agent weighs 0 still
  exists, weighed 0)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for field in (hparams[0] if hparams else {}):
    group, name = field.split(".")
    config[group][name] = max(h[field] for h in hparams)
  return config


def agent_keys(seeds: int | Sequence[int], views: Sequence[str]) -> jax.Array:
  """One key per agent, a function of (seed, view name) only: (A,) keys. ``seeds`` is one
  seed for every agent, or one per agent."""
  seeds = [seeds] * len(views) if isinstance(seeds, int) else seeds
  return jnp.stack([jax.random.fold_in(jax.random.key(s), zlib.crc32(v.encode()))
                    for s, v in zip(seeds, views, strict=True)])


def init_params(model: models.WorldModel, key: jax.Array, image_size: int,
                action_dim: int) -> PyTree:
  """Fresh parameters of every network of ``model`` from an agent's key."""
  obs = jnp.zeros((1, image_size, image_size, 3))
  return model.init(jax.random.fold_in(key, 0), obs, jnp.zeros((1, action_dim)))["params"]


def init_agent(learner: Learner, key: jax.Array) -> AgentState:
  """A fresh agent: random networks, EMA target equal to the encoder, fresh optimiser."""
  params = init_params(learner.model, key, learner.image_size, learner.action_dim)
  target = jax.tree.map(jnp.copy, params["encoder"])  # own buffers: the state is donated
  return AgentState(params, target, learner.optimizer.init(params))


def init_agents(learner: Learner, views: Sequence[str], seeds: int | Sequence[int]
                ) -> AgentState:
  """Stacked fresh agents, one per (view, seed) entry: leaves have a leading axis of A."""
  return jax.jit(jax.vmap(functools.partial(init_agent, learner)))(agent_keys(seeds, views))


# --- One step ----------------------------------------------------------------------------

def apply_gradients(learner: Learner, state: AgentState, grads: PyTree,
                    hparams: Hparams | None = None) -> AgentState:
  """The optimiser update of the online networks, then the EMA update of the target."""
  hparams = hparams or {}
  updates, opt_state = learner.optimizer.update(grads, state.opt_state, state.params)
  if "optim.lr" in hparams:  # AdamW's update is proportional to its learning rate
    updates = jax.tree.map(lambda u: u * (hparams["optim.lr"] / learner.lr), updates)
  params = optax.apply_updates(state.params, updates)
  target = optax.incremental_update(
      params["encoder"], state.target,
      step_size=1 - learner.value(hparams, "objective.ema_decay"))
  return AgentState(params, target, opt_state)


def train_step(learner: Learner, state: AgentState, view: Any, key: jax.Array,
               step: jax.Array, pixels: jax.Array | None = None, batch_sharding: Any = None,
               hparams: Hparams | None = None) -> tuple[AgentState, dict[str, jax.Array]]:
  """One optimisation step of one agent on a fresh batch seen from its view.

  ``hparams`` holds this agent's values of the swept fields (``SWEEPABLE``), if any: under
  ``jax.vmap`` or ``lax.map`` each agent of a sweep trains with its own.

  ``view`` is a ``world.View``, an ``images.Region`` of ``pixels`` (a dataset's train
  images, shared by every agent), or a camera index into ``pixels`` (a recording's
  ``recordings.OnDevice``). ``batch_sharding``, when given, constrains the batch's
  leading axis to be split over devices (for runs with more devices than agents).
  """
  data_key, loss_key = jax.random.split(jax.random.fold_in(key, step))
  batch = learner.sample(data_key, view, pixels)
  if batch_sharding is not None:  # spread the batch over devices; statistics stay global
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  loss = functools.partial(objectives.loss_fn, learner.model, learner.objective,
                           hparams=hparams)
  grads, metrics = jax.grad(loss, has_aux=True)(state.params, state.target, batch, loss_key)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return apply_gradients(learner, state, grads, hparams), metrics
