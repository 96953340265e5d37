"""Encoders and predictor: shapes, the matmul convolution, bad input."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjepa_jax import models


@pytest.mark.parametrize("encoder", models.ENCODERS)
def test_every_encoder_maps_images_to_latents_and_vmaps_over_agents(encoder):
  dim = 32
  model = models.WorldModel(models.make_encoder(encoder, dim, patch=4, width=32, depth=1,
                                                pool="flatten"), models.Predictor(64))
  obs = jax.random.uniform(jax.random.key(0), (2, 3, 32, 32, 3))  # (agents, batch, ...)
  init = lambda k: model.init(k, obs[0], jnp.zeros((3, 2)))["params"]
  params = jax.vmap(init)(jax.random.split(jax.random.key(1), 2))
  z = jax.vmap(lambda p, o: model.apply({"params": p}, o, method=models.WorldModel.encode))(
      params, obs)
  chex.assert_shape(z, (2, 3, dim))
  chex.assert_tree_all_finite(z)
  z_next = model.apply({"params": jax.tree.map(lambda x: x[0], params)}, z[0],
                       jnp.ones((3, 2)), method=models.WorldModel.predict)
  chex.assert_shape(z_next, z[0].shape)


def test_matmul_conv_equals_a_real_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
  conv = nn.Conv(5, (3, 3), strides=(2, 2), padding="SAME")
  params = conv.init(jax.random.key(1), x)["params"]
  mm = models.MatmulConv(5, kernel=3, stride=2)
  # conv_general_dilated_patches orders a patch's features as (channel, row, column).
  kernel = jnp.transpose(params["kernel"], (2, 0, 1, 3)).reshape(27, 5)
  out = mm.apply({"params": {"Dense_0": {"kernel": kernel, "bias": params["bias"]}}}, x)
  np.testing.assert_allclose(out, conv.apply({"params": params}, x), atol=1e-5)


def test_hidden_tokens_are_replaced_by_the_mask_token_before_mixing():
  """A hidden patch contributes nothing of its pixels: changing them leaves the encoding
  unchanged, while changing a visible patch does not."""
  encoder = models.MixerEncoder(dim=8, patch=4, width=16, depth=1)
  obs = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3))
  mask = jnp.asarray([[True, False, False, False]])  # hides the top-left patch
  params = encoder.init(jax.random.key(1), obs, mask)["params"]
  assert params["mask_token"].shape == (16,)
  encode = lambda o: encoder.apply({"params": params}, o, mask)[0]
  np.testing.assert_allclose(encode(obs.at[:, :4, :4].set(0.0)), encode(obs), atol=1e-6)
  assert not np.allclose(encode(obs.at[:, 4:, 4:].set(0.0)), encode(obs), atol=1e-4)


def test_bad_model_settings_are_clear_errors():
  with pytest.raises(ValueError, match="Unknown encoder 'resnet'.*mixer, vit, cnn"):
    models.make_encoder("resnet", 8, 4, 16, 1, "flatten")
  with pytest.raises(ValueError, match="not divisible by patch size 8"):
    models.patchify(jnp.zeros((1, 20, 20, 3)), 8)
