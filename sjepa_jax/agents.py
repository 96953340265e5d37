"""Agents: what one agent is made of, its state, its loss and one train step; and loading a
trained agent back.

A ``Learner`` is everything about how an agent learns that is not learnt: its networks
(``models.WorldModel``), optimiser, ``Objective`` and batch sampler, built once from a run's
config by ``learner_from_config`` (the one place below the entry points that reads one).
``train_step(learner, state, view, key, step)`` is written for one agent and trained for
many with ``jax.vmap`` or ``jax.lax.map`` over a leading agent axis of the state, views
and keys: every agent draws its own batch from its own view with its own key, so nothing
passes between agents. Keys are ``fold_in(agent_key, step)``, so a resumed run continues
exactly and keys are never saved. An agent's key depends only on the seed and its view's
name, so an agent trains the same whether it is trained alone or beside others.

``load_agent(workdir, view)`` gives a trained ``Agent``: its name, view, seed, model and
parameters (no optimiser state), with ``encode(obs)``.

Shapes: A = agents, B = batch, L = frames per sample, D = latent size, P = tokens,
C = token width.
"""

import dataclasses
import functools
import itertools
import zlib
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sjepa_jax import checkpointing
from sjepa_jax import data
from sjepa_jax import errors
from sjepa_jax import losses
from sjepa_jax import models
from sjepa_jax import recordings
from sjepa_jax.world import scene

PyTree = Any
Hparams = dict[str, Any]  # a swept field -> its value (one agent), or values (A,) stacked
OBJECTIVES = ("jepa", "autoencoder", "supervised")
TARGETS = ("ema", "online")
REGULARIZERS = ("vicreg", "sigreg", "none")
TOKEN_CONTEXTS = ("tokens", "latent")
AGENT_MAPS = ("auto", "vmap", "lax_map")


class AgentState(NamedTuple):
  """Everything one agent learns (leaves gain a leading agent axis when stacked)."""
  params: PyTree  # online networks
  target: PyTree  # EMA copy of the encoder's params (the target of EMA objectives)
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Objective:
  """What one agent minimises. ``kind`` is ``jepa`` (latent prediction plus its terms),
  ``autoencoder`` (pixel reconstruction: a control) or ``supervised`` (the labels: the
  ceiling). The JEPA terms, each on when its weight is above 0:

  - prediction: the latent ``z`` rolled out over the sample's frames by the predictor,
    against the target encoder's latents (``target``: the online encoder under
    stop-gradient, or its EMA copy);
  - inverse dynamics: the action read back from two consecutive latents;
  - VICReg or SIGReg (``regularizer``) on the batch's latents;
  - token prediction (I-JEPA / V-JEPA): the EMA encoder's tokens of frame
    ``token_horizon`` predicted from frame 0 (``token_context``: its visible tokens, or
    its latent alone), the action conditioning it across time; with ``mask_blocks`` > 0,
    that many square blocks of ``mask_block`` x ``mask_block`` tokens, placed where the
    frames change most, are hidden from the context and are the targets;
  - seq-JEPA: a transformer aggregates the first L - 1 latents, each with the action to the
    next frame, and predicts the last frame's (target) latent from the aggregate.
  """
  kind: str
  target: str
  ema_decay: float
  regularizer: str
  prediction_weight: float
  inverse_weight: float
  variance_weight: float
  covariance_weight: float
  sigreg_weight: float
  sigreg_directions: int
  token_weight: float
  token_context: str
  token_horizon: int
  mask_blocks: int
  mask_block: int
  seq_weight: float


Sampler = Callable[[jax.Array, Any, jax.Array | None], data.Batch]


@dataclasses.dataclass(frozen=True)
class Learner:
  """How one agent learns, built once: networks, optimiser, objective, and ``sample(key,
  view, pixels)`` for its batches (``pixels``: a dataset's train images; None for the
  world). ``image_size`` and ``action_dim`` shape the dummy input of ``init_agent``."""
  model: models.WorldModel
  optimizer: optax.GradientTransformation
  objective: Objective
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


# --- Encoding ----------------------------------------------------------------------------

def encode(model: models.WorldModel, encoder_params: PyTree, obs: jax.Array) -> jax.Array:
  """Latents of observations (..., H, W, 3) -> (..., D) with one agent's encoder params."""
  lead = obs.shape[:-3]
  z = model.apply({"params": {"encoder": encoder_params}}, obs.reshape((-1,) + obs.shape[-3:]),
                  method=models.WorldModel.encode)
  return z.reshape(lead + z.shape[-1:])


