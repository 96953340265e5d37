"""Encoders ``obs -> z`` and the action-conditioned predictor ``(z_t, a_t) -> z_{t+1}``.

Every encoder is built from dense layers over patches, so an agent axis added by
``jax.vmap`` becomes a batched matmul. A per-agent ``nn.Conv`` would instead become a
grouped convolution, which XLA's CPU backend runs several times slower (DESIGN.md sec. 4);
the CNN here extracts patches (no weights, so nothing per agent) and applies its kernel as
one matmul, which computes the same convolution.

Shapes: B = batch, H = W = image size, P = patches, C = width, D = latent size.
"""

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sjepa_jax.world.scene import NUM_CLASSES

ENCODERS = ("mixer", "vit", "cnn")
POOLS = ("flatten", "mean")


def pool_tokens(x_BxPxC: jax.Array, pool: str) -> jax.Array:
  """Tokens to one vector: ``flatten`` keeps where each feature is, ``mean`` discards it.

  A mean over patches is blind to position unless earlier layers write position into the
  channels; flattening lets the final dense layer read position off the token index.
  """
  if pool == "flatten":
    return x_BxPxC.reshape(x_BxPxC.shape[:-2] + (-1,))
  if pool == "mean":
    return x_BxPxC.mean(-2)
  raise ValueError(f"Unknown pool {pool!r}; valid pools: {', '.join(POOLS)}.")


