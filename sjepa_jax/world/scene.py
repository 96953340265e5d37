"""World state, object classes and dynamics of the embedded multi-view world.

The world is a square arena (``|x|, |y| <= ARENA_HALF``, z up) on a ground plane, ringed by
a fixed layout of static landmarks (a grove of trees to the south, rocks, low walls), with
``NUM_OBJECTS`` movable objects inside. Object 0 is the *focal* object: it carries the
probe labels (class, position, velocity) and is pushed by the action; the others drift at
constant velocity. Every object bounces off the arena walls.

Class = shape x size (``NUM_CLASSES`` = 3 x 3). The shapes differ in silhouette (round, flat
and wide, tall and thin), so they stay apart at a few pixels across.

The labels must be readable from one frame, so the focal object is the only one of its
family: it is upright and always the same red (``FOCAL_COLOUR``), while the distractors are
flat grey pucks (shape ``PUCK``, never a class). Its colour carries no label: only its
silhouette and size tell its class. (A colour drawn at random per episode is a nuisance an
encoder must learn to see through: it cost the agents most of what they learn of the
object; docs/results.md.) Pushes move it several pixels per step in every view, so a
predictor that copies the current latent is a poor one.

Shapes: N = objects, T = time steps.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ARENA_HALF = 2.5
NUM_OBJECTS = 3
SHAPES = ("sphere", "slab", "pillar")  # the focal object's shapes (its class)
PUCK = len(SHAPES)  # the distractors' shape: a flat disc, never the focal object's
SIZES = (0.35, 0.55, 0.8)  # characteristic half-size of each size class, world units
NUM_CLASSES = len(SHAPES) * len(SIZES)
# The labels a probe reads from one frame, and the class count of each integer label (the
# others are values). Velocity is left out: one frame does not show it.
PROBED = ("class", "shape", "size", "position", "distractor_centroid")
LABEL_CLASSES = {"class": NUM_CLASSES, "shape": len(SHAPES), "size": len(SIZES)}
MAX_PUSH = 0.6  # largest action component, world units per step per step
FRICTION = 0.85  # the focal object's velocity decays by this factor each step
MAX_SPEED = 1.0
DRIFT_SPEED = (0.02, 0.06)  # range of the distractors' constant speed
GREY = (0.3, 0.6)  # range of the distractors' (achromatic) albedo
FOCAL_COLOUR = (0.85, 0.18, 0.12)


class WorldState(NamedTuple):
  """Everything that changes between states; static landmarks are module constants."""
  pos: jax.Array  # (N, 2) object centres on the ground plane
  vel: jax.Array  # (N, 2) per-step displacement
  shape: jax.Array  # (N,) int32 index into SHAPES
  size: jax.Array  # (N,) int32 index into SIZES
  colour: jax.Array  # (N, 3) RGB albedo in [0, 1]


def class_id(shape: jax.Array, size: jax.Array) -> jax.Array:
  """Class label of an object: shape-major index into SHAPES x SIZES."""
  return shape * len(SIZES) + size


def half_extents(shape: jax.Array, size: jax.Array) -> jax.Array:
  """Half-extents (x, y, z) of objects' bounding boxes, shape (..., 3)."""
  s = jnp.asarray(SIZES, jnp.float32)[size]
  ratio = jnp.asarray(
      [[1.0, 1.0, 1.0],  # sphere: radius s
       [1.0, 1.0, 0.4],  # slab: a wide, low box
       [0.55, 0.55, 1.6],  # pillar: a tall, thin box
       [1.0, 1.0, 0.15]],  # puck: a flat disc (distractors only)
      jnp.float32)[shape]
  return ratio * s[..., None]