def encode_tokens(model: models.WorldModel, encoder_params: PyTree, obs_BxHxWx3: jax.Array,
                  mask_BxP: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(latents (B, D), tokens (B, P, C)) of a batch, hiding the tokens ``mask`` marks."""
  return model.apply({"params": {"encoder": encoder_params}}, obs_BxHxWx3, mask_BxP,
                     method=models.WorldModel.encode_tokens)


@functools.partial(jax.jit, static_argnums=0)
def _encode_one(model, encoder_params, obs):
  return encode(model, encoder_params, obs)


@functools.partial(jax.jit, static_argnums=0)
def _encode_stacked(model, encoder_params, obs):
  return jax.vmap(lambda p, o: encode(model, p, o))(encoder_params, obs)


def encode_chunked(model: models.WorldModel, encoder_params: PyTree, obs: jax.Array,
                   index: Sequence[int] | None = None, chunk: int = 256) -> jax.Array:
  """Latents of many observations, jitted ``chunk`` states at a time to bound memory.

  Without ``index``: one agent's encoder params, obs (N, H, W, 3) -> (N, D). With
  ``index`` (A,): stacked agents' params and obs (U, N, H, W, 3) of U views; agent ``a``
  encodes the states as seen from view ``index[a]`` -> (A, N, D) (agents of several seeds
  share a view's frames, rendered once).
  """
  if index is None:
    return jnp.concatenate([_encode_one(model, encoder_params, obs[i:i + chunk])
                            for i in range(0, obs.shape[0], chunk)])
  index = np.asarray(index)
  return jnp.concatenate([_encode_stacked(model, encoder_params, obs[:, i:i + chunk][index])
                          for i in range(0, obs.shape[1], chunk)], axis=1)


# --- Losses ------------------------------------------------------------------------------

def autoencoder_loss(model: models.WorldModel, params: PyTree, batch: data.Batch
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pixel reconstruction of every frame through the latent: the non-predictive control."""
  z_BxLxD = encode(model, params["encoder"], batch.obs)
  recon = model.apply({"params": params}, z_BxLxD, method=models.WorldModel.decode)
  loss = jnp.mean((recon - batch.obs) ** 2)
  z_flat = z_BxLxD.reshape(-1, z_BxLxD.shape[-1])
  return loss, {"reconstruction": loss, "embedding_std": losses.embedding_std(z_flat),
                "loss": loss}


def supervised_loss(model: models.WorldModel, params: PyTree, batch: data.Batch
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The labels read linearly off the latent of every frame: cross-entropy on the focal
  class plus squared error on its position (in arena half-widths). The same encoder trained
  on what the probes ask for: the ceiling of what one view can give."""
  z_BxLxD = encode(model, params["encoder"], batch.obs)
  logits, position = model.apply({"params": params}, z_BxLxD, method=models.WorldModel.read)
  labels = batch.labels
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels["class"]).mean()
  mse = jnp.mean(jnp.sum((position - labels["position"] / scene.ARENA_HALF) ** 2, -1))
  loss = ce + mse
  z_flat = z_BxLxD.reshape(-1, z_BxLxD.shape[-1])
  return loss, {"class_xent": ce, "position_mse": mse,
                "class_acc": jnp.mean(jnp.argmax(logits, -1) == labels["class"]),
                "embedding_std": losses.embedding_std(z_flat), "loss": loss}


def motion_blocks(key: jax.Array, obs_Bx2xHxWx3: jax.Array, patch: int, blocks: int,
                  size: int) -> jax.Array:
  """Token masks (B, P): ``blocks`` square blocks of ``size`` x ``size`` tokens per sample,
  centred on tokens drawn with probability rising with how much their pixels change between
  the two frames (Gumbel top-k on the log change), so that with fixed cameras the blocks
  fall on what moves rather than on the static background."""
  change = jnp.abs(obs_Bx2xHxWx3[:, 1] - obs_Bx2xHxWx3[:, 0]).mean(-1)  # (B, H, W)
  b, h, w = change.shape
  grid_h, grid_w = h // patch, w // patch
  per_token = change.reshape(b, grid_h, patch, grid_w, patch).mean((2, 4)).reshape(b, -1)
  gumbel = jax.random.gumbel(key, per_token.shape)
  _, centres = jax.lax.top_k(jnp.log(per_token + 1e-6) + gumbel, blocks)  # (B, blocks)
  rows, cols = jnp.arange(grid_h)[:, None], jnp.arange(grid_w)[None, :]
  lo = (size - 1) // 2

  def block(c):
    r0 = jnp.clip(c // grid_w - lo, 0, grid_h - size)
    c0 = jnp.clip(c % grid_w - lo, 0, grid_w - size)
    return ((rows >= r0) & (rows < r0 + size) & (cols >= c0) & (cols < c0 + size)).reshape(-1)

  return jnp.any(jax.vmap(jax.vmap(block))(centres), axis=1)


def token_loss(model: models.WorldModel, params: PyTree, target: PyTree, batch: data.Batch,
               z_BxLxD: jax.Array, tokens_BxPxC: jax.Array, key: jax.Array, o: Objective
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked / token-level latent prediction (I-JEPA arXiv 2301.08243, V-JEPA 2404.08471).

  Targets are the EMA encoder's tokens of frame ``o.token_horizon``, layer-normalised per
  token (as I-JEPA's); the context is frame 0, seen by the online encoder with the masked
  blocks hidden (``z_BxLxD`` and ``tokens_BxPxC`` are its unmasked encoding, reused when
  nothing is hidden). The loss is the mean over target tokens of their squared error.
  """
  h = o.token_horizon
  obs0 = batch.obs[:, 0]
  if o.mask_blocks > 0:
    mask = motion_blocks(key, batch.obs[:, :2], model.encoder.patch, o.mask_blocks,
                         o.mask_block)
    z0, tokens0 = encode_tokens(model, params["encoder"], obs0, mask)
  else:
    mask = jnp.ones(tokens_BxPxC.shape[:2], bool)
    z0, tokens0 = z_BxLxD[:, 0], tokens_BxPxC
  # Stop-gradient: the targets come from the EMA copy, which is not trained.
  _, goal = jax.lax.stop_gradient(encode_tokens(model, target, batch.obs[:, h]))
  goal = (goal - goal.mean(-1, keepdims=True)) / jnp.sqrt(goal.var(-1, keepdims=True) + 1e-6)
  context = tokens0 if o.token_context == "tokens" else z0
  action = batch.actions[:, 0] if h > 0 else None
  pred = model.apply({"params": params}, context, action, method=models.WorldModel.predict_tokens)
  err = jnp.mean((pred - goal) ** 2, -1)  # (B, P)
  loss = jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1)
  return loss, {"token_prediction": loss, "masked_fraction": jnp.mean(mask)}


def seq_loss(model: models.WorldModel, params: PyTree, z_BxLxD: jax.Array,
             target_BxLxD: jax.Array, actions_BxKxA: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """seq-JEPA (arXiv 2505.03176): the aggregate of frames 0 .. L-2, each with the action to
  the next, predicts the target latent of frame L-1."""
  _, pred = model.apply({"params": params}, z_BxLxD[:, :-1], actions_BxKxA,
                        method=models.WorldModel.aggregate)
  loss = losses.prediction_loss(pred, target_BxLxD[:, -1])
  return loss, {"seq_prediction": loss}


def jepa_loss(learner: Learner, params: PyTree, target: PyTree, batch: data.Batch,
              key: jax.Array, z_BxLxD: jax.Array | None = None,
              hparams: Hparams | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The JEPA loss of one agent's batch (``Objective``'s terms, weighed by this agent's
  swept values where it has them). ``z_BxLxD``, the online encoder's latents of the batch,
  is computed here unless given."""
  model, o = learner.model, learner.objective
  weight = lambda name: learner.value(hparams or {}, f"objective.{name}")
  tokens = None
  if z_BxLxD is None:
    b, l = batch.obs.shape[:2]
    frames = batch.obs.reshape((b * l,) + batch.obs.shape[2:])
    z, tokens = encode_tokens(model, params["encoder"], frames)
    z_BxLxD = z.reshape(b, l, -1)
    tokens = tokens.reshape((b, l) + tokens.shape[1:])
  # Stop-gradient: the target is not trained through, whether EMA copy or online encoder.
  target_z = z_BxLxD if o.target == "online" else encode(model, target, batch.obs)
  target_z = jax.lax.stop_gradient(target_z)
  z_hat, pred, copy = z_BxLxD[:, 0], 0.0, 0.0
  horizon = batch.actions.shape[1]
  for t in range(horizon):  # roll the predictor out from the first frame
    z_hat = model.apply({"params": params}, z_hat, batch.actions[:, t],
                        method=models.WorldModel.predict)
    pred += losses.prediction_loss(z_hat, target_z[:, t + 1]) / horizon
    # The copy predictor (z_{t+1} = z_0): what prediction costs if the world stood still.
    copy += losses.prediction_loss(target_z[:, 0], target_z[:, t + 1]) / horizon
  z_flat = z_BxLxD.reshape(-1, z_BxLxD.shape[-1])
  metrics = {"prediction": pred, "copy_prediction": jax.lax.stop_gradient(copy),
             "embedding_std": losses.embedding_std(z_flat)}
  loss = weight("prediction_weight") * pred
  if o.inverse_weight > 0:
    # Inverse dynamics: the action must be readable from two consecutive latents, so the
    # encoder cannot drop what the action moves (a slow latent that ignores the pushed
    # object would otherwise predict itself for free). Through the online encoder.
    a_hat = model.apply({"params": params}, z_BxLxD[:, :-1], z_BxLxD[:, 1:],
                        method=models.WorldModel.infer_action)
    metrics["inverse_dynamics"] = jnp.mean(jnp.sum((a_hat - batch.actions) ** 2, -1))
    loss += weight("inverse_weight") * metrics["inverse_dynamics"]
  if o.token_weight > 0:
    tokens_0 = None if tokens is None else tokens[:, 0]
    if tokens_0 is None:
      _, tokens_0 = encode_tokens(model, params["encoder"], batch.obs[:, 0])
    term, extra = token_loss(model, params, target, batch, z_BxLxD, tokens_0,
                             jax.random.fold_in(key, 1), o)
    metrics.update(extra)
    loss += weight("token_weight") * term
  if o.seq_weight > 0:
    term, extra = seq_loss(model, params, z_BxLxD, target_z, batch.actions)
    metrics.update(extra)
    loss += weight("seq_weight") * term
  if o.regularizer == "vicreg":
    metrics["vicreg_variance"] = losses.vicreg_variance(z_flat)
    metrics["vicreg_covariance"] = losses.vicreg_covariance(z_flat)
    loss += weight("variance_weight") * metrics["vicreg_variance"]
    loss += weight("covariance_weight") * metrics["vicreg_covariance"]
  elif o.regularizer == "sigreg":
    metrics["sigreg"] = losses.sigreg(z_flat, key, o.sigreg_directions)
    loss += weight("sigreg_weight") * metrics["sigreg"]
  metrics["loss"] = loss
  return loss, metrics


def loss_fn(learner: Learner, params: PyTree, target: PyTree, batch: data.Batch,
            key: jax.Array, hparams: Hparams | None = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One agent's loss on its batch, by ``learner.objective.kind``."""
  if learner.objective.kind == "autoencoder":
    return autoencoder_loss(learner.model, params, batch)
  if learner.objective.kind == "supervised":
    return supervised_loss(learner.model, params, batch)
  return jepa_loss(learner, params, target, batch, key, hparams=hparams)


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
  grads, metrics = jax.grad(functools.partial(loss_fn, learner, hparams=hparams),
                            has_aux=True)(state.params, state.target, batch, loss_key)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return apply_gradients(learner, state, grads, hparams), metrics


# --- From a config: the boundary ---------------------------------------------------------

def compute_dtype(name: str, backend: str | None = None):
  """``model.compute_dtype``: ``auto`` is bfloat16 on GPU and TPU, float32 on CPU (where
  bfloat16 matmuls are no faster)."""
  if name == "auto":
    name = "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
  return models.COMPUTE_DTYPES[name]


def model_from_config(config: ml_collections.ConfigDict) -> models.WorldModel:
  """The world model ``config.model`` and ``config.objective`` describe."""
  m, o = config.model, config.objective
  dtype = compute_dtype(m.compute_dtype)
  encoder = models.make_encoder(m.encoder, m.dim, m.patch, m.width, m.depth, m.pool, dtype)
  decoder = head = inverse = token_predictor = aggregator = None
  if o.kind == "autoencoder":
    decoder = models.PatchDecoder(config.data.image_size, m.patch, m.width, dtype)
  if o.kind == "supervised":
    head = models.LabelHead(scene.NUM_CLASSES, dtype)
  if o.kind == "jepa":
    if o.inverse_weight > 0:
      inverse = models.InverseDynamics(m.predictor_hidden, data.action_dim(config), dtype)
    if o.token_weight > 0:
      tokens = (config.data.image_size // m.patch) ** 2
      token_predictor = models.TokenPredictor(tokens, m.width, m.width,
                                              from_latent=o.token_context == "latent",
                                              conditioned=o.token_horizon > 0, dtype=dtype)
    if o.seq_weight > 0:
      aggregator = models.Aggregator(m.dim, config.data.frames - 1, m.width, dtype=dtype)
  predictor = models.Predictor(m.predictor_hidden, m.predictor_depth, dtype)
  hides = token_predictor is not None and o.mask_blocks > 0
  return models.WorldModel(encoder, predictor, decoder, head, inverse, token_predictor,
                           aggregator, hides_tokens=hides)


def optimizer_from_config(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay over the run, after global-norm clipping."""
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.lr, min(o.warmup_steps, config.num_train_steps - 1), config.num_train_steps,
      end_value=o.lr * o.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(o.grad_clip),
                     optax.adamw(schedule, eps=o.eps, weight_decay=o.weight_decay))


def learner_from_config(config: ml_collections.ConfigDict) -> Learner:
  """Networks, optimiser, objective and sampler of the run ``config`` describes."""
  return Learner(model_from_config(config), optimizer_from_config(config),
                 Objective(**config.objective.to_dict()), data.sampler(config),
                 config.data.image_size, data.action_dim(config), config.optim.lr)


def agent_map(config: ml_collections.ConfigDict, agents_sharded: bool = False) -> str:
  """How several agents share one program: ``config.agent_map``, with ``auto`` resolved to
  ``lax_map`` on CPU (agents one after another, which XLA's CPU backend runs faster than a
  batched vmap: benchmarks/vmap_agents.py) and ``vmap`` on GPU and TPU, which batch small
  agents well, or when the agents are split over devices (a loop over them would run on one
  at a time)."""
  if config.agent_map not in AGENT_MAPS:
    raise errors.UserError(f"Unknown agent_map {config.agent_map!r}; valid: "
                           f"{', '.join(AGENT_MAPS)}.")
  if config.agent_map == "auto":
    return "lax_map" if jax.default_backend() == "cpu" and not agents_sharded else "vmap"
  return config.agent_map


# Numeric fields of a training config and the values that mean something: (low, high,
# whether low is allowed). Checked before anything compiles or is written.
RANGES = {
    **{k: (1, None, True) for k in (
        "num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints", "model.dim",
        "model.patch", "model.width", "model.predictor_hidden", "objective.sigreg_directions",
        "objective.mask_block", "data.batch_size", "data.image_size", "eval.probe_train",
        "eval.probe_test", "eval.alignment_pairs", "eval.probe_steps")},
    **{k: (0, None, True) for k in (
        "model.depth", "model.predictor_depth", "optim.warmup_steps", "optim.weight_decay",
        "objective.prediction_weight", "objective.variance_weight", "objective.inverse_weight",
        "objective.covariance_weight", "objective.sigreg_weight", "objective.token_weight",
        "objective.token_horizon", "objective.mask_blocks", "objective.seq_weight")},
    **{k: (0, None, False) for k in ("optim.lr", "optim.eps", "optim.grad_clip")},
    "optim.final_lr_fraction": (0, 1, True),
    "objective.ema_decay": (0, 1, True),
}


def check_ranges(config: ml_collections.ConfigDict, ranges: dict[str, tuple]) -> None:
  """Raises naming the first field of ``config`` outside its range in ``ranges``."""
  for name, (low, high, low_ok) in ranges.items():
    value = config
    for part in name.split("."):
      if part not in value:
        break
      value = value[part]
    else:
      if value is None or not (value > low or (low_ok and value == low)) or (
          high is not None and value > high):
        bound = f"{'>=' if low_ok else '>'} {low}" + ("" if high is None else f" and <= {high}")
        raise errors.UserError(f"config.{name} must be {bound}, got {value}.")


def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
  if value not in valid:
    raise errors.UserError(f"Unknown {name} {value!r}; valid: {', '.join(valid)}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects unknown choices and out-of-range numbers in ``config``, naming the valid ones."""
  check_ranges(config, RANGES)
  o = config.objective
  _check_choice("objective.kind", o.kind, OBJECTIVES)
  _check_choice("objective.target", o.target, TARGETS)
  _check_choice("objective.regularizer", o.regularizer, REGULARIZERS)
  _check_choice("objective.token_context", o.token_context, TOKEN_CONTEXTS)
  _check_choice("model.encoder", config.model.encoder, models.ENCODERS)
  _check_choice("agent_map", config.agent_map, AGENT_MAPS)
  _check_choice("model.pool", config.model.pool, models.POOLS)
  _check_choice("model.compute_dtype", config.model.compute_dtype,
                ("auto",) + tuple(models.COMPUTE_DTYPES))
  _check_choice("data.flip", config.data.flip, recordings.FLIPS)
  if not 0 <= config.data.holdout_fraction < 1:
    raise errors.UserError(f"data.holdout_fraction must be in [0, 1), got "
                           f"{config.data.holdout_fraction}.")
  if not data.is_world(config):
    if not 0 < config.data.region_size <= 1:
      raise errors.UserError(f"data.region_size must be in (0, 1], got {config.data.region_size}.")
    if not 0 < config.data.min_crop <= 1:
      raise errors.UserError(f"data.min_crop must be in (0, 1], got {config.data.min_crop}.")
    if config.data.train_split == config.data.eval_split:
      raise errors.UserError(f"data.train_split and data.eval_split are both "
                             f"{config.data.train_split!r}: probes and alignment must be scored on "
                             "images the agents never trained on.")
  if o.kind == "supervised" and not data.is_world(config):
    raise errors.UserError(f"objective.kind 'supervised' reads the world's focal labels; "
                           f"dataset {config.data.dataset!r} has none. Valid for datasets: "
                           "jepa, autoencoder.")
  if config.data.frames < 2:
    raise errors.UserError(f"data.frames must be at least 2 (one transition), got "
                           f"{config.data.frames}.")
  if o.token_horizon >= config.data.frames:
    raise errors.UserError(f"objective.token_horizon ({o.token_horizon}) must be below data.frames "
                           f"({config.data.frames}): its target is a frame of the sample.")
  if o.token_weight > 0 and o.mask_blocks > 0 and config.model.encoder == "cnn":
    raise errors.UserError("objective.mask_blocks > 0 hides tokens from the encoder, which needs a "
                           "patch encoder; valid model.encoder: mixer, vit.")
  grid = config.data.image_size // config.model.patch
  if o.token_weight > 0 and o.mask_blocks > 0 and o.mask_block > grid:
    raise errors.UserError(f"objective.mask_block ({o.mask_block}) is larger than the token grid "
                           f"({grid} x {grid}).")
  if (config.model.encoder != "cnn" or o.kind == "autoencoder") and (
      config.data.image_size % config.model.patch):
    raise errors.UserError(f"config.data.image_size ({config.data.image_size}) must be a "
                           f"multiple of config.model.patch ({config.model.patch}).")


# --- Trained agents ----------------------------------------------------------------------

# What fields added since a run was saved meant before they existed.
_LEGACY = {"objective": {"kind": "jepa", "inverse_weight": 0.0, "token_weight": 0.0,
                         "token_context": "tokens", "token_horizon": 1, "mask_blocks": 0,
                         "mask_block": 2, "seq_weight": 0.0},
           "model": {"compute_dtype": "float32"},
           "data": {"dataset": "", "data_dir": "", "train_split": "train",
                    "eval_split": "test", "region_size": 0.6, "min_crop": 0.5, "labels": "",
                    "holdout_fraction": 0.2, "flip": "none", "action_dim": 0}}


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """A saved run's config, with fields added since it was saved set to what it meant then
  (runs saved before the world had datasets all used the world, and so on)."""
  config = ml_collections.ConfigDict(meta["config"])
  for group, fields in _LEGACY.items():
    for k, v in fields.items():
      if k not in config[group]:
        config[group][k] = v
  return config


def meta_seeds(meta: dict) -> list[int]:
  """Each saved agent's seed (runs saved before ``--seeds`` had one seed for all)."""
  return list(meta.get("seeds", [meta["seed"]] * len(meta["views"])))


def meta_hparams(meta: dict) -> list[dict[str, float]]:
  """Each saved agent's swept values ({} for runs without a sweep)."""
  return list(meta.get("hparams", [{}] * len(meta["views"])))


def meta_names(meta: dict) -> list[str]:
  """Each saved agent's name (as ``roster`` names it)."""
  views, seeds = meta["views"], meta_seeds(meta)
  several = len(set(seeds)) > 1
  return list(meta.get("names", [f"{v}_s{s}" if several else v for v, s in zip(views, seeds)]))


@dataclasses.dataclass(frozen=True, repr=False)
class Agent:
  """One trained agent: who it is, its networks and their parameters (no optimiser state).

  ``encode(obs)`` gives its latents; ``initial_params()`` the same networks at
  initialisation (the random-init control). It prints in one line, never its parameters.
  """
  name: str
  view: str
  seed: int
  kind: str  # its objective: jepa, autoencoder or supervised
  model: models.WorldModel
  params: PyTree
  image_size: int
  action_dim: int
  workdir: str = ""
  step: int = 0
  hparams: dict = dataclasses.field(default_factory=dict, compare=False)  # its swept values
  # The run's config, for provenance (what trained it); nothing above reads it.
  config: ml_collections.ConfigDict | None = dataclasses.field(default=None, compare=False,
                                                               repr=False)

  def __repr__(self) -> str:
    size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
    return (f"Agent(name={self.name!r}, view={self.view!r}, seed={self.seed}, "
            f"kind={self.kind!r}, step={self.step}, dim={self.model.encoder.dim}, "
            f"image={self.image_size}x{self.image_size}, params={size:,}"
            f"{hparams_label(self.hparams).replace(' ', ', ')})")

  def encode(self, obs: jax.Array, chunk: int = 256) -> jax.Array:
    """Latents of observations (N, H, W, 3) float in [0, 1] -> (N, D)."""
    return encode_chunked(self.model, self.params["encoder"], jnp.asarray(obs), chunk=chunk)

  def initial_params(self) -> PyTree:
    """Its parameters before training: a function of its seed and view alone."""
    key = agent_keys(self.seed, [self.view])[0]
    return init_params(self.model, key, self.image_size, self.action_dim)


def load_agents(workdir: str, step: int | None = None) -> list[Agent]:
  """Every agent of the training run in ``workdir`` at ``step`` (default: the newest intact
  checkpoint), in the run's order; only their parameters are read."""
  meta, step = checkpointing.read_meta(workdir, step)
  config = config_from_meta(meta)
  views, seeds, hparams = meta["views"], meta_seeds(meta), meta_hparams(meta)
  learner = learner_from_config(with_sweep_maxima(config, hparams))
  abstract = jax.eval_shape(lambda: init_agents(learner, views, seeds).params)
  mngr = checkpointing.reader(workdir)
  params, _ = checkpointing.restore_params(mngr, abstract, step)
  mngr.close()
  return [Agent(name, v, s, config.objective.kind, learner.model,
                jax.tree.map(lambda x, a=a: x[a], params), learner.image_size,
                learner.action_dim, workdir=workdir, step=step, hparams=h, config=config)
          for a, (name, v, s, h) in enumerate(zip(meta_names(meta), views, seeds, hparams))]


def load_agent(workdir: str, view: str, seed: int | None = None, step: int | None = None
               ) -> Agent:
  """One trained agent by view (and ``seed`` where the run trained the view with several),
  or by its name (``mountain_s1_inverse_weight4`` in a sweep)."""
  meta, _ = checkpointing.read_meta(workdir, step)
  views, seeds, names = meta["views"], meta_seeds(meta), meta_names(meta)
  held = [i for i, (v, s) in enumerate(zip(views, seeds)) if v == view and seed in (None, s)]
  if view in names and view not in views:
    held = [names.index(view)]
  if len(held) != 1:
    have = ", ".join(names)
    what = "No agent" if not held else "Several agents (give seed=, or a name)"
    raise errors.UserError(f"{what} for view {view!r}{'' if seed is None else f' seed {seed}'} in "
                           f"{workdir!r}; it holds {have}.")
  return load_agents(workdir, step)[held[0]]
