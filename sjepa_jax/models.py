"""Encoders ``obs -> z`` and the action-conditioned predictor ``(z_t, a_t) -> z_{t+1}``.

Every encoder is built from dense layers over patches, so an agent axis added by
``jax.vmap`` becomes a batched matmul. A per-agent ``nn.Conv`` would instead become a
grouped convolution, which XLA's CPU backend runs several times slower (DESIGN.md sec. 4);
the CNN here extracts patches (no weights, so nothing per agent) and applies its kernel as
one matmul, which computes the same convolution.

Every encoder returns the latent ``z`` (what probes and maps read) and the tokens it was
read out from (what token-level objectives predict). The patch encoders take an optional
mask of tokens hidden from them: a hidden patch's embedding is replaced by a learned mask
token before any token mixing, so the encoder sees only the visible context.

Shapes: B = batch, H = W = image size, P = patches (tokens), C = width, D = latent size,
A = action size.
"""

import functools
from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sjepa_jax import errors

ENCODERS = ("mixer", "vit", "cnn")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
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
  raise errors.UserError(f"Unknown pool {pool!r}; valid pools: {', '.join(POOLS)}.")


def patchify(obs_BxHxWx3: jax.Array, patch: int) -> jax.Array:
  """Non-overlapping patch x patch tiles, flattened: (B, P, patch * patch * 3)."""
  h, w = obs_BxHxWx3.shape[-3:-1]
  if h % patch or w % patch:
    raise errors.UserError(f"Image size {h}x{w} is not divisible by patch size {patch}.")
  return einops.rearrange(obs_BxHxWx3, "... (h p) (w q) c -> ... (h w) (p q c)", p=patch, q=patch)


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense, back to the input width.

  The leading axes are flattened first: XLA's CPU backend runs the backward pass of a dense
  layer on (B, P, C) inputs, with the GELU fused in, several times slower than on (B * P, C)
  (benchmarks/torch_step.py).
  """
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Created down first, so the down projection is Dense_0.
    down, up = nn.Dense(x.shape[-1], dtype=self.dtype), nn.Dense(self.hidden, dtype=self.dtype)
    return down(nn.gelu(up(x.reshape(-1, x.shape[-1])))).reshape(x.shape)


def mixer_block(x_BxPxC: jax.Array, channel_hidden: int, dtype: Any = jnp.float32
                ) -> jax.Array:
  """One MLP-Mixer block (arXiv 2105.01601), inside a compact module: pre-LN token mixing,
  then pre-LN channel mixing, each residual."""
  y = jnp.swapaxes(nn.LayerNorm(dtype=dtype)(x_BxPxC), -1, -2)
  x = x_BxPxC + jnp.swapaxes(MlpBlock(2 * x_BxPxC.shape[-2], dtype)(y), -1, -2)  # patches
  return x + MlpBlock(channel_hidden, dtype)(nn.LayerNorm(dtype=dtype)(x))  # channels


def hide(module: nn.Module, x_BxPxC: jax.Array, mask_BxP: jax.Array | None) -> jax.Array:
  """Replaces the embeddings of hidden patches (``mask`` True) by ``module``'s learned mask
  token, a parameter that exists only in models that hide tokens."""
  if mask_BxP is None:
    return x_BxPxC
  token = module.param("mask_token", nn.initializers.normal(0.02), (x_BxPxC.shape[-1],))
  return jnp.where(mask_BxP[..., None], token.astype(x_BxPxC.dtype), x_BxPxC)


class MixerEncoder(nn.Module):
  """MLP-Mixer over patches (arXiv 2105.01601), read out to D by ``pool`` (the flattened
  tokens by default). The default encoder."""
  dim: int
  patch: int = 8
  width: int = 128
  depth: int = 2
  pool: str = "flatten"
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, obs, mask=None):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    x = dense(self.width)(patchify(obs, self.patch))
    x = hide(self, x, mask)
    for _ in range(self.depth):
      x = mixer_block(x, 2 * self.width, self.dtype)
    tokens = norm()(x)
    return dense(self.dim)(pool_tokens(tokens, self.pool)), tokens


class VitEncoder(nn.Module):
  """A small ViT (arXiv 2010.11929): patch embedding, learned positions, pre-LN blocks."""
  dim: int
  patch: int = 8
  width: int = 128
  depth: int = 2
  pool: str = "flatten"
  heads: int = 4
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, obs, mask=None):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    x = dense(self.width)(patchify(obs, self.patch))
    x = hide(self, x, mask)
    x += self.param("pos", nn.initializers.normal(0.02), x.shape[-2:])
    for _ in range(self.depth):
      x = x + nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype)(norm()(x))
      x = x + MlpBlock(2 * self.width, self.dtype)(norm()(x))
    tokens = norm()(x)
    return dense(self.dim)(pool_tokens(tokens, self.pool)), tokens


class MatmulConv(nn.Module):
  """A stride-s, k x k, 'SAME' convolution computed as patch extraction plus one matmul."""
  features: int
  kernel: int = 3
  stride: int = 2
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, x_BxHxWxC):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    cols = jax.lax.conv_general_dilated_patches(
        x_BxHxWxC, (self.kernel, self.kernel), (self.stride, self.stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return dense(self.features)(cols)


class CnnEncoder(nn.Module):
  """Strided convolutions (as matmuls), then the feature map pooled and dense to D."""
  dim: int
  width: int = 32
  depth: int = 4
  pool: str = "flatten"
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, obs, mask=None):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    if mask is not None:
      raise errors.UserError("The cnn encoder has no patches to hide; token masking needs a patch "
                             "encoder: mixer or vit.")
    x = obs
    for i in range(self.depth):
      x = nn.gelu(MatmulConv(self.width * 2 ** min(i, 2), dtype=self.dtype)(x))
    tokens = x.reshape(x.shape[:-3] + (-1, x.shape[-1]))
    return dense(self.dim)(pool_tokens(tokens, self.pool)), tokens


class Predictor(nn.Module):
  """Residual MLP: z_{t+1} = z_t + MLP([LN(z_t), a_t])."""
  hidden: int = 256
  depth: int = 2
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, z, action):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    x = jnp.concatenate([norm()(z), action], -1)
    for _ in range(self.depth):
      x = nn.gelu(dense(self.hidden)(x))
    return z + dense(z.shape[-1])(x)


class PatchDecoder(nn.Module):
  """Latent back to pixels: z -> one token per patch -> per-token MLP -> patch pixels."""
  size: int
  patch: int = 8
  width: int = 128
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, z_BxD):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    grid = self.size // self.patch
    x = dense(grid * grid * self.width)(z_BxD)
    x = x.reshape(z_BxD.shape[:-1] + (grid * grid, self.width))
    x = x + MlpBlock(2 * self.width, self.dtype)(norm()(x))
    x = dense(self.patch * self.patch * 3)(norm()(x))
    return einops.rearrange(x, "... (h w) (p q c) -> ... (h p) (w q) c", h=grid, p=self.patch,
                            q=self.patch)


class InverseDynamics(nn.Module):
  """MLP from two consecutive latents to the action between them: ``(z_t, z_t+1) -> a_t``."""
  hidden: int
  action_dim: int
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, z, z_next):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    x = jnp.concatenate([norm()(z), norm()(z_next)], -1)
    return dense(self.action_dim)(nn.gelu(dense(self.hidden)(x)))


class LabelHead(nn.Module):
  """Linear read-out of the labels from the latent: class logits and a 2D position."""
  num_classes: int
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, z):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    out = dense(self.num_classes + 2)(z)
    return out[..., :self.num_classes], out[..., self.num_classes:]


class TokenPredictor(nn.Module):
  """Target tokens (B, P, C) from a context and, across time, the action between the two
  frames: the context is the visible tokens (B, P, C_in), hidden ones holding the mask
  token, or only the latent (B, D), which must then hold what the tokens hold. A mixer
  over the token grid, so it can move what it sees to where it will be."""
  num_tokens: int  # P
  out: int  # C of the target tokens
  width: int = 64
  depth: int = 1
  from_latent: bool = False  # the context is the latent (B, D), not the tokens
  conditioned: bool = True  # across time: takes the action between the frames
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, context, action=None):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    if self.from_latent:  # one token per patch from the latent
      x = dense(self.num_tokens * self.width)(context)
      x = x.reshape(context.shape[:-1] + (self.num_tokens, self.width))
    else:
      x = dense(self.width)(context)
    if self.conditioned:
      x = x + dense(self.width)(action)[..., None, :]
    for _ in range(self.depth):
      x = mixer_block(x, 2 * self.width, self.dtype)
    return dense(self.out)(norm()(x))


class Aggregator(nn.Module):
  """seq-JEPA's aggregator (arXiv 2505.03176): a small transformer over a sequence of
  latents, each with the action that leads to the next frame, read out by a learned [AGG]
  token; an MLP on the aggregate predicts the latent of the frame that follows.

  ``__call__`` returns (aggregate (B, W), predicted next latent (B, D)).
  """
  dim: int  # D
  length: int  # the longest sequence it aggregates
  width: int = 64
  depth: int = 1
  heads: int = 4
  dtype: Any = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, z_BxLxD, actions_BxLxA):
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    x = dense(self.width)(jnp.concatenate([norm()(z_BxLxD), actions_BxLxA], -1))
    x += self.param("pos", nn.initializers.normal(0.02), (self.length, self.width))[:x.shape[-2]]
    agg = jnp.broadcast_to(self.param("agg", nn.initializers.normal(0.02), (self.width,)),
                           x.shape[:-2] + (1, self.width))
    x = jnp.concatenate([agg, x], -2)
    for _ in range(self.depth):
      x = x + nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype)(norm()(x))
      x = x + MlpBlock(2 * self.width, self.dtype)(norm()(x))
    aggregate = norm()(x[..., 0, :])
    hidden = nn.gelu(dense(2 * self.width)(aggregate))
    return aggregate, dense(self.dim)(hidden)


class WorldModel(nn.Module):
  """One agent's networks, built once from explicit parts (None where unused):

  - ``encode``: obs -> z (what probes and maps read); ``encode_tokens``: obs[, mask] ->
    (z, tokens);
  - ``predict``: (z, a) -> z', the action-conditioned latent predictor;
  - ``infer_action``: (z, z') -> a, inverse dynamics;
  - ``predict_tokens``: (context, a) -> target tokens, masked / token-level prediction;
  - ``aggregate``: (z_1..z_k, a_1..a_k) -> (aggregate, z_{k+1}), seq-JEPA;
  - ``decode``: z -> obs, the autoencoder control; ``read``: z -> (class logits, position),
    the supervised ceiling.

  The parts may compute in a lower precision (their ``dtype``); what every method returns
  is float32, so losses, probes and maps never see bfloat16.
  """
  encoder: nn.Module
  predictor: nn.Module
  decoder: nn.Module | None = None
  head: nn.Module | None = None
  inverse: nn.Module | None = None
  token_predictor: nn.Module | None = None
  aggregator: nn.Module | None = None
  hides_tokens: bool = False  # whether the encoder is ever given a mask (has a mask token)

  def __call__(self, obs, action):
    """Touches every part once, so ``init`` creates all their parameters."""
    z, tokens = self.encode_tokens(obs)
    if self.hides_tokens:
      self.encode_tokens(obs, jnp.zeros(tokens.shape[:-1], bool))
    if self.decoder is not None:
      self.decode(z)
    if self.head is not None:
      self.read(z)
    if self.inverse is not None:
      self.infer_action(z, z)
    if self.token_predictor is not None:
      self.predict_tokens(z if self.token_predictor.from_latent else tokens, action)
    if self.aggregator is not None:
      self.aggregate(z[..., None, :], action[..., None, :])
    return self.predict(z, action)

  def encode(self, obs):
    return _f32(self.encoder(obs)[0])

  def encode_tokens(self, obs, mask=None):
    return _f32(self.encoder(obs, mask))

  def predict(self, z, action):
    return _f32(self.predictor(z, action))

  def infer_action(self, z, z_next):
    return _f32(self.inverse(z, z_next))

  def predict_tokens(self, context, action=None):
    return _f32(self.token_predictor(context, action))

  def aggregate(self, z_BxLxD, actions_BxLxA):
    return _f32(self.aggregator(z_BxLxD, actions_BxLxA))

  def decode(self, z):
    return _f32(self.decoder(z))

  def read(self, z):
    return _f32(self.head(z))


def _f32(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def make_encoder(kind: str, dim: int, patch: int, width: int, depth: int, pool: str,
                 dtype: Any = jnp.float32) -> nn.Module:
  """An encoder by name (``ENCODERS``); an unknown one lists the valid ones."""
  if kind == "mixer":
    return MixerEncoder(dim, patch, width, depth, pool, dtype)
  if kind == "vit":
    return VitEncoder(dim, patch, width, depth, pool, dtype=dtype)
  if kind == "cnn":
    return CnnEncoder(dim, width // 4, depth, pool, dtype)
  raise errors.UserError(f"Unknown encoder {kind!r}; valid encoders: {', '.join(ENCODERS)}.")


# --- Encoding with one agent's parameters -------------------------------------------------

def encode(model: WorldModel, encoder_params: Any, obs: jax.Array) -> jax.Array:
  """Latents of observations (..., H, W, 3) -> (..., D) with one agent's encoder params."""
  lead = obs.shape[:-3]
  z = model.apply({"params": {"encoder": encoder_params}}, obs.reshape((-1,) + obs.shape[-3:]),
                  method=WorldModel.encode)
  return z.reshape(lead + z.shape[-1:])


def encode_tokens(model: WorldModel, encoder_params: Any, obs_BxHxWx3: jax.Array,
                  mask_BxP: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(latents (B, D), tokens (B, P, C)) of a batch, hiding the tokens ``mask`` marks."""
  return model.apply({"params": {"encoder": encoder_params}}, obs_BxHxWx3, mask_BxP,
                     method=WorldModel.encode_tokens)


@functools.partial(jax.jit, static_argnums=0)
def _encode_one(model, encoder_params, obs):
  return encode(model, encoder_params, obs)


@functools.partial(jax.jit, static_argnums=0)
def _encode_stacked(model, encoder_params, obs):
  return jax.vmap(lambda p, o: encode(model, p, o))(encoder_params, obs)


def encode_chunked(model: WorldModel, encoder_params: Any, obs: jax.Array,
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
