"""Per-pixel ray casting of the world's analytic primitives to RGB, depth and object ids.

Primitives are grouped by kind (sphere, upright cylinder, axis-aligned box) into arrays of
fixed length; movable objects appear once in every kind with a validity mask, so the scene
has the same shapes in every state and renders under ``jit`` and ``vmap``. Shading is
Lambert plus ambient from one directional light; each view adds fog, tint and noise.

Shapes: P = primitives of one kind, H = W = image size.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sjepa_jax.world import scene
from sjepa_jax.world import views as views_lib

GROUND_HALF = 16.0  # the ground plane is a square of this half-size; beyond it, sky
RIVER_Y = (5.0, 6.5)  # a band of water across the ground north of the arena
_AMBIENT = 0.35
_EPS = 1e-4
STATIC_ID, GROUND_ID, SKY_ID = -1, -2, -3  # object ids of non-movable surfaces


class Frame(NamedTuple):
  """A rendered image: RGB in [0, 1], distance along each ray (inf for sky), object id.

  ``obj`` is the index of the movable object a pixel sees (0 = focal), else STATIC_ID,
  GROUND_ID or SKY_ID.
  """
  rgb: jax.Array  # (H, W, 3) float32
  depth: jax.Array  # (H, W) float32
  obj: jax.Array  # (H, W) int32


class Prims(NamedTuple):
  """Primitives of one kind. ``extent``: radius or half-size per axis (kind-specific)."""
  centre: jax.Array  # (P, 3)
  extent: jax.Array  # (P, 3)
  colour: jax.Array  # (P, 3)
  obj: jax.Array  # (P,) int32
  valid: jax.Array  # (P,) bool


def _static_prims() -> dict[str, Prims]:
  """The fixed landmarks (trees, rocks, walls) as numpy primitive arrays."""
  t, r, w = scene.TREES, scene.ROCKS, scene.ARENA_HALF
  n_t, n_r = len(t), len(r)
  trunks = (np.stack([t[:, 0], t[:, 1], t[:, 3] / 2], -1),
            np.stack([t[:, 2], t[:, 2], t[:, 3] / 2], -1), np.tile(scene.TRUNK_COLOUR, (n_t, 1)))
  canopies = (np.stack([t[:, 0], t[:, 1], t[:, 3] + 0.5 * t[:, 4]], -1),
              np.repeat(t[:, 4:5], 3, -1), np.tile(scene.CANOPY_COLOUR, (n_t, 1)))
  rocks = (r[:, :3], np.repeat(r[:, 3:4], 3, -1), np.tile(scene.ROCK_COLOUR, (n_r, 1)))
  h, th = scene.WALL_HEIGHT / 2, scene.WALL_THICKNESS / 2
  walls = (np.asarray([(0, w + th, h), (0, -w - th, h), (w + th, 0, h), (-w - th, 0, h)]),
           np.asarray([(w + 2 * th, th, h), (w + 2 * th, th, h), (th, w, h), (th, w, h)]),
           np.tile(scene.WALL_COLOUR, (4, 1)))
  sph = [np.concatenate(a) for a in zip(canopies, rocks)]
  make = lambda c, e, col: Prims(c.astype(np.float32), e.astype(np.float32),
                                 col.astype(np.float32), np.full(len(c), STATIC_ID, np.int32),
                                 np.ones(len(c), bool))
  return {"sphere": make(*sph), "cylinder": make(*trunks), "box": make(*walls)}


_STATIC = _static_prims()


def movable_prims(state: scene.WorldState) -> dict[str, Prims]:
  """The movable objects, once in every kind, valid only in the kind of their shape."""
  ext = scene.half_extents(state.shape, state.size)
  centre = jnp.concatenate([state.pos, ext[:, 2:]], -1)  # objects rest on the ground
  ids = jnp.arange(scene.NUM_OBJECTS, dtype=jnp.int32)
  kind_of_shape = {"sphere": (0,), "cylinder": (scene.PUCK,), "box": (1, 2)}
  return {kind: Prims(centre, ext, state.colour, ids, jnp.isin(state.shape, jnp.asarray(s)))
          for kind, s in kind_of_shape.items()}


def scene_prims(state: scene.WorldState) -> dict[str, Prims]:
  """All primitives of a state, by kind: the static landmarks plus the movable objects."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), _STATIC, movable_prims(state))


