"""Objectives: what one agent minimises, and the loss of each kind on one agent's batch.

``Objective`` names the kind (``jepa``, or a control: ``autoencoder``, ``supervised``) and
the weights of the JEPA terms; ``loss_fn(model, objective, params, target, batch, key)``
is the loss the train step differentiates. The terms' building blocks (VICReg, SIGReg, the
prediction error) are in ``losses``.

Shapes: B = batch, L = frames per sample, D = latent size, P = tokens, C = token width.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sjepa_jax import data
from sjepa_jax import losses
from sjepa_jax import models
from sjepa_jax.world import scene

PyTree = Any
Hparams = dict[str, Any]  # a swept field -> its value for one agent
OBJECTIVES = ("jepa", "autoencoder", "supervised")
TARGETS = ("ema", "online")
REGULARIZERS = ("vicreg", "sigreg", "none")
TOKEN_CONTEXTS = ("tokens", "latent")


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


def autoencoder_loss(model: models.WorldModel, params: PyTree, batch: data.Batch
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pixel reconstruction of every frame through the latent: the non-predictive control."""
  z_BxLxD = models.encode(model, params["encoder"], batch.obs)
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
  z_BxLxD = models.encode(model, params["encoder"], batch.obs)
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
    z0, tokens0 = models.encode_tokens(model, params["encoder"], obs0, mask)
  else:
    mask = jnp.ones(tokens_BxPxC.shape[:2], bool)
    z0, tokens0 = z_BxLxD[:, 0], tokens_BxPxC
  # Stop-gradient: the targets come from the EMA copy, which is not trained.
  _, goal = jax.lax.stop_gradient(models.encode_tokens(model, target, batch.obs[:, h]))
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


def jepa_loss(model: models.WorldModel, o: Objective, params: PyTree, target: PyTree,
              batch: data.Batch, key: jax.Array, z_BxLxD: jax.Array | None = None,
              hparams: Hparams | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The JEPA loss of one agent's batch (``Objective``'s terms, weighed by this agent's
  swept values where it has them). ``z_BxLxD``, the online encoder's latents of the batch,
  is computed here unless given."""
  weight = lambda name: (hparams or {}).get(f"objective.{name}", getattr(o, name))
  tokens = None
  if z_BxLxD is None:
    b, l = batch.obs.shape[:2]
    frames = batch.obs.reshape((b * l,) + batch.obs.shape[2:])
    z, tokens = models.encode_tokens(model, params["encoder"], frames)
    z_BxLxD = z.reshape(b, l, -1)
    tokens = tokens.reshape((b, l) + tokens.shape[1:])
  # Stop-gradient: the target is not trained through, whether EMA copy or online encoder.
  target_z = z_BxLxD if o.target == "online" else models.encode(model, target, batch.obs)
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
      _, tokens_0 = models.encode_tokens(model, params["encoder"], batch.obs[:, 0])
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


def loss_fn(model: models.WorldModel, o: Objective, params: PyTree, target: PyTree,
            batch: data.Batch, key: jax.Array, hparams: Hparams | None = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One agent's loss on its batch, by ``o.kind``; ``hparams`` holds this agent's swept
  ``objective.*`` values, if any."""
  if o.kind == "autoencoder":
    return autoencoder_loss(model, params, batch)
  if o.kind == "supervised":
    return supervised_loss(model, params, batch)
  return jepa_loss(model, o, params, target, batch, key, hparams=hparams)
