"""Agents: state with a leading agent axis, initialisation, and one agent's train step.

``train_step`` is written for one agent and trained for many with
``jax.jit(jax.vmap(train_step, in_axes=(0, 0, 0, None)))``: every agent draws its own
batch from its own view with its own key, so nothing passes between agents. Keys are
``fold_in(agent_key, step)``, so a resumed run continues exactly and keys are never saved.
An agent's key depends only on the seed and its view's name, so an agent trains the same
whether it is trained alone or beside others.

Shapes: A = agents, B = batch, L = frames per sample, D = latent size.
"""

import functools
import zlib
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sjepa_jax import checkpointing
from sjepa_jax import data
from sjepa_jax import losses
from sjepa_jax import models
from sjepa_jax.world import scene

PyTree = Any
OBJECTIVES = ("jepa", "autoencoder", "supervised")
TARGETS = ("ema", "online")
REGULARIZERS = ("vicreg", "sigreg", "none")
AGENT_MAPS = ("auto", "vmap", "lax_map")
# The data fields of runs saved before datasets existed (they all used the world).
DATA_DEFAULTS = {"dataset": "", "data_dir": "", "train_split": "train", "eval_split": "test",
                 "region_size": 0.6, "min_crop": 0.5}


class AgentState(NamedTuple):
  """Everything one agent learns (leaves gain a leading agent axis when stacked)."""
  params: PyTree  # online encoder and predictor
  target: PyTree  # EMA copy of the encoder's params (unused when the target is 'online')
  opt_state: optax.OptState


class Roster(NamedTuple):
  """Who is on the agent axis: one entry per agent, view-major over (view, seed)."""
  names: list[str]  # the view's name with one seed; ``<view>_s<seed>`` with several
  views: list[str]
  seeds: list[int]


def roster(views: Sequence[str], seeds: int | Sequence[int]) -> Roster:
  """Every (view, seed) pair as one agent: seeds are just more entries on the agent axis."""
  seeds = [seeds] if isinstance(seeds, int) else list(seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"Seeds must be distinct and at least one, got {seeds}.")
  pairs = [(v, s) for v in views for s in seeds]
  names = [v if len(seeds) == 1 else f"{v}_s{s}" for v, s in pairs]
  return Roster(names, [v for v, _ in pairs], [s for _, s in pairs])


def agent_keys(seeds: int | Sequence[int], views: Sequence[str]) -> jax.Array:
  """One key per agent, a function of (seed, view name) only: (A,) keys. ``seeds`` is one
  seed for every agent, or one per agent."""
  seeds = [seeds] * len(views) if isinstance(seeds, int) else seeds
  return jnp.stack([jax.random.fold_in(jax.random.key(s), zlib.crc32(v.encode()))
                    for s, v in zip(seeds, views, strict=True)])


def _model(config: ml_collections.ConfigDict) -> models.WorldModel:
  return models.make_model(config, data.action_dim(config))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay over the run, after global-norm clipping."""
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.lr, min(o.warmup_steps, config.num_train_steps - 1), config.num_train_steps,
      end_value=o.lr * o.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(o.grad_clip),
                     optax.adamw(schedule, eps=o.eps, weight_decay=o.weight_decay))


def agent_map(config: ml_collections.ConfigDict, agents_sharded: bool = False) -> str:
  """How several agents share one program: ``config.agent_map``, with ``auto`` resolved to
  ``lax_map`` on CPU (agents one after another: up to 3x vmap's speed on 2 cores,
  benchmarks/vmap_agents.py) and ``vmap`` on GPU and TPU, which batch small agents well,
  or when the agents are split over devices (a loop over them would run on one at a time)."""
  if config.agent_map not in AGENT_MAPS:
    raise ValueError(f"Unknown agent_map {config.agent_map!r}; valid: {', '.join(AGENT_MAPS)}.")
  if config.agent_map == "auto":
    return "lax_map" if jax.default_backend() == "cpu" and not agents_sharded else "vmap"
  return config.agent_map


def init_agent(key: jax.Array, config: ml_collections.ConfigDict) -> AgentState:
  """A fresh agent: random networks, EMA target equal to the encoder, fresh optimizer."""
  model = _model(config)
  size = config.data.image_size
  obs = jnp.zeros((1, size, size, 3))
  action = jnp.zeros((1, data.action_dim(config)))
  params = model.init(jax.random.fold_in(key, 0), obs, action)["params"]
  target = jax.tree.map(jnp.copy, params["encoder"])  # own buffers: the state is donated
  return AgentState(params, target, make_optimizer(config).init(params))


def init_agents(config: ml_collections.ConfigDict, views: Sequence[str],
                seeds: int | Sequence[int]) -> AgentState:
  """Stacked fresh agents, one per (view, seed) entry: leaves have a leading axis of A."""
  init = jax.jit(jax.vmap(lambda k: init_agent(k, config)))
  return init(agent_keys(seeds, views))


def encode(config: ml_collections.ConfigDict, encoder_params: PyTree,
           obs: jax.Array) -> jax.Array:
  """Latents of observations (..., H, W, 3) -> (..., D) with one agent's encoder params."""
  model = _model(config)
  lead = obs.shape[:-3]
  z = model.apply({"params": {"encoder": encoder_params}}, obs.reshape((-1,) + obs.shape[-3:]),
                  method=models.WorldModel.encode)
  return z.reshape(lead + z.shape[-1:])


