"""Pixel overlap between two views of the same world state.

``overlap(A, B)`` is the fraction of A's surface pixels (pixels that see a surface, not
sky) whose visible surface point is also visible in B: the point projects inside B's frame,
nothing lies between B's eye and it, and B looks at the same side of the surface as A (the
ground is seen from above only: a camera below it sees through it, not the floor). The depth test is exact: it casts a ray from B's
eye to the point rather than reading B's depth image, so grazing surfaces are not
mis-scored by pixel quantisation. Overlap is not symmetric.
"""

import functools

import jax
import jax.numpy as jnp

from sjepa_jax.world import render as render_lib
from sjepa_jax.world import scene
from sjepa_jax.world import views as views_lib

_REL_TOL, _ABS_TOL = 1e-3, 1e-3  # depth-test slack for float rounding


def visible_from(state: scene.WorldState, view: views_lib.View, size: int,
                 points: jax.Array, facing: jax.Array | None = None) -> jax.Array:
  """Whether each world point (..., 3) is inside ``view``'s frame and unoccluded; with
  ``facing`` (..., 3), the side of each point's surface that counts (a normal pointing to
  that side), also whether ``view`` is on that side."""
  _, inside = views_lib.project(view, size, points)
  if facing is not None:
    inside &= jnp.sum(facing * (jnp.asarray(view.eye) - points), -1) > 0
  prims = render_lib.scene_prims(state)
  eye = jnp.asarray(view.eye)
  flat = points.reshape(-1, 3)
  dist = jnp.linalg.norm(flat - eye, axis=-1)
  dirs = (flat - eye) / jnp.maximum(dist, 1e-9)[:, None]
  t = jax.vmap(lambda d: render_lib.cast(prims, eye, d)[0])(dirs)
  unoccluded = t >= dist * (1 - _REL_TOL) - _ABS_TOL
  return inside & unoccluded.reshape(inside.shape)


@functools.partial(jax.jit, static_argnames="size")
def overlap(state: scene.WorldState, view_a: views_lib.View, view_b: views_lib.View,
            size: int = 64) -> jax.Array:
  """Fraction of A's surface pixels whose surface point B also sees; in [0, 1]."""
  eye, rays = jnp.asarray(view_a.eye), views_lib.pixel_rays(view_a, size)
  prims = render_lib.scene_prims(state)
  t, normal, _, _ = jax.vmap(jax.vmap(lambda d: render_lib.cast(prims, eye, d)))(rays)
  surface = jnp.isfinite(t)
  points = eye + jnp.where(surface, t, 0.0)[..., None] * rays
  # The side A sees: the normal turned toward A's eye.
  towards_a = jnp.sum(normal * (eye - points), -1, keepdims=True) >= 0
  shared = surface & visible_from(state, view_b, size, points,
                                  jnp.where(towards_a, normal, -normal))
  return jnp.sum(shared) / jnp.maximum(jnp.sum(surface), 1)


@functools.partial(jax.jit, static_argnames="size")
def overlap_matrix(states: scene.WorldState, views: views_lib.View,
                   size: int = 64) -> jax.Array:
  """Mean overlap over a batch of states for every ordered pair of stacked views, (V, V).

  Entry [a, b] is the mean of ``overlap(state, views[a], views[b])``; the diagonal is 1.
  """
  pair = lambda s, va, vb: overlap(s, va, vb, size)
  over_b = jax.vmap(pair, in_axes=(None, None, 0))
  over_ab = jax.vmap(over_b, in_axes=(None, 0, None))
  per_state = jax.lax.map(lambda s: over_ab(s, views, views), states)
  return jnp.mean(per_state, axis=0)