def patchify(obs_BxHxWx3: jax.Array, patch: int) -> jax.Array:
  """Non-overlapping patch x patch tiles, flattened: (B, P, patch * patch * 3)."""
  h, w = obs_BxHxWx3.shape[-3:-1]
  if h % patch or w % patch:
    raise ValueError(f"Image size {h}x{w} is not divisible by patch size {patch}.")
  return einops.rearrange(obs_BxHxWx3, "... (h p) (w q) c -> ... (h w) (p q c)", p=patch, q=patch)


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense, back to the input width.

  The leading axes are flattened first: XLA's CPU backend runs the backward pass of a dense
  layer on (B, P, C) inputs, with the GELU fused in, about 3x slower than on (B * P, C)
  (benchmarks/torch_step.py; README "A PyTorch yardstick").
  """
  hidden: int

  @nn.compact
  def __call__(self, x):
    down, up = nn.Dense(x.shape[-1]), nn.Dense(self.hidden)  # names Dense_0, Dense_1 as before
    return down(nn.gelu(up(x.reshape(-1, x.shape[-1])))).reshape(x.shape)


class MixerEncoder(nn.Module):
  """MLP-Mixer over patches (arXiv 2105.01601), read out to D by ``pool`` (the flattened
  tokens by default). The default encoder."""
  dim: int
  patch: int = 8
  width: int = 128
  depth: int = 2
  pool: str = "flatten"

  @nn.compact
  def __call__(self, obs):
    x = nn.Dense(self.width)(patchify(obs, self.patch))
    for _ in range(self.depth):
      y = jnp.swapaxes(nn.LayerNorm()(x), -1, -2)
      x = x + jnp.swapaxes(MlpBlock(2 * x.shape[-2])(y), -1, -2)  # mixes patches
      x = x + MlpBlock(2 * self.width)(nn.LayerNorm()(x))  # mixes channels
    return nn.Dense(self.dim)(pool_tokens(nn.LayerNorm()(x), self.pool))


class VitEncoder(nn.Module):
  """A small ViT (arXiv 2010.11929): patch embedding, learned positions, pre-LN blocks."""
  dim: int
  patch: int = 8
  width: int = 128
  depth: int = 2
  pool: str = "flatten"
  heads: int = 4

  @nn.compact
  def __call__(self, obs):
    x = nn.Dense(self.width)(patchify(obs, self.patch))
    x += self.param("pos", nn.initializers.normal(0.02), x.shape[-2:])
    for _ in range(self.depth):
      x = x + nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x))
      x = x + MlpBlock(2 * self.width)(nn.LayerNorm()(x))
    return nn.Dense(self.dim)(pool_tokens(nn.LayerNorm()(x), self.pool))


class MatmulConv(nn.Module):
  """A stride-s, k x k, 'SAME' convolution computed as patch extraction plus one matmul."""
  features: int
  kernel: int = 3
  stride: int = 2

  @nn.compact
  def __call__(self, x_BxHxWxC):
    cols = jax.lax.conv_general_dilated_patches(
        x_BxHxWxC, (self.kernel, self.kernel), (self.stride, self.stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return nn.Dense(self.features)(cols)


class CnnEncoder(nn.Module):
  """Strided convolutions (as matmuls), then the feature map pooled and dense to D."""
  dim: int
  width: int = 32
  depth: int = 4
  pool: str = "flatten"

  @nn.compact
  def __call__(self, obs):
    x = obs
    for i in range(self.depth):
      x = nn.gelu(MatmulConv(self.width * 2 ** min(i, 2))(x))
    tokens = x.reshape(x.shape[:-3] + (-1, x.shape[-1]))
    return nn.Dense(self.dim)(pool_tokens(tokens, self.pool))


class Predictor(nn.Module):
  """Residual MLP: z_{t+1} = z_t + MLP([LN(z_t), a_t])."""
  hidden: int = 256
  depth: int = 2

  @nn.compact
  def __call__(self, z, action):
    x = jnp.concatenate([nn.LayerNorm()(z), action], -1)
    for _ in range(self.depth):
      x = nn.gelu(nn.Dense(self.hidden)(x))
    return z + nn.Dense(z.shape[-1])(x)


class PatchDecoder(nn.Module):
  """Latent back to pixels: z -> one token per patch -> per-token MLP -> patch pixels."""
  size: int
  patch: int = 8
  width: int = 128

  @nn.compact
  def __call__(self, z_BxD):
    grid = self.size // self.patch
    x = nn.Dense(grid * grid * self.width)(z_BxD)
    x = x.reshape(z_BxD.shape[:-1] + (grid * grid, self.width))
    x = x + MlpBlock(2 * self.width)(nn.LayerNorm()(x))
    x = nn.Dense(self.patch * self.patch * 3)(nn.LayerNorm()(x))
    return einops.rearrange(x, "... (h w) (p q c) -> ... (h p) (w q) c", h=grid, p=self.patch,
                            q=self.patch)


class InverseDynamics(nn.Module):
  """MLP from two consecutive latents to the action between them: ``(z_t, z_t+1) -> a_t``."""
  hidden: int
  action_dim: int

  @nn.compact
  def __call__(self, z, z_next):
    x = jnp.concatenate([nn.LayerNorm()(z), nn.LayerNorm()(z_next)], -1)
    return nn.Dense(self.action_dim)(nn.gelu(nn.Dense(self.hidden)(x)))


class LabelHead(nn.Module):
  """Linear read-out of the labels from the latent: class logits and a 2D position."""
  num_classes: int

  @nn.compact
  def __call__(self, z):
    out = nn.Dense(self.num_classes + 2)(z)
    return out[..., :self.num_classes], out[..., self.num_classes:]


class WorldModel(nn.Module):
  """One agent's networks: ``encode`` (obs -> z), ``predict`` ((z, a) -> z') and, for the
  autoencoder objective only, ``decode`` (z -> obs); for the supervised one, ``read`` (z ->
  class logits, position); with an inverse-dynamics term, ``infer_action`` ((z, z') -> a)."""
  encoder: nn.Module
  predictor: nn.Module
  decoder: nn.Module | None = None
  head: nn.Module | None = None
  inverse: nn.Module | None = None

  def __call__(self, obs, action):
    z = self.encode(obs)
    if self.decoder is not None:
      self.decode(z)  # creates the decoder's parameters at init
    if self.head is not None:
      self.read(z)  # creates the head's parameters at init
    if self.inverse is not None:
      self.infer_action(z, z)  # creates the inverse model's parameters at init
    return self.predict(z, action)

  def infer_action(self, z, z_next):
    return self.inverse(z, z_next)

  def decode(self, z):
    return self.decoder(z)

  def read(self, z):
    return self.head(z)

  def encode(self, obs):
    return self.encoder(obs)

  def predict(self, z, action):
    return self.predictor(z, action)


def make_model(config: ml_collections.ConfigDict, action_dim: int = 2) -> WorldModel:
  """The world model described by ``config.model``; unknown encoders list the valid ones."""
  m = config.model
  kinds: dict[str, Any] = {
      "mixer": lambda: MixerEncoder(m.dim, m.patch, m.width, m.depth, m.pool),
      "vit": lambda: VitEncoder(m.dim, m.patch, m.width, m.depth, m.pool),
      "cnn": lambda: CnnEncoder(m.dim, m.width // 4, m.depth, m.pool),
  }
  if m.encoder not in kinds:
    raise ValueError(f"Unknown encoder {m.encoder!r}; valid encoders: {', '.join(ENCODERS)}.")
  decoder = head = inverse = None
  if config.objective.kind == "autoencoder":
    decoder = PatchDecoder(config.data.image_size, m.patch, m.width)
  if config.objective.kind == "supervised":
    head = LabelHead(NUM_CLASSES)
  if config.objective.kind == "jepa" and config.objective.inverse_weight > 0:
    inverse = InverseDynamics(m.predictor_hidden, action_dim)
  return WorldModel(kinds[m.encoder](), Predictor(m.predictor_hidden, m.predictor_depth),
                    decoder, head, inverse)