@functools.partial(jax.jit, static_argnames="config")
def _encode_one(config, encoder_params, obs):
  return encode(config, encoder_params, obs)


@functools.partial(jax.jit, static_argnames="config")
def _encode_stacked(config, encoder_params, obs):
  return jax.vmap(lambda p, o: encode(config, p, o))(encoder_params, obs)


def encode_chunked(config: ml_collections.ConfigDict, encoder_params: PyTree,
                   obs: jax.Array, index: Sequence[int] | None = None,
                   chunk: int = 256) -> jax.Array:
  """Latents of many observations, jitted ``chunk`` states at a time to bound memory.

  Without ``index``: one agent's encoder params, obs (N, H, W, 3) -> (N, D). With
  ``index`` (A,): stacked agents' params and obs (U, N, H, W, 3) of U views; agent ``a``
  encodes the states as seen from view ``index[a]`` -> (A, N, D) (agents of several seeds
  share a view's frames, rendered once).
  """
  frozen = ml_collections.FrozenConfigDict(config)
  if index is None:
    return jnp.concatenate([_encode_one(frozen, encoder_params, obs[i:i + chunk])
                            for i in range(0, obs.shape[0], chunk)])
  index = np.asarray(index)
  return jnp.concatenate([_encode_stacked(frozen, encoder_params, obs[:, i:i + chunk][index])
                          for i in range(0, obs.shape[1], chunk)], axis=1)


def autoencoder_loss_fn(params: PyTree, batch: data.Batch, config: ml_collections.ConfigDict
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pixel reconstruction of every frame through the latent: the non-predictive control."""
  model = _model(config)
  z_BxLxD = encode(config, params["encoder"], batch.obs)
  recon = model.apply({"params": params}, z_BxLxD, method=models.WorldModel.decode)
  loss = jnp.mean((recon - batch.obs) ** 2)
  z_flat = z_BxLxD.reshape(-1, z_BxLxD.shape[-1])
  metrics = {"reconstruction": loss, "embedding_std": losses.embedding_std(z_flat),
             "loss": loss}
  return loss, metrics


def supervised_loss_fn(params: PyTree, batch: data.Batch, config: ml_collections.ConfigDict
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The labels read linearly off the latent of every frame: cross-entropy on the focal
  class plus squared error on its position (in arena half-widths). The same encoder trained
  on what the probes ask for: the ceiling of what one view can give."""
  model = _model(config)
  z_BxLxD = encode(config, params["encoder"], batch.obs)
  logits, position = model.apply({"params": params}, z_BxLxD, method=models.WorldModel.read)
  labels = batch.labels
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels["class"]).mean()
  mse = jnp.mean(jnp.sum((position - labels["position"] / scene.ARENA_HALF) ** 2, -1))
  loss = ce + mse
  z_flat = z_BxLxD.reshape(-1, z_BxLxD.shape[-1])
  metrics = {"class_xent": ce, "position_mse": mse,
             "class_acc": jnp.mean(jnp.argmax(logits, -1) == labels["class"]),
             "embedding_std": losses.embedding_std(z_flat), "loss": loss}
  return loss, metrics


