"""Batches for agents from the embedded world, rendered on the device inside the step.

Each agent draws its own episodes (its own key) and sees them only through its own view:
agents share the world's rules, never data. A fixed *paired* set (the same states seen from
every view) serves evaluation only: probes and cross-agent alignment.

Shapes: A = agents, B = batch, L = frames per sample, N = paired states.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sjepa_jax import world
from sjepa_jax.world import scene


class Batch(NamedTuple):
  """Short rollouts from one view: frame t + 1 follows frame t under actions[:, t]."""
  obs: jax.Array  # (B, L, H, W, 3) float32 in [0, 1]
  actions: jax.Array  # (B, L - 1, 2)


def world_batch(key: jax.Array, view: world.View, batch: int, frames: int, size: int) -> Batch:
  """``batch`` independent random rollouts of ``frames`` frames seen from one view."""
  one_view = jax.tree.map(lambda x: jnp.asarray(x)[None], view)
  def sample(k):
    ep = world.sample_episode(k, one_view, frames, size)
    return ep.obs[0], ep.actions
  obs, actions = jax.vmap(sample)(jax.random.split(key, batch))
  return Batch(obs, actions)


class PairedSet(NamedTuple):
  """The same N states seen from every agent's view, with the focal object's labels."""
  obs: jax.Array  # (A, N, H, W, 3)
  labels: dict[str, jax.Array]  # each (N, ...)


def paired_set(key: jax.Array, views: world.View, num: int, size: int) -> PairedSet:
  """N random states (with random focal velocity) rendered from every stacked view."""
  k_state, k_vel, k_noise = jax.random.split(key, 3)
  states = jax.vmap(world.random_state)(jax.random.split(k_state, num))
  vel = jax.random.uniform(k_vel, (num, 2), minval=-scene.MAX_SPEED, maxval=scene.MAX_SPEED)
  states = states._replace(vel=states.vel.at[:, 0].set(vel / jnp.sqrt(2.0)))
  noise = jax.random.split(k_noise, num)
  obs = jax.lax.map(lambda sk: world.observe(sk[0], views, size, sk[1]), (states, noise),
                    batch_size=64)
  return PairedSet(jnp.swapaxes(obs, 0, 1), jax.vmap(world.labels)(states))
