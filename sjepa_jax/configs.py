"""From a run's config to values: validation, the networks, the optimiser and the
``agents.Learner``. The one place below the entry points that reads a whole config; what
it builds takes plain values.
"""

from typing import Sequence

import jax
import ml_collections
import optax

from sjepa_jax import agents
from sjepa_jax import data
from sjepa_jax import errors
from sjepa_jax import models
from sjepa_jax import objectives
from sjepa_jax import recordings
from sjepa_jax.world import scene

AGENT_MAPS = ("auto", "vmap", "lax_map")


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


def learner_from_config(config: ml_collections.ConfigDict) -> agents.Learner:
  """Networks, optimiser, objective and sampler of the run ``config`` describes."""
  return agents.Learner(model_from_config(config), optimizer_from_config(config),
                 objectives.Objective(**config.objective.to_dict()), _sampler(config),
                 config.data.image_size, data.action_dim(config), config.optim.lr)


def _sampler(config: ml_collections.ConfigDict):
  d = config.data
  return data.sampler(d.dataset, d.batch_size, d.frames, d.image_size, d.min_crop, d.stride)


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


# Settings added after runs were saved, with the value that reproduces what those runs did:
# a saved config without one reads as this (loading.config_from_meta), so it still resumes
# and is studied as it was.
ADDED = {"data.stride": 1, "eval.probe_fit": "eval"}


# Numeric fields of a training config and the values that mean something: (low, high,
# whether low is allowed). Checked before anything compiles or is written.
RANGES = {
    **{k: (1, None, True) for k in (
        "num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints", "model.dim",
        "model.patch", "model.width", "model.predictor_hidden", "objective.sigreg_directions",
        "objective.mask_block", "data.batch_size", "data.image_size", "data.stride",
        "eval.probe_train",
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
  _check_choice("objective.kind", o.kind, objectives.OBJECTIVES)
  _check_choice("objective.target", o.target, objectives.TARGETS)
  _check_choice("objective.regularizer", o.regularizer, objectives.REGULARIZERS)
  _check_choice("objective.token_context", o.token_context, objectives.TOKEN_CONTEXTS)
  _check_choice("model.encoder", config.model.encoder, models.ENCODERS)
  _check_choice("agent_map", config.agent_map, AGENT_MAPS)
  _check_choice("model.pool", config.model.pool, models.POOLS)
  _check_choice("model.compute_dtype", config.model.compute_dtype,
                ("auto",) + tuple(models.COMPUTE_DTYPES))
  _check_choice("data.flip", config.data.flip, recordings.FLIPS)
  _check_choice("eval.probe_fit", config.eval.probe_fit, data.PROBE_FITS)
  if not 0 <= config.data.holdout_fraction < 1:
    raise errors.UserError(f"data.holdout_fraction must be in [0, 1), got "
                           f"{config.data.holdout_fraction}.")
  if config.data.dataset:
    if not 0 < config.data.region_size <= 1:
      raise errors.UserError(f"data.region_size must be in (0, 1], got {config.data.region_size}.")
    if not 0 < config.data.min_crop <= 1:
      raise errors.UserError(f"data.min_crop must be in (0, 1], got {config.data.min_crop}.")
    if config.data.train_split == config.data.eval_split:
      raise errors.UserError(f"data.train_split and data.eval_split are both "
                             f"{config.data.train_split!r}: probes and alignment must be scored on "
                             "images the agents never trained on.")
  if o.kind == "supervised" and config.data.dataset:
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