def loss_fn(params: PyTree, target: PyTree, batch: data.Batch, key: jax.Array,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One agent's loss on its batch: by default (JEPA) multi-step latent prediction plus a
  regulariser; with ``objective.kind = 'autoencoder'``, pixel reconstruction; with
  ``'supervised'``, the probes' labels."""
  if config.objective.kind == "autoencoder":
    return autoencoder_loss_fn(params, batch, config)
  if config.objective.kind == "supervised":
    return supervised_loss_fn(params, batch, config)
  z_BxLxD = encode(config, params["encoder"], batch.obs)
  return jepa_loss(params, target, z_BxLxD, batch, key, config)


def jepa_loss(params: PyTree, target: PyTree, z_BxLxD: jax.Array, batch: data.Batch,
              key: jax.Array, config: ml_collections.ConfigDict
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The JEPA loss given the online encoder's latents of the batch, ``z_BxLxD``."""
  model = _model(config)
  o = config.objective
  # Stop-gradient: the target is not trained through, whether EMA copy or online encoder.
  target_z = z_BxLxD if o.target == "online" else encode(config, target, batch.obs)
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
  loss = o.prediction_weight * pred
  if o.inverse_weight > 0:
    # Inverse dynamics: the action must be readable from two consecutive latents, so the
    # encoder cannot drop what the action moves (a slow latent that ignores the pushed
    # object would otherwise predict itself for free). Through the online encoder.
    a_hat = model.apply({"params": params}, z_BxLxD[:, :-1], z_BxLxD[:, 1:],
                        method=models.WorldModel.infer_action)
    metrics["inverse_dynamics"] = jnp.mean(jnp.sum((a_hat - batch.actions) ** 2, -1))
    loss += o.inverse_weight * metrics["inverse_dynamics"]
  if o.regularizer == "vicreg":
    metrics["vicreg_variance"] = losses.vicreg_variance(z_flat)
    metrics["vicreg_covariance"] = losses.vicreg_covariance(z_flat)
    loss += o.variance_weight * metrics["vicreg_variance"]
    loss += o.covariance_weight * metrics["vicreg_covariance"]
  elif o.regularizer == "sigreg":
    metrics["sigreg"] = losses.sigreg(z_flat, key, o.sigreg_directions)
    loss += o.sigreg_weight * metrics["sigreg"]
  metrics["loss"] = loss
  return loss, metrics


def apply_gradients(state: AgentState, grads: PyTree, config: ml_collections.ConfigDict
                    ) -> AgentState:
  """The optimiser update of the online networks, then the EMA update of the target."""
  updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  target = optax.incremental_update(params["encoder"], state.target,
                                    step_size=1 - config.objective.ema_decay)
  return AgentState(params, target, opt_state)


def train_step(state: AgentState, view: Any, key: jax.Array, step: jax.Array,
               config: ml_collections.ConfigDict, batch_sharding: Any = None,
               pixels: jax.Array | None = None) -> tuple[AgentState, dict[str, jax.Array]]:
  """One optimisation step of one agent on a fresh batch seen from its view.

  ``view`` is a ``world.View``, or an ``images.Region`` of ``pixels`` (the dataset's train
  images, shared by every agent) when the config names a dataset.
  ``batch_sharding``, when given, constrains the batch's leading axis to be split over
  devices (for runs with more devices than agents).
  """
  step_key = jax.random.fold_in(key, step)
  data_key, loss_key = jax.random.split(step_key)
  batch = data.batch(config, data_key, view, pixels)
  if batch_sharding is not None:  # spread the batch over devices; statistics stay global
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(
      state.params, state.target, batch, loss_key, config)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return apply_gradients(state, grads, config), metrics


# Numeric fields of a training config and the values that mean something: (low, high,
# whether low is allowed). Checked before anything compiles or is written.
RANGES = {
    **{k: (1, None, True) for k in (
        "num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints", "model.dim",
        "model.patch", "model.width", "model.predictor_hidden", "objective.sigreg_directions",
        "data.batch_size", "data.image_size", "eval.probe_train", "eval.probe_test",
        "eval.alignment_pairs", "eval.probe_steps")},
    **{k: (0, None, True) for k in (
        "model.depth", "model.predictor_depth", "optim.warmup_steps", "optim.weight_decay",
        "objective.prediction_weight", "objective.variance_weight",
        "objective.covariance_weight", "objective.sigreg_weight")},
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
        raise ValueError(f"config.{name} must be {bound}, got {value}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects unknown choices and out-of-range numbers in ``config``, naming the valid ones."""
  check_ranges(config, RANGES)
  o = config.objective
  if o.kind not in OBJECTIVES:
    raise ValueError(f"Unknown objective.kind {o.kind!r}; valid: {', '.join(OBJECTIVES)}.")
  if o.target not in TARGETS:
    raise ValueError(f"Unknown objective.target {o.target!r}; valid: {', '.join(TARGETS)}.")
  if o.regularizer not in REGULARIZERS:
    raise ValueError(f"Unknown objective.regularizer {o.regularizer!r}; valid: "
                     f"{', '.join(REGULARIZERS)}.")
  if config.model.encoder not in models.ENCODERS:
    raise ValueError(f"Unknown model.encoder {config.model.encoder!r}; valid: "
                     f"{', '.join(models.ENCODERS)}.")
  if config.agent_map not in AGENT_MAPS:
    raise ValueError(f"Unknown agent_map {config.agent_map!r}; valid: {', '.join(AGENT_MAPS)}.")
  if config.model.pool not in models.POOLS:
    raise ValueError(f"Unknown model.pool {config.model.pool!r}; valid: "
                     f"{', '.join(models.POOLS)}.")
  if not data.is_world(config):
    if not 0 < config.data.region_size <= 1:
      raise ValueError(f"data.region_size must be in (0, 1], got {config.data.region_size}.")
    if not 0 < config.data.min_crop <= 1:
      raise ValueError(f"data.min_crop must be in (0, 1], got {config.data.min_crop}.")
    if config.data.train_split == config.data.eval_split:
      raise ValueError(f"data.train_split and data.eval_split are both "
                       f"{config.data.train_split!r}: probes and alignment must be scored on "
                       "images the agents never trained on.")
  if o.kind == "supervised" and not data.is_world(config):
    raise ValueError(f"objective.kind 'supervised' reads the world's focal labels; dataset "
                     f"{config.data.dataset!r} has none. Valid for datasets: jepa, autoencoder.")
  if config.data.frames < 2:
    raise ValueError(f"data.frames must be at least 2 (one transition), got {config.data.frames}.")
  if (config.model.encoder != "cnn" or o.kind == "autoencoder") and (
      config.data.image_size % config.model.patch):
    raise ValueError(f"config.data.image_size ({config.data.image_size}) must be a multiple of "
                     f"config.model.patch ({config.model.patch}).")


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """A saved run's config, with fields added since it was saved set to what it meant then
  (runs saved before ``objective.kind`` existed were all JEPA runs)."""
  config = ml_collections.ConfigDict(meta["config"])
  if "kind" not in config.objective:
    config.objective.kind = "jepa"
  if "inverse_weight" not in config.objective:  # runs saved before the inverse-dynamics term
    config.objective.inverse_weight = 0.0
  for k, v in DATA_DEFAULTS.items():  # runs saved before datasets existed used the world
    if k not in config.data:
      config.data[k] = v
  return config


def meta_seeds(meta: dict) -> list[int]:
  """Each saved agent's seed (runs saved before ``--seeds`` had one seed for all)."""
  return list(meta.get("seeds", [meta["seed"]] * len(meta["views"])))


def run_views(workdir: str) -> list[str]:
  """The views of the agents a training run's latest checkpoint holds (one per agent)."""
  return list(checkpointing.read_meta(workdir)[0]["views"])


def load_agent(workdir: str, view: str, step: int | None = None, seed: int | None = None
               ) -> tuple[PyTree, ml_collections.ConfigDict]:
  """One agent's parameters from a training run, by view name, and the run's config.

  Works for runs of one view or several: the checkpoint records which views (and seeds) it
  holds; ``seed`` picks one where the run trained the view with several seeds.
  Use ``encode(config, params["encoder"], obs)`` to get the agent's latents.
  """
  meta, step = checkpointing.read_meta(workdir, step)
  views, seeds = meta["views"], meta_seeds(meta)
  held = [i for i, (v, s) in enumerate(zip(views, seeds)) if v == view and seed in (None, s)]
  if len(held) != 1:
    have = ", ".join(f"{v} (seed {s})" for v, s in zip(views, seeds))
    what = "No agent" if not held else "Several agents (give seed=)"
    raise ValueError(f"{what} for view {view!r}{'' if seed is None else f' seed {seed}'} in "
                     f"{workdir!r}; it holds {have}.")
  state, config = restore_run(workdir, step)
  return jax.tree.map(lambda x: x[held[0]], state.params), config


def restore_run(workdir: str, step: int | None = None
                ) -> tuple[AgentState, ml_collections.ConfigDict]:
  """Every agent of a training run at ``step`` (default: the latest checkpoint), stacked as
  in training (the checkpoint's ``views`` and seeds in order), and the run's config."""
  meta, step = checkpointing.read_meta(workdir, step)
  config = config_from_meta(meta)
  abstract = jax.eval_shape(lambda: init_agents(config, meta["views"], meta_seeds(meta)))
  mngr = checkpointing.reader(workdir)
  state, _ = checkpointing.restore(mngr, abstract, step)
  mngr.close()
  return state, config