def _hit_sphere(o, d, p: Prims):
  """Ray (o, d) against spheres centred at p.centre with radius p.extent[:, 0]."""
  oc = o - p.centre
  b = oc @ d
  disc = b**2 - (jnp.sum(oc**2, -1) - p.extent[:, 0]**2)
  t = -b - jnp.sqrt(jnp.maximum(disc, 0.0))
  normal = (o + t[:, None] * d - p.centre) / p.extent[:, :1]  # at the finite root: see _HIT
  return jnp.where((disc >= 0) & (t > _EPS), t, jnp.inf), normal


def _hit_cylinder(o, d, p: Prims):
  """Ray against upright cylinders: radius extent[0], half-height extent[2], with caps."""
  r, hh = p.extent[:, 0], p.extent[:, 2]
  oxy, dxy = o[:2] - p.centre[:, :2], d[:2]
  a = jnp.maximum(dxy @ dxy, 1e-12)
  b = oxy @ dxy
  disc = b**2 - a * (jnp.sum(oxy**2, -1) - r**2)
  root = (-b - jnp.sqrt(jnp.maximum(disc, 0.0))) / a
  z_side = o[2] + root * d[2] - p.centre[:, 2]
  t_side = jnp.where((disc >= 0) & (root > _EPS) & (jnp.abs(z_side) <= hh), root, jnp.inf)
  dz = jnp.where(jnp.abs(d[2]) < 1e-9, 1e-9, d[2])
  cap_z = p.centre[:, 2] - jnp.sign(dz) * hh  # the cap facing the ray
  t_cap = (cap_z - o[2]) / dz
  in_cap = jnp.sum((oxy + t_cap[:, None] * dxy)**2, -1) <= r**2
  t_cap = jnp.where(in_cap & (t_cap > _EPS), t_cap, jnp.inf)
  side_xy = (oxy + root[:, None] * dxy) / r[:, None]  # at the finite root: see _HIT
  n_side = jnp.concatenate([side_xy, jnp.zeros_like(r)[:, None]], -1)
  n_cap = jnp.zeros_like(p.centre).at[:, 2].set(-jnp.sign(dz))
  use_cap = t_cap < t_side
  return jnp.minimum(t_side, t_cap), jnp.where(use_cap[:, None], n_cap, n_side)


def _hit_box(o, d, p: Prims):
  """Ray against axis-aligned boxes (slab method): centre, half-sizes extent."""
  inv = 1.0 / jnp.where(jnp.abs(d) < 1e-9, 1e-9, d)
  t1 = (p.centre - p.extent - o) * inv
  t2 = (p.centre + p.extent - o) * inv
  t_near = jnp.minimum(t1, t2)
  t_in, t_out = jnp.max(t_near, -1), jnp.min(jnp.maximum(t1, t2), -1)
  t = jnp.where((t_out >= t_in) & (t_in > _EPS), t_in, jnp.inf)
  axis = jax.nn.one_hot(jnp.argmax(t_near, -1), 3)
  return t, -axis * jnp.sign(d)


# Each hit function returns inf for a miss, but a finite normal for every ray, hit or not:
# a normal computed at the masked distance (inf) is inf or NaN, and XLA may compute one
# distance in two fused kernels rounded differently (a grazing ray then hits in one and
# misses in the other), so the select meant to drop that NaN can keep it: a NaN pixel in a
# batch, and training stops.
_HIT = {"sphere": _hit_sphere, "cylinder": _hit_cylinder, "box": _hit_box}


def ground_colour(x: jax.Array, y: jax.Array) -> jax.Array:
  """Albedo of the ground: a checkered arena floor, a river band, grass elsewhere."""
  checker = (jnp.floor(x) + jnp.floor(y)) % 2
  arena = jnp.asarray([0.62, 0.6, 0.52]) + 0.1 * checker[..., None]
  grass = jnp.asarray([0.36, 0.5, 0.28]) + 0.03 * jnp.sin(1.7 * x + 0.9 * y)[..., None]
  river = jnp.asarray([0.22, 0.35, 0.62])
  in_arena = (jnp.abs(x) <= scene.ARENA_HALF) & (jnp.abs(y) <= scene.ARENA_HALF)
  in_river = (y >= RIVER_Y[0]) & (y <= RIVER_Y[1])
  out = jnp.where(in_river[..., None], river, grass)
  return jnp.where(in_arena[..., None], arena, out)


def _nearest(prims: dict[str, Prims], o: jax.Array, d: jax.Array):
  """Nearest hit among primitives: (distance, normal, albedo, object id); inf if none."""
  ts, normals, colours, ids = [], [], [], []
  for kind, p in prims.items():
    t, n = _HIT[kind](o, d, p)
    ts.append(jnp.where(p.valid, t, jnp.inf))
    normals.append(n)
    colours.append(p.colour)
    ids.append(p.obj)
  t, n, c, i = (jnp.concatenate(x) for x in (ts, normals, colours, ids))
  k = jnp.argmin(t)
  return t[k], n[k], c[k], i[k]


