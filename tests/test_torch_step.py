"""The PyTorch yardstick's twin computes our JEPA loss: same weights, same loss and gradients.

The twin tests need torch (a benchmark-only dependency, not in requirements.txt) and skip
only when it is not installed, saying so.
"""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import torch_step
from sjepa_jax import agents
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import objectives


def test_unsupported_names_the_field_and_accepts_the_default(config):
  config.model.encoder = "mixer"
  config.objective.update(kind="jepa", target="online", regularizer="vicreg")
  assert torch_step.unsupported(config) is None
  config.objective.regularizer = "sigreg"
  assert "objective.regularizer is 'sigreg'" in torch_step.unsupported(config)
  config.model.encoder = "vit"
  assert "model.encoder is 'vit'" in torch_step.unsupported(config)


@pytest.mark.parametrize("inverse_weight", [0.0, 10.0])
def test_twin_has_our_parameter_count_loss_and_gradients(config, inverse_weight):
  torch = pytest.importorskip(
      "torch", reason="torch is not installed (benchmark-only: pip install torch==2.13.0)",
      exc_type=ModuleNotFoundError)  # installed but broken is an error, not a skip
  config.model.update(encoder="mixer", depth=2, pool="flatten")
  config.objective.update(kind="jepa", target="online", regularizer="vicreg",
                          inverse_weight=inverse_weight)
  d = config.data
  rng = np.random.default_rng(0)
  obs = rng.random((d.batch_size, d.frames, d.image_size, d.image_size, 3), np.float32)
  actions = rng.normal(size=(d.batch_size, d.frames - 1, data.action_dim(config)))
  actions = actions.astype(np.float32)
  learner = configs.learner_from_config(config)
  params = agents.init_agent(learner, jax.random.key(0)).params
  twin = torch_step._Agent(config, actions.shape[-1])
  torch_step.load_jax_params(twin, params)
  assert sum(p.numel() for p in twin.parameters()) == sum(
      x.size for x in jax.tree.leaves(params))
  assert ("inverse" in params) == (twin.inverse is not None) == (inverse_weight > 0)

  batch = data.Batch(jnp.asarray(obs), jnp.asarray(actions))
  loss = functools.partial(objectives.loss_fn, learner.model, learner.objective)
  grads, ours = jax.grad(loss, has_aux=True)(
      params, params["encoder"], batch, jax.random.key(1))
  loss, theirs = torch_step.torch_loss(twin, torch.from_numpy(obs), torch.from_numpy(actions),
                                       config.objective)
  loss.backward()
  np.testing.assert_allclose(loss.item(), ours["loss"], rtol=1e-5)
  for name in ("vicreg_variance", "vicreg_covariance", "copy_prediction", "embedding_std") + (
      ("inverse_dynamics",) if inverse_weight else ()):
    np.testing.assert_allclose(theirs[name].item(), ours[name], rtol=1e-4, atol=1e-7,
                               err_msg=name)
  grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in twin.parameters()))
  np.testing.assert_allclose(grad_norm.item(), optax.tree.norm(grads), rtol=1e-4)
  # One weight per network, by its flax name: the copy maps every name to its torch twin.
  # Each entry sums float32 terms over the batch, so it errs by a fraction of the largest
  # entry, not of its own size (entries near 0 differed by 1.4e-3 of themselves, with the
  # inverse term).
  close = lambda theirs, ours: np.testing.assert_allclose(
      theirs.grad.numpy().T, ours, rtol=1e-3, atol=max(1e-6, 1e-5 * float(np.abs(ours).max())))
  close(twin.encoder.embed.weight, grads["encoder"]["Dense_0"]["kernel"])
  close(twin.predictor.out.weight, grads["predictor"]["Dense_2"]["kernel"])
  if inverse_weight:
    close(twin.inverse.block[0].weight, grads["inverse"]["Dense_1"]["kernel"])
