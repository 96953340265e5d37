"""Encoders and predictor: shapes, the matmul convolution, bad input."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import smoke
from sjepa_jax import models


@pytest.mark.parametrize("encoder", models.ENCODERS)
def test_every_encoder_maps_images_to_latents_and_vmaps_over_agents(encoder):
  config = smoke.get_config()
  config.model.encoder = encoder
  model = models.make_model(config)
  obs = jax.random.uniform(jax.random.key(0), (2, 3, 32, 32, 3))  # (agents, batch, ...)
  init = lambda k: model.init(k, obs[0], jnp.zeros((3, 2)))["params"]
  params = jax.vmap(init)(jax.random.split(jax.random.key(1), 2))
  z = jax.vmap(lambda p, o: model.apply({"params": p}, o, method=models.WorldModel.encode))(
      params, obs)
  chex.assert_shape(z, (2, 3, config.model.dim))
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


def test_bad_model_settings_are_clear_errors():
  config = smoke.get_config()
  config.model.encoder = "resnet"
  with pytest.raises(ValueError, match="Unknown encoder 'resnet'.*mixer, vit, cnn"):
    models.make_model(config)
  with pytest.raises(ValueError, match="not divisible by patch size 8"):
    models.patchify(jnp.zeros((1, 20, 20, 3)), 8)