@jax.jit
def random_state(key: jax.Array) -> WorldState:
  """A random initial state: a focal object of random class at rest, and grey pucks
  drifting; random positions."""
  k_shape, k_size, _, k_grey, k_pos, k_dir, k_speed = jax.random.split(key, 7)
  n = NUM_OBJECTS
  shape = jnp.full((n,), PUCK).at[0].set(jax.random.randint(k_shape, (), 0, len(SHAPES)))
  size = jax.random.randint(k_size, (n,), 0, len(SIZES))
  margin = half_extents(shape, size)[:, :2]
  pos = jax.random.uniform(k_pos, (n, 2), minval=-1.0, maxval=1.0) * (ARENA_HALF - margin)
  angle = jax.random.uniform(k_dir, (n,), maxval=2 * jnp.pi)
  speed = jax.random.uniform(k_speed, (n,), minval=DRIFT_SPEED[0], maxval=DRIFT_SPEED[1])
  vel = speed[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
  vel = vel.at[0].set(0.0)  # the focal object moves only when pushed
  grey = jax.random.uniform(k_grey, (n, 1), minval=GREY[0], maxval=GREY[1])
  colour = jnp.where(jnp.arange(n)[:, None] == 0, jnp.asarray(FOCAL_COLOUR), grey)
  return WorldState(pos, vel, shape, size, colour)


@jax.jit
def step(state: WorldState, action: jax.Array) -> WorldState:
  """Advances the world one step; ``action`` (2,) pushes the focal object.

  The push is clipped to ``MAX_PUSH`` per component; the focal object's velocity decays by
  ``FRICTION`` and is capped at ``MAX_SPEED``; the other objects keep their velocity.
  Objects that would cross a wall are reflected back inside and their velocity flipped.
  """
  push = jnp.clip(action, -MAX_PUSH, MAX_PUSH)
  focal_vel = FRICTION * state.vel[0] + push
  focal_vel *= jnp.minimum(1.0, MAX_SPEED / (jnp.linalg.norm(focal_vel) + 1e-9))
  vel = state.vel.at[0].set(focal_vel)
  pos = state.pos + vel
  limit = ARENA_HALF - half_extents(state.shape, state.size)[:, :2]
  over, under = pos > limit, pos < -limit
  pos = jnp.where(over, 2 * limit - pos, jnp.where(under, -2 * limit - pos, pos))
  vel = jnp.where(over | under, -vel, vel)
  return state._replace(pos=pos, vel=vel)


def random_actions(key: jax.Array, length: int) -> jax.Array:
  """``length`` random pushes, shape (length, 2), uniform in [-MAX_PUSH, MAX_PUSH]."""
  return jax.random.uniform(key, (length, 2), minval=-MAX_PUSH, maxval=MAX_PUSH)


@jax.jit
def rollout(state: WorldState, actions: jax.Array) -> WorldState:
  """States s_0 .. s_T under actions a_0 .. a_{T-1}: leaves gain a leading T+1 axis."""
  def body(s, a):
    s_next = step(s, a)
    return s_next, s_next
  _, states = jax.lax.scan(body, state, actions)
  return jax.tree.map(lambda s0, rest: jnp.concatenate([s0[None], rest]), state, states)


def labels(state: WorldState) -> dict[str, jax.Array]:
  """The focal object's labels: class and its two parts (shape, size), position and
  velocity; and the distractors' centroid (their mean position), which asks whether a
  latent keeps what the action does not move. The pucks look alike, so only an order-free
  summary of where they are is readable by a linear probe."""
  return {
      "class": class_id(state.shape[0], state.size[0]).astype(jnp.int32),
      "shape": state.shape[0].astype(jnp.int32),
      "size": state.size[0].astype(jnp.int32),
      "position": state.pos[0],
      "velocity": state.vel[0],
      "distractor_centroid": jnp.mean(state.pos[1:], axis=0),
  }


def state_features(state: WorldState) -> jax.Array:
  """Everything that varies between states as one vector (S,): every object's position and
  velocity, the focal object's shape and every object's size (one-hot), the pucks' grey
  levels. What a latent could know of the world; the state ceiling reads latents from it."""
  return jnp.concatenate([
      state.pos.ravel(), state.vel.ravel(), jax.nn.one_hot(state.shape[0], len(SHAPES)),
      jax.nn.one_hot(state.size, len(SIZES)).ravel(), state.colour[1:, 0]])


# --- Static landmarks: a fixed layout, the same in every episode. -----------------------
# Trees as (x, y, trunk radius, trunk height, canopy radius); most stand in a grove south
# of the arena, around the `forest` camera, so that view looks out between trunks.
TREES = np.asarray([
    (-1.2, -5.2, 0.22, 1.9, 0.9), (1.05, -5.15, 0.2, 2.1, 0.85), (-2.9, -5.6, 0.25, 2.2, 1.0),
    (2.8, -5.5, 0.22, 1.8, 0.95), (-0.2, -7.9, 0.24, 2.0, 0.95), (-2.0, -7.3, 0.2, 2.3, 0.9),
    (1.9, -7.2, 0.23, 2.0, 1.0), (-4.4, -6.6, 0.25, 2.1, 1.05), (4.3, -6.8, 0.22, 2.2, 1.0),
    (-2.2, -3.7, 0.12, 1.6, 0.6), (-3.9, -4.4, 0.2, 1.7, 0.8), (3.9, -4.3, 0.2, 1.9, 0.8),
    (-5.5, 2.0, 0.25, 2.4, 1.1), (5.6, -1.5, 0.25, 2.2, 1.0), (4.8, 4.6, 0.24, 2.3, 1.05),
], np.float32)
TRUNK_COLOUR = np.asarray([0.42, 0.3, 0.2], np.float32)
CANOPY_COLOUR = np.asarray([0.2, 0.5, 0.22], np.float32)
# Rocks as (x, y, z, radius): partly buried spheres.
ROCKS = np.asarray([
    (-4.6, 0.5, -0.2, 0.7), (4.7, 2.2, -0.3, 0.8), (-3.8, 4.6, -0.1, 0.5), (1.5, 5.2, -0.3, 0.9),
], np.float32)
ROCK_COLOUR = np.asarray([0.55, 0.53, 0.5], np.float32)
WALL_HEIGHT, WALL_THICKNESS = 0.12, 0.08
WALL_COLOUR = np.asarray([0.8, 0.78, 0.7], np.float32)
