"""Named cameras of the world and their registry.

A ``View`` is a pytree of arrays (camera pose, field of view and image style), so a batch
of views stacks along a leading axis and renders under ``jax.vmap``: agents with different
views share one compiled program.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sjepa_jax import errors
from sjepa_jax import names as names_lib

_UP = np.asarray([0.0, 0.0, 1.0], np.float32)


class View(NamedTuple):
  """A pinhole camera looking from ``eye`` at ``target`` (z up), and its image style."""
  eye: np.ndarray  # (3,)
  target: np.ndarray  # (3,)
  fov_deg: np.ndarray  # () vertical field of view; pixels are square
  fog_density: np.ndarray  # () per world unit; 0 = no fog
  fog_colour: np.ndarray  # (3,)
  tint: np.ndarray  # (3,) multiplies the shaded colour
  noise_std: np.ndarray  # () std of additive uniform sensor noise (needs a render key)
  light: np.ndarray  # (3,) unit direction toward the light that shades what it sees


SUN = (0.45, -0.3, 0.85)  # the light of every view that looks from above


def make_view(eye, target, fov_deg, fog_density=0.0, fog_colour=(0.7, 0.75, 0.8),
              tint=(1.0, 1.0, 1.0), noise_std=0.0, light=SUN) -> View:
  """Builds a ``View`` of float32 numpy leaves from plain numbers."""
  f32 = lambda x: np.asarray(x, np.float32)
  return View(f32(eye), f32(target), f32(fov_deg), f32(fog_density), f32(fog_colour),
              f32(tint), f32(noise_std), f32(light) / np.linalg.norm(light))


VIEWS: dict[str, View] = {
    # High above the grove, looking down on the whole arena at about 40 degrees, so that
    # objects show their sides (their shape) as well as their tops.
    "mountain": make_view(eye=(0.0, -6.2, 5.2), target=(0.0, -0.1, 0.2), fov_deg=46.0,
                          fog_density=0.015, fog_colour=(0.8, 0.85, 0.92)),
    # Low inside the grove, between the trunks, looking down across the arena.
    "forest": make_view(eye=(0.3, -4.8, 1.8), target=(0.0, 0.0, 0.2), fov_deg=62.0,
                        fog_density=0.04, fog_colour=(0.35, 0.45, 0.35),
                        tint=(0.85, 1.0, 0.85), noise_std=0.02),
    # Oblique, from above the east side.
    "drone": make_view(eye=(5.5, 2.5, 4.5), target=(0.0, 0.0, 0.0), fov_deg=50.0,
                       tint=(1.05, 1.0, 0.92), noise_std=0.01),
    # Low above the river on the far (north) side, facing the arena from the opposite side.
    "river": make_view(eye=(-0.8, 5.6, 2.4), target=(0.0, 0.0, 0.1), fov_deg=56.0,
                       fog_density=0.03, fog_colour=(0.6, 0.7, 0.8), tint=(0.9, 0.95, 1.1)),
    # Under the arena, looking straight up through its floor (the ground is opaque from
    # above only), lit by a lamp below: it sees the objects' undersides, which no other
    # view sees, so it shares under a tenth of its pixels with any of them.
    "cellar": make_view(eye=(0.0, 0.0, -5.0), target=(0.0, 0.0, 0.0), fov_deg=62.0,
                        light=(0.3, -0.2, -0.93)),
}


def get_view(name: str) -> View:
  """The registered view called ``name``; an unknown name lists the valid ones."""
  if name not in VIEWS:
    raise errors.UserError(f"Unknown view {name!r}; valid views: {', '.join(sorted(VIEWS))}.")
  return VIEWS[name]


def parse_views(names: str | Sequence[str]) -> list[str]:
  """Checks a comma-separated string (or list) of world view names: known and distinct."""
  return names_lib.parse_names(names, get_view, ", ".join(sorted(VIEWS)))


def stack_views(names: str | Sequence[str]) -> View:
  """The named views stacked along a leading axis (for ``jax.vmap`` over views)."""
  views = [get_view(n) for n in parse_views(names)]
  return jax.tree.map(lambda *leaves: np.stack(leaves), *views)


def basis(view: View) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Unit forward, right and up vectors of the camera."""
  forward = jnp.asarray(view.target) - jnp.asarray(view.eye)
  forward /= jnp.linalg.norm(forward)
  right = jnp.cross(forward, _UP)
  # Looking straight up or down, "up" is undefined: image rows then follow world y.
  right = jnp.where(jnp.linalg.norm(right) < 1e-6, jnp.asarray([1.0, 0.0, 0.0]), right)
  right /= jnp.linalg.norm(right)
  return forward, right, jnp.cross(right, forward)


def pixel_rays(view: View, size: int) -> jax.Array:
  """Unit ray directions through the centres of a size x size image, shape (H, W, 3)."""
  forward, right, up = basis(view)
  tan = jnp.tan(jnp.deg2rad(view.fov_deg) / 2)
  c = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2 - 1  # pixel centres in (-1, 1)
  x, y = c[None, :] * tan, -c[:, None] * tan  # row 0 is the top of the image
  d = forward + x[..., None] * right + y[..., None] * up
  return d / jnp.linalg.norm(d, axis=-1, keepdims=True)


def project(view: View, size: int, points: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pixel coordinates (row, col), continuous, of world points (..., 3), and in-frame mask.

  Pixel (i, j) covers rows [i, i + 1) and columns [j, j + 1); its centre is (i + .5, j + .5).
  """
  forward, right, up = basis(view)
  q = points - jnp.asarray(view.eye)
  depth = q @ forward
  tan = jnp.tan(jnp.deg2rad(view.fov_deg) / 2)
  x = (q @ right) / (depth * tan)
  y = (q @ up) / (depth * tan)
  row, col = (1 - y) / 2 * size, (x + 1) / 2 * size
  inside = (depth > 0) & (jnp.abs(x) < 1) & (jnp.abs(y) < 1)
  return jnp.stack([row, col], -1), inside
