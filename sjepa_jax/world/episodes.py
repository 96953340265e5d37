"""Episodes of the world: a random start, random pushes, and every view's observations.

Shapes: V = views, T = frames per episode, H = W = image size.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sjepa_jax import errors
from sjepa_jax.world import render as render_lib
from sjepa_jax.world import scene
from sjepa_jax.world import views as views_lib


class Episode(NamedTuple):
  """One rollout seen from V views: frame t shows the state after actions[:t]."""
  obs: jax.Array  # (V, T, H, W, 3) float32 RGB in [0, 1]
  actions: jax.Array  # (T - 1, 2)
  labels: dict[str, jax.Array]  # focal-object labels, each with leading axis T


def observe(state: scene.WorldState, views: views_lib.View, size: int,
            key: jax.Array | None = None) -> jax.Array:
  """RGB of one state from stacked views, (V, H, W, 3); each view gets its own noise key."""
  num_views = views.eye.shape[0]
  keys = None if key is None else jax.random.split(key, num_views)
  render = lambda v, k: render_lib.render(state, v, size, k).rgb
  return jax.vmap(render)(views, keys)


@functools.partial(jax.jit, static_argnames=("length", "size"))
def sample_episode(key: jax.Array, views: views_lib.View, length: int,
                   size: int = 64) -> Episode:
  """A random episode of ``length`` frames from the stacked ``views``; pure in ``key``."""
  if length < 1:
    raise errors.UserError(f"Episode length must be at least 1, got {length}.")
  k_state, k_act, k_noise = jax.random.split(key, 3)
  actions = scene.random_actions(k_act, length - 1)
  states = scene.rollout(scene.random_state(k_state), actions)
  noise_keys = jax.random.split(k_noise, length)
  obs = jax.vmap(lambda s, k: observe(s, views, size, k))(states, noise_keys)
  return Episode(jnp.swapaxes(obs, 0, 1), actions, jax.vmap(scene.labels)(states))
