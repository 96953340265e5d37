"""The embedded world: planted geometry, dynamics, determinism, views, overlap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjepa_jax import world
from sjepa_jax.world import overlap as overlap_lib
from sjepa_jax.world import render as render_lib
from sjepa_jax.world import scene
from sjepa_jax.world import views as views_lib

SIZE = 24


def _solo_state(pos, shape=0, size=1):
  """The focal object alone at ``pos``; the others parked far behind every camera."""
  state = world.random_state(jax.random.key(0))
  far = jnp.full((scene.NUM_OBJECTS, 2), 40.0).at[0].set(jnp.asarray(pos, jnp.float32))
  return state._replace(pos=far, vel=jnp.zeros_like(far),
                        shape=state.shape.at[0].set(shape), size=state.size.at[0].set(size))


def test_planted_sphere_appears_where_the_camera_projects_it():
  radius = scene.SIZES[1]
  centre = np.asarray([1.0, 0.5, radius], np.float32)
  view = views_lib.make_view(eye=(-2.0, -6.0, 4.0), target=(0.0, 0.0, 0.0), fov_deg=50.0)
  frame = render_lib.render(_solo_state(centre[:2]), view, size=65)
  (row, col), inside = views_lib.project(view, 65, jnp.asarray(centre))
  assert bool(inside)
  i, j = int(row), int(col)
  assert int(frame.obj[i, j]) == 0
  dist = float(np.linalg.norm(centre - view.eye))
  assert dist - radius - 1e-3 <= float(frame.depth[i, j]) <= dist
  # The nearest surface along the pixel's own ray is the analytic sphere hit.
  d = views_lib.pixel_rays(view, 65)[i, j]
  oc = view.eye - centre
  b = float(oc @ d)
  expected = -b - np.sqrt(b * b - (oc @ oc - radius**2))
  np.testing.assert_allclose(float(frame.depth[i, j]), expected, rtol=1e-4)


def test_straight_down_view_puts_world_axes_on_image_axes():
  view = views_lib.make_view(eye=(0.0, 0.0, 10.0), target=(0.0, 0.0, 0.0), fov_deg=40.0)
  frame = render_lib.render(_solo_state((-1.5, 1.5), shape=1), view, size=SIZE)
  rows, cols = np.nonzero(np.asarray(frame.obj) == 0)
  assert rows.size > 0
  assert rows.mean() < SIZE / 2 and cols.mean() < SIZE / 2  # +y is up, -x is left


@pytest.mark.parametrize("name", sorted(world.VIEWS))
def test_render_shapes_and_ranges(name):
  state = world.random_state(jax.random.key(1))
  frame = render_lib.render(state, world.get_view(name), SIZE, key=jax.random.key(2))
  chex.assert_shape(frame.rgb, (SIZE, SIZE, 3))
  chex.assert_shape((frame.depth, frame.obj), (SIZE, SIZE))
  assert frame.rgb.dtype == jnp.float32
  assert float(frame.rgb.min()) >= 0.0 and float(frame.rgb.max()) <= 1.0
  depth = np.asarray(frame.depth)
  assert np.all(depth > 0)
  np.testing.assert_array_equal(np.isinf(depth), np.asarray(frame.obj) == render_lib.SKY_ID)


@pytest.mark.parametrize("kind", sorted(render_lib._HIT))
def test_every_ray_gets_a_finite_normal_hit_or_miss(kind):
  # A miss's distance is inf; a normal computed at it would be inf or NaN, and XLA may
  # round one distance differently in two fused kernels, so a select cannot be trusted to
  # drop it (it put NaN pixels into training batches). Rays in every direction from a
  # camera, against one primitive of each kind: most miss, some hit, some graze.
  prims = render_lib.movable_prims(_solo_state((0.3, -0.2), shape=0))
  p = jax.tree.map(lambda x: x[:1], prims[kind])._replace(valid=jnp.ones(1, bool))
  eye = jnp.asarray([0.0, -6.0, 2.0])
  d = jax.random.normal(jax.random.key(7), (4096, 3))
  d = d.at[:8].set(jnp.eye(3)[jnp.arange(8) % 3])  # axis-aligned rays: zero components
  d /= jnp.linalg.norm(d, axis=-1, keepdims=True)
  t, n = jax.vmap(lambda di: render_lib._HIT[kind](eye, di, p))(d)
  assert np.isinf(np.asarray(t)).mean() > 0.5 and np.isfinite(np.asarray(t)).any()
  assert np.all(np.isfinite(np.asarray(n)))
  ground_t, ground_n, albedo, _ = jax.vmap(lambda di: render_lib._ground(eye, di))(d)
  assert np.isinf(np.asarray(ground_t)).any()
  assert np.all(np.isfinite(np.asarray(ground_n))) and np.all(np.isfinite(np.asarray(albedo)))


def test_render_is_deterministic_and_noise_follows_the_key():
  state = world.random_state(jax.random.key(3))
  forest = world.get_view("forest")  # a view with sensor noise
  a = render_lib.render(state, forest, SIZE, key=jax.random.key(4)).rgb
  b = render_lib.render(state, forest, SIZE, key=jax.random.key(4)).rgb
  c = render_lib.render(state, forest, SIZE, key=jax.random.key(5)).rgb
  clean = render_lib.render(state, forest, SIZE).rgb
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 0.01
  assert float(jnp.abs(a - clean).mean()) < 0.05  # noise is small next to the signal


def test_vmap_render_over_states_and_views_equals_loop():
  states = jax.vmap(world.random_state)(jax.random.split(jax.random.key(6), 3))
  names = ["mountain", "forest"]
  views = world.stack_views(names)
  batched = jax.vmap(jax.vmap(lambda s, v: render_lib.render(s, v, SIZE).rgb, (None, 0)),
                     (0, None))(states, views)
  for i in range(3):
    state = jax.tree.map(lambda x: x[i], states)
    for j, name in enumerate(names):
      single = render_lib.render(state, world.get_view(name), SIZE).rgb
      np.testing.assert_allclose(batched[i, j], single, atol=1e-6)


def test_views_look_different():
  state = world.random_state(jax.random.key(7))
  images = [render_lib.render(state, world.get_view(n), SIZE).rgb for n in sorted(world.VIEWS)]
  for i in range(len(images)):
    for j in range(i + 1, len(images)):
      assert float(jnp.abs(images[i] - images[j]).mean()) > 0.05


def _random_frames(name: str, num: int = 48, size: int = 64, smallest: bool = False):
  """``num`` random states rendered noise-free from the named view at ``size``; with
  ``smallest`` the focal object is of the smallest size class."""
  states = jax.vmap(world.random_state)(jax.random.split(jax.random.key(8), num))
  if smallest:
    states = states._replace(size=states.size.at[:, 0].set(0))
  return states, jax.vmap(lambda s: render_lib.render(s, world.get_view(name), size))(states)


@pytest.mark.parametrize("name", sorted(world.VIEWS))
def test_the_focal_object_is_the_only_coloured_object_and_is_seen(name):
  """The labels are readable from one frame: the focal object is the only saturated object
  (the distractors are grey pucks), and it covers enough pixels for shape and size."""
  states, frames = _random_frames(name)
  assert np.all(np.asarray(states.shape[:, 1:]) == scene.PUCK)
  assert np.all(np.asarray(states.shape[:, 0]) < scene.PUCK)
  rgb = np.asarray(frames.rgb) / np.asarray(world.get_view(name).tint)
  obj = np.asarray(frames.obj)
  chroma = rgb.max(-1) - rgb.min(-1)  # 0 for grey; the view's fog adds a little
  focal, distractor = chroma[obj == 0], chroma[obj >= 1]
  assert distractor.size and np.percentile(distractor, 99) < 0.06
  assert np.percentile(focal, 25) > 0.15
  pixels = np.sum(obj == 0, axis=(1, 2))
  assert np.mean(pixels >= 10) >= 0.95, pixels  # seen in nearly every state
  smallest = np.sum(np.asarray(_random_frames(name, smallest=True)[1].obj) == 0, axis=(1, 2))
  assert np.median(smallest) >= 20, smallest


@pytest.mark.parametrize("name", sorted(world.VIEWS))
def test_a_push_moves_the_focal_object_several_pixels(name):
  """Prediction needs the world: one step from rest under the largest push moves the focal
  object's image by more than two pixels at the default 32x32 in every view (the old world:
  about a quarter of a pixel)."""
  view, span = world.get_view(name), 0.6
  start = _solo_state((-span, -span))
  centres = []
  for pos in ((-span, -span), (span, span)):
    rows, cols = np.nonzero(np.asarray(render_lib.render(_solo_state(pos), view, 32).obj) == 0)
    centres.append(np.asarray([rows.mean(), cols.mean()]))
  moved = world.step(start, jnp.full(2, scene.MAX_PUSH)).pos[0] - start.pos[0]
  np.testing.assert_allclose(moved, scene.MAX_PUSH, rtol=1e-6)
  per_step = np.linalg.norm(centres[1] - centres[0]) * scene.MAX_PUSH / (2 * span)
  assert per_step > 2.0, per_step


def test_unknown_and_duplicate_views_are_clear_errors():
  with pytest.raises(ValueError, match=r"'lake'.*cellar, drone, forest, mountain, river"):
    world.get_view("lake")
  with pytest.raises(ValueError, match="Duplicate views"):
    world.parse_views("forest,mountain,forest")
  with pytest.raises(ValueError, match="No view"):
    world.parse_views("")
  assert world.parse_views(" mountain , forest") == ["mountain", "forest"]


# --- Dynamics -------------------------------------------------------------------------

def test_push_moves_the_focal_object_in_the_push_direction():
  state = _solo_state((0.0, 0.0))
  for push in ([0.05, 0.0], [0.0, -0.05], [-0.03, 0.04]):
    push = jnp.asarray(push)
    moved = world.step(state, push).pos[0] - state.pos[0]
    np.testing.assert_allclose(moved, push, atol=1e-6)  # from rest: displacement = push


def test_friction_slows_the_focal_object_and_others_drift():
  state = world.random_state(jax.random.key(9))
  state = state._replace(vel=state.vel.at[0].set(jnp.asarray([0.1, 0.0])),
                         pos=jnp.zeros_like(state.pos))
  nxt = world.step(state, jnp.zeros(2))
  np.testing.assert_allclose(nxt.vel[0], [0.1 * scene.FRICTION, 0.0], rtol=1e-6)
  np.testing.assert_allclose(nxt.pos[1:], state.vel[1:], atol=1e-6)


def test_objects_stay_in_the_arena_and_bounce():
  state = world.random_state(jax.random.key(10))
  actions = jnp.tile(jnp.asarray([[scene.MAX_PUSH, scene.MAX_PUSH]]), (400, 1))
  states = world.rollout(state, actions)
  ext = scene.half_extents(states.shape, states.size)[..., :2]
  assert bool(jnp.all(jnp.abs(states.pos) + ext <= scene.ARENA_HALF + 1e-5))
  assert float(states.vel[:, 0, 0].min()) < 0  # a constant +x push still bounced off a wall


def test_dynamics_and_sampling_are_deterministic():
  key = jax.random.key(11)
  views = world.stack_views(["drone", "river"])
  a = world.sample_episode(key, views, length=4, size=16)
  b = world.sample_episode(key, views, length=4, size=16)
  chex.assert_trees_all_equal(a, b)
  c = world.sample_episode(jax.random.key(12), views, length=4, size=16)
  assert not np.array_equal(a.obs, c.obs)


def test_episode_shapes_and_labels_follow_the_rollout():
  views = world.stack_views(["mountain", "forest", "drone"])
  ep = world.sample_episode(jax.random.key(13), views, length=5, size=16)
  chex.assert_shape(ep.obs, (3, 5, 16, 16, 3))
  chex.assert_shape(ep.actions, (4, 2))
  chex.assert_shape((ep.labels["position"], ep.labels["velocity"],
                    ep.labels["distractor_centroid"]), (5, 2))
  labels = np.asarray(ep.labels["class"])
  assert labels.dtype == np.int32 and np.all(labels == labels[0])  # class is constant
  assert 0 <= labels[0] < world.NUM_CLASSES
  np.testing.assert_allclose(np.diff(ep.labels["position"], axis=0),
                             ep.labels["velocity"][1:], atol=1e-5)  # no wall hit this short


def test_only_the_silhouette_and_size_tell_the_class():
  """Every class occurs, and the focal object's colour is the same whatever its class (a
  colour that varied with the class would give it away to pixel baselines); the labels
  hold its two parts, shape-major."""
  states = jax.vmap(world.random_state)(jax.random.split(jax.random.key(14), 3000))
  labels = jax.vmap(world.labels)(states)
  cls = np.asarray(labels["class"])
  assert len(np.unique(cls)) == world.NUM_CLASSES == 9
  np.testing.assert_array_equal(np.asarray(states.colour[:, 0]),
                                np.broadcast_to(np.float32(scene.FOCAL_COLOUR), (3000, 3)))
  np.testing.assert_array_equal(cls, np.asarray(labels["shape"]) * 3 + np.asarray(labels["size"]))
  assert "colour" not in labels and set(scene.PROBED) <= set(labels)


# --- Overlap --------------------------------------------------------------------------

def test_overlap_of_a_view_with_itself_is_one_and_opposite_views_see_less():
  states = jax.vmap(world.random_state)(jax.random.split(jax.random.key(15), 2))
  views = world.stack_views(["mountain", "forest", "river"])
  m = np.asarray(world.overlap_matrix(states, views, size=SIZE))
  np.testing.assert_allclose(np.diag(m), 1.0)
  assert m[1, 2] < 0.9 and m[2, 1] < 0.9  # views from opposite sides see different surfaces


def test_overlap_of_nested_frames_from_one_eye_is_their_area_ratio():
  """One eye straight above the floor (every pixel sees a surface, and a point one eye sees
  is never hidden from it):
  the narrow frame's half-width is half the wide one's (tan 26.57 deg = tan 45 deg / 2), so
  exactly the central 8 x 8 of the wide frame's 16 x 16 pixel centres fall inside it."""
  state = world.random_state(jax.random.key(16))
  look_down = lambda fov: views_lib.make_view(eye=(0.0, 0.0, 3.0), target=(0.0, 0.0, 0.0),
                                              fov_deg=fov)
  wide, narrow = look_down(90.0), look_down(float(np.degrees(2 * np.arctan(0.5))))
  assert float(overlap_lib.overlap(state, wide, narrow, size=16)) == 64 / 256
  assert float(overlap_lib.overlap(state, narrow, wide, size=16)) == 1.0


def test_overlap_with_a_view_looking_at_the_empty_sky_is_zero():
  state = world.random_state(jax.random.key(16))
  sky = views_lib.make_view(eye=(0.0, 0.0, 1.0), target=(0.0, 0.0, 50.0), fov_deg=40.0)
  assert float(overlap_lib.overlap(state, world.get_view("mountain"), sky, size=SIZE)) == 0.0


def test_the_other_views_share_under_a_tenth_of_their_pixels_with_the_cellar():
  """The low-overlap view: from under the floor it sees the objects' undersides, which no
  view from above sees, and it sees through the floor the others see (the ground is one
  surface, seen from above only). What it does see of the walls and trees the others see
  too, but that is a small part of their frames, and of its own far less than they share
  with each other."""
  states = jax.vmap(world.random_state)(jax.random.split(jax.random.key(17), 8))
  names = ["mountain", "forest", "drone", "river", "cellar"]
  m = np.asarray(world.overlap_matrix(states, world.stack_views(names), size=32))
  assert m[:4, 4].max() < 0.1, m
  above = m[:4, :4][~np.eye(4, dtype=bool)]
  assert m[4, :4].mean() < 0.5 * above.mean(), m
  assert m[:4, :4].min() > 0.3  # the views from above share their floor