def _ground(o: jax.Array, d: jax.Array):
  """The ground plane's hit, in the same form as ``_nearest``."""
  t = -o[2] / jnp.minimum(d[2], -1e-9)  # finite: the colour is read where it lands
  x, y = o[0] + t * d[0], o[1] + t * d[1]
  hit = (d[2] < -1e-9) & (jnp.abs(x) <= GROUND_HALF) & (jnp.abs(y) <= GROUND_HALF)
  t = jnp.where(hit, t, jnp.inf)
  return t, jnp.asarray([0.0, 0.0, 1.0]), ground_colour(x, y), jnp.int32(GROUND_ID)


def _closer(a, b):
  """The nearer of two hits (single rays or batches of rays)."""
  near = a[0] <= b[0]
  pick = lambda x, y: jnp.where(near.reshape(near.shape + (1,) * (x.ndim - near.ndim)), x, y)
  return jax.tree.map(pick, a, b)


def static_hits(o: jax.Array, d: jax.Array):
  """Nearest static surface (landmarks or ground) along rays d (..., 3) from o."""
  one = lambda di: _closer(_nearest(_STATIC, o, di), _ground(o, di))
  return jax.vmap(one)(d.reshape(-1, 3))


def cast(prims: dict[str, Prims], o: jax.Array, d: jax.Array):
  """Nearest surface along one ray: (distance, unit normal, albedo, object id)."""
  t, n, c, i = _closer(_nearest(prims, o, d), _ground(o, d))
  return t, n, c, jnp.where(jnp.isfinite(t), i, SKY_ID)


def _sky(d: jax.Array) -> jax.Array:
  """Sky colour by elevation: pale at the horizon, deeper blue overhead."""
  up = jnp.clip(d[..., 2:3], 0.0, 1.0)
  return (1 - up) * jnp.asarray([0.78, 0.84, 0.9]) + up * jnp.asarray([0.35, 0.5, 0.8])


@functools.partial(jax.jit, static_argnames="size")
def render(state: scene.WorldState, view: views_lib.View, size: int = 64,
           key: jax.Array | None = None) -> Frame:
  """Renders ``state`` from ``view`` as a size x size frame.

  Args:
    state: one world state (no batch axis; ``jax.vmap`` for batches).
    view: a ``View`` (its leaves may be traced, so views can be vmapped too).
    size: image height and width in pixels (static).
    key: PRNG key for the view's sensor noise; without one the image is noise-free.
  """
  d = views_lib.pixel_rays(view, size).reshape(-1, 3)
  o = jnp.asarray(view.eye)
  # Cameras and landmarks never move: the static hits depend on the view alone, so under
  # vmap over states they are computed once per view, and each state only adds its objects.
  movable = movable_prims(state)
  hits = _closer(jax.vmap(lambda di: _nearest(movable, o, di))(d), static_hits(o, d))
  t, n, albedo, obj = hits
  obj = jnp.where(jnp.isfinite(t), obj, SKY_ID)
  n = jnp.where((jnp.sum(n * d, -1) > 0)[:, None], -n, n)  # light the side the ray sees
  shade = _AMBIENT + (1 - _AMBIENT) * jnp.maximum(n @ view.light, 0.0)
  fog = jnp.exp(-view.fog_density * jnp.where(jnp.isfinite(t), t, 0.0))[:, None]
  surface = fog * albedo * shade[:, None] + (1 - fog) * view.fog_colour
  rgb = jnp.where(jnp.isfinite(t)[:, None], surface, _sky(d)) * view.tint
  if key is not None:
    # Uniform noise of the same std: sensor-like, and much cheaper to draw than Gaussian.
    rgb += view.noise_std * jnp.sqrt(3.0) * jax.random.uniform(key, rgb.shape, minval=-1.0)
  rgb = jnp.clip(rgb, 0.0, 1.0).reshape(size, size, 3)
  return Frame(rgb, t.reshape(size, size), obj.reshape(size, size))


@functools.partial(jax.jit, static_argnames="size")
def focal_pixels(states: scene.WorldState, views: views_lib.View, size: int = 64) -> jax.Array:
  """Pixels showing the focal object, for a batch of states x stacked views: (S, V) int32."""
  count = lambda s, v: jnp.sum(render(s, v, size).obj == 0)
  return jax.lax.map(lambda s: jax.vmap(count, (None, 0))(s, views), states)
