r"""Records simulated pushing scenes with several cameras in MuJoCo, rendered offscreen (EGL;
on a machine without a GPU, Mesa's llvmpipe on the CPU): scenes made to test the recipe
where it learns poorly, on small objects and on motion that the action does not cause.

  pip install -e .[mujoco]
  python -m experiments.record_mujoco --scene=tabletop --out=recordings/tabletop \
      --episodes=300
  python -m experiments.import_episodes --npz='recordings/tabletop/ep_*.npz' \
      --name=mujoco_tabletop --data_dir=~/tensorflow_datasets --test_episodes=60

Both scenes (``--scene``) are a walled 1 m x 1 m table and a flat round pusher that slides
on it in x and y, driven by position actuators:

- ``tabletop``: two small objects (``object_a``, ``object_b``: a box, a ball or a
  cylinder each, 3 to 5 cm across, i.e. 0.03 to 0.05 of the table's width: about 1 pixel
  in a 32 x 32 overhead frame, 2 to 3 at 64 x 64) on a checkered floor.
- ``distractors``: one larger object (``object``, 8 to 12 cm across) on a floor of random
  specks, and two distractors that move whatever the action: a ball set rolling with a
  random velocity (``distractor_ball``) and a block that an actuator outside the action
  slides back and forth along a line, sinusoidally (``distractor_slider``); both collide
  with the rest.

Objects' shapes, sizes, colours and places are random per episode (and the speck floor's
tint). A scripted policy moves the pusher behind an object and pushes it in a random
direction, with noise (one episode in five is a random walk instead). The action is the
commanded displacement of the pusher (dx, dy, metres per step, float32; the pusher's
target stays on the table). State per step: ``pusher_position`` (x, y); each object's
``<name>_position`` (x, y, z) and ``<name>_shape`` (0 box, 1 ball, 2 cylinder); in
``distractors``, ``distractor_ball_position`` and ``distractor_slider_position`` (x, y, z).
Cameras (``--cameras``): ``overhead``, ``front`` (oblique, from the table's -y edge) and
``pusher`` (on the pusher, looking down and towards +y: it moves with the robot).

Episodes are written as ``ep_<index>.npz`` (one file each, atomically: a killed run leaves
whole files, and a rerun records only the missing ones); episode i depends only on
(--seed, i). Speed (2026-12-03, 2 CPU cores shared with a training run, load average
about 3.7; llvmpipe on one thread): 20 episodes of 40 steps, 3 cameras at 64 x 64, 2400
frames,

  time python -m experiments.record_mujoco --scene=tabletop --out=/tmp/mj_speed \
      --episodes=20 --steps=40

record in 6.4 to 7.2 s (0.32 to 0.36 s an episode: about 350 frames/s, 2.9 ms a frame
with its physics and the writing; distractors the same), 10 to 12 s with the start-up.
No shadows: a 512 x 512 shadow map would double the cost.
"""

import logging
import math
import os
import time

from absl import app
from absl import flags
import numpy as np

from experiments import common
from sjepa_jax import errors
from sjepa_jax import files

SCENES = ("tabletop", "distractors")
CAMERAS = ("overhead", "front", "pusher")

_OUT = flags.DEFINE_string("out", None, "Folder for the episodes' .npz files.", required=True)
_SCENE = flags.DEFINE_enum("scene", "tabletop", SCENES, "What to record: small objects "
                           "(tabletop) or a pushed object among moving distractors.")
_EPISODES = flags.DEFINE_integer("episodes", 300, "Episodes to record.")
_STEPS = flags.DEFINE_integer("steps", 40, "Steps per episode.")
_SIZE = flags.DEFINE_integer("image_size", 64, "Camera frames' height and width.")
_CAMERAS = flags.DEFINE_list("cameras", list(CAMERAS), "Cameras to record: "
                             f"{', '.join(CAMERAS)}.")
_SEED = flags.DEFINE_integer("seed", 0, "Episode i depends on (seed, i) only.")
flags.adopt_module_key_flags(common)

SHAPES = ("box", "ball", "cylinder")
TIMESTEP = 0.005
SUBSTEPS = 20  # physics steps per recorded step: 10 recorded steps per second
HALF = 0.5  # the table's half-width, metres
REACH = 0.42  # the pusher's target stays within +-REACH in x and y
MAX_MOVE = 0.03  # largest commanded pusher move per step and axis, metres
PUSHER_RADIUS = 0.03
PUSHER_Z = 0.017  # the pusher's centre: it floats 2 mm above the floor, out of its friction
OBJECT_HALF = {"tabletop": (0.015, 0.025), "distractors": (0.04, 0.06)}
MAX_SIZE = 2048


def _mujoco():
  """mujoco, imported on first use with EGL offscreen rendering unless MUJOCO_GL says
  otherwise, and llvmpipe (a GPU-less machine's EGL) on one thread: recording shares the
  machine with training."""
  os.environ.setdefault("MUJOCO_GL", "egl")
  os.environ.setdefault("LP_NUM_THREADS", "1")
  logging.getLogger("OpenGL").setLevel(logging.WARNING)  # not "No OpenGL_accelerate module"
  try:
    import mujoco  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.MissingExtraError(
        "Recording needs mujoco: install the extra with `pip install -e .[mujoco]` (or `pip "
        f"install mujoco`); offscreen rendering uses MUJOCO_GL={os.environ['MUJOCO_GL']} "
        f"({type(e).__name__}: {e}).") from e
  return mujoco


# --- The scenes, as MJCF ------------------------------------------------------------------

def _xyaxes(eye, target, up=(0.0, 0.0, 1.0)) -> str:
  """A camera's ``xyaxes`` looking from ``eye`` at ``target`` (MuJoCo cameras look along
  their -z axis, with +y up in the image)."""
  forward = np.subtract(target, eye) / np.linalg.norm(np.subtract(target, eye))
  right = np.cross(forward, up)
  right /= np.linalg.norm(right)
  return " ".join(f"{v:.4f}" for v in (*right, *np.cross(right, forward)))


def _floor(scene: str) -> str:
  """The floor's texture: grey checks of 10 cm, or specks about a pixel wide at 64 x 64
  (their tint is drawn per episode): texture that hides small things."""
  if scene == "tabletop":
    texture = ('<texture name="floor" type="2d" builtin="checker" width="32" height="32" '
               'rgb1=".78 .78 .76" rgb2=".58 .58 .6"/>')
    repeat = 5
  else:
    texture = ('<texture name="floor" type="2d" builtin="flat" mark="random" random="0.3" '
               'width="32" height="32" rgb1=".55 .55 .55" markrgb=".95 .95 .95"/>')
    repeat = 2
  return (f'{texture}<material name="floor" texture="floor" texuniform="true" '
          f'texrepeat="{repeat} {repeat}" specular="0.1"/>')


def _walls() -> str:
  """Low walls around the table: pushed objects and the rolling ball stay in view."""
  out = []
  for axis in (0, 1):
    for side in (-1, 1):
      pos, size = [0.0, 0.0, 0.025], [HALF + 0.03, HALF + 0.03, 0.025]
      pos[axis], size[axis] = side * (HALF + 0.015), 0.015
      out.append(f'<geom type="box" pos="{pos[0]} {pos[1]} {pos[2]}" '
                 f'size="{size[0]} {size[1]} {size[2]}" rgba=".45 .33 .25 1"/>')
  return "".join(out)


def _object(name: str, half: float, mass: float, damping: float = 0.002,
            extra: str = "") -> str:
  """A free body with one geom, compiled as a cube of the largest size: an episode gives it
  its shape, size and colour (``Scene._shape``). Damped: a struck ball stops rolling."""
  return (f'<body name="{name}" pos="0 0 {half}"><joint name="{name}" type="free" '
          f'damping="{damping}"/><geom name="{name}" type="box" size="{half} {half} {half}" '
          f'mass="{mass}" {extra}/></body>')


def _distractors() -> tuple[str, str]:
  """The distractor ball (bouncy: solref's negative damping) and the slider with its
  actuator; the slider's line and the ball's speed are set per episode."""
  bodies = (_object("distractor_ball", 0.035, 0.05, 0.0, 'solref="-4000 -4"')
            + '<body name="distractor_slider" pos="0 0 0.022"><joint name="distractor_slider" '
            'type="slide" axis="1 0 0" damping="10"/><geom name="distractor_slider" '
            'type="box" size="0.045 0.02 0.02" mass="0.3"/></body>')
  actuator = '<position name="distractor_slider" joint="distractor_slider" kp="100"/>'
  return bodies, actuator


def scene_xml(scene: str, size: int) -> str:
  """The MJCF of ``scene`` with frames of ``size`` x ``size``: table, walls, cameras,
  pusher and objects (shapes, sizes and places are the episode's: ``Scene.reset``)."""
  hi = OBJECT_HALF[scene][1]
  names = ("object_a", "object_b") if scene == "tabletop" else ("object",)
  bodies = "".join(_object(n, hi, 0.05 if scene == "tabletop" else 0.2) for n in names)
  actuators = ""
  if scene == "distractors":
    extra_bodies, actuators = _distractors()
    bodies += extra_bodies
  buffer = max(size, 640)
  eye_front, eye_pusher = (0.0, -1.0, 0.75), (0.0, -0.1, 0.25)
  return f"""<mujoco model="sjepa_{scene}">
  <option timestep="{TIMESTEP}"/>
  <visual><global offwidth="{buffer}" offheight="{buffer}"/><quality shadowsize="0"/>
    <headlight ambient=".35 .35 .35" diffuse=".45 .45 .45"/></visual>
  <asset>{_floor(scene)}</asset>
  <worldbody>
    <light directional="true" pos="0 0 2" dir=".3 .4 -1" diffuse=".5 .5 .5" castshadow="false"/>
    <geom name="floor" type="plane" size="{HALF} {HALF} 0.05" material="floor"/>
    {_walls()}
    <camera name="overhead" pos="0 0 1.3" fovy="45" xyaxes="1 0 0 0 1 0"/>
    <camera name="front" pos="{' '.join(map(str, eye_front))}" fovy="50"
            xyaxes="{_xyaxes(eye_front, (0.0, -0.05, 0.0))}"/>
    <body name="pusher" pos="0 0 {PUSHER_Z}">
      <joint name="pusher_x" type="slide" axis="1 0 0" damping="35"/>
      <joint name="pusher_y" type="slide" axis="0 1 0" damping="35"/>
      <geom name="pusher" type="cylinder" size="{PUSHER_RADIUS} 0.015" mass="1"
            rgba=".15 .15 .2 1"/>
      <!-- A yellow mark on top: which way the pusher's camera looks (+y). -->
      <geom type="box" pos="0 {PUSHER_RADIUS * 0.6} 0.017" size=".006 .012 .002" mass="0"
            rgba=".9 .9 .2 1" contype="0" conaffinity="0"/>
      <camera name="pusher" pos="{' '.join(map(str, eye_pusher))}" fovy="75"
              xyaxes="{_xyaxes(eye_pusher, (0.0, 0.15, 0.0))}"/>
    </body>
    {bodies}
  </worldbody>
  <actuator>
    <position name="pusher_x" joint="pusher_x" kp="300"/>
    <position name="pusher_y" joint="pusher_y" kp="300"/>
    {actuators}
  </actuator>
</mujoco>"""


# --- Simulating and rendering -------------------------------------------------------------

def _spread(rng: np.random.Generator, n: int, reach: float, gap: float) -> np.ndarray:
  """``n`` random (x, y) places within +-``reach``, ``gap`` apart where that is found in a
  few hundred draws (it nearly always is)."""
  places = rng.uniform(-reach, reach, (n, 2))
  for _ in range(300):
    apart = np.linalg.norm(places[:, None] - places[None], axis=-1) + np.eye(n) * gap
    if apart.min() >= gap:
      break
    places = rng.uniform(-reach, reach, (n, 2))
  return places


class Slider:
  """The distractor slider's sinusoid: its actuator's target at time t (seconds)."""

  def __init__(self, rng: np.random.Generator):
    self.amplitude = float(rng.uniform(0.12, 0.2))
    self.omega = 2 * math.pi / float(rng.uniform(1.2, 2.5))
    self.phase = float(rng.uniform(0, 2 * math.pi))

  def at(self, t: float) -> float:
    return self.amplitude * math.sin(self.omega * t + self.phase)


class Scene:
  """One MuJoCo world, compiled once with one Renderer (creating one takes about 0.3 s, as
  long as recording an episode): each episode writes its objects' shapes, sizes, colours
  and places into the model, then resets the simulation, so it depends on its own draws
  only."""

  def __init__(self, scene: str, size: int):
    self.mj = _mujoco()
    self.distractors = scene == "distractors"
    self.objects = ("object",) if self.distractors else ("object_a", "object_b")
    self.half_range = OBJECT_HALF[scene]
    self.model = self.mj.MjModel.from_xml_string(scene_xml(scene, size))
    self.data = self.mj.MjData(self.model)
    self.renderer = self.mj.Renderer(self.model, size, size)
    self.slider = None
    self.target = np.zeros(2)

  def _shape(self, name: str, shape: int, half: float, colour: np.ndarray) -> None:
    """Makes geom ``name`` a cube, ball or cylinder (its height 2 ``half``) of that colour,
    with the bounds the collision broad phase reads."""
    geom, mj = self.model.geom(name), self.mj
    geom.type = (mj.mjtGeom.mjGEOM_BOX, mj.mjtGeom.mjGEOM_SPHERE, mj.mjtGeom.mjGEOM_CYLINDER)[shape]
    geom.size[:] = ((half, half, half), (half, 0, 0), (half, half, 0))[shape]
    geom.rbound = half * (math.sqrt(3), 1.0, math.sqrt(2))[shape]
    self.model.geom_aabb[geom.id] = [0, 0, 0, half, half, half]
    geom.rgba[:] = [*colour, 1.0]

  def _place(self, name: str, xy: np.ndarray, z: float, yaw: float = 0.0) -> None:
    self.data.joint(name).qpos[:] = [*xy, z, math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)]

  def reset(self, rng: np.random.Generator) -> dict[str, int]:
    """A fresh episode: random objects (and distractors) at random places, the pusher away
    from them. Returns each object's shape index."""
    self.mj.mj_resetData(self.model, self.data)
    n = len(self.objects) + (2 if self.distractors else 0)
    places = _spread(rng, n + 1, 0.32, 0.16)
    shapes = {}
    for name, xy in zip(self.objects, places[1:]):
      shapes[name] = int(rng.integers(len(SHAPES)))
      half = float(rng.uniform(*self.half_range))
      self._shape(name, shapes[name], half, rng.uniform(0.15, 1.0, 3))
      self._place(name, xy, half, float(rng.uniform(0, 2 * math.pi)))
    if self.distractors:
      self._reset_distractors(rng, places[-2:])
    self.target = places[0].copy()
    self.data.joint("pusher_x").qpos[0], self.data.joint("pusher_y").qpos[0] = self.target
    self.data.actuator("pusher_x").ctrl[0], self.data.actuator("pusher_y").ctrl[0] = self.target
    self.mj.mj_forward(self.model, self.data)
    return shapes

  def _reset_distractors(self, rng: np.random.Generator, places: np.ndarray) -> None:
    """The ball rolling (no slip) at 0.25 to 0.45 m/s in a random direction; the slider on
    a random line near its place, on its sinusoid; the floor's tint."""
    radius = float(rng.uniform(0.025, 0.035))
    self._shape("distractor_ball", 1, radius, rng.uniform(0.15, 1.0, 3))
    self._place("distractor_ball", places[0], radius)
    angle, speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.25, 0.45)
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    self.data.joint("distractor_ball").qvel[:] = [vx, vy, 0, -vy / radius, vx / radius, 0]
    self.slider = Slider(rng)
    heading = rng.uniform(0, math.pi)
    reach = HALF - 0.06 - self.slider.amplitude  # its ends stay off the walls
    self.model.body("distractor_slider").pos[:2] = np.clip(places[1], -reach, reach)
    self.model.body("distractor_slider").quat[:] = [math.cos(heading / 2), 0, 0,
                                                   math.sin(heading / 2)]
    self.model.geom("distractor_slider").rgba[:] = [*rng.uniform(0.15, 1.0, 3), 1.0]
    self.data.joint("distractor_slider").qpos[0] = self.slider.at(0.0)
    self.data.actuator("distractor_slider").ctrl[0] = self.slider.at(0.0)
    self.model.mat("floor").rgba[:] = [*rng.uniform(0.6, 1.0, 3), 1.0]

  def act(self, move: np.ndarray) -> np.ndarray:
    """Moves the pusher's target by ``move``, clipped to ``MAX_MOVE`` and the table, and
    runs the physics for one recorded step; returns the move made (the action)."""
    target = np.clip(self.target + np.clip(move, -MAX_MOVE, MAX_MOVE), -REACH, REACH)
    made, self.target = target - self.target, target
    self.data.actuator("pusher_x").ctrl[0], self.data.actuator("pusher_y").ctrl[0] = target
    for _ in range(SUBSTEPS):
      if self.distractors:
        self.data.actuator("distractor_slider").ctrl[0] = self.slider.at(self.data.time)
      self.mj.mj_step(self.model, self.data)
    self.mj.mj_forward(self.model, self.data)  # positions (and frames) after the last step
    return made.astype(np.float32)

  def state(self) -> dict[str, np.ndarray]:
    names = self.objects + (("distractor_ball", "distractor_slider") if self.distractors
                            else ())
    out = {"pusher_position": self.data.body("pusher").xpos[:2]}
    out.update({f"{n}_position": self.data.body(n).xpos for n in names})
    return {k: np.array(v, np.float32) for k, v in out.items()}

  def frame(self, camera: str) -> np.ndarray:
    """One (size, size, 3) uint8 frame from ``camera``."""
    self.renderer.update_scene(self.data, camera=camera)
    return self.renderer.render()

  def close(self) -> None:
    self.renderer.close()


def _detour(pusher: np.ndarray, obj: np.ndarray, direction: np.ndarray,
            clearance: float) -> np.ndarray:
  """Where to go to get behind ``obj`` (pushing along ``direction``) without pushing it
  first: straight there from behind it, else by its side."""
  behind = obj - clearance * direction
  if (pusher - obj) @ direction < -0.7 * clearance:
    return behind
  side = np.asarray([-direction[1], direction[0]])
  side *= np.sign((pusher - obj) @ side) or 1.0
  return obj + 1.2 * clearance * side - 0.8 * clearance * direction


def policy(rng: np.random.Generator, steps: int, target: str, clearance: float):
  """A scripted push of ``target`` (or, one episode in five, a random walk):
  ``move(state, t)`` gives the commanded pusher displacement."""
  if rng.random() < 0.2:
    walk = rng.normal(0.0, 0.015, (steps, 2))
    return lambda state, t: walk[t]
  angle = rng.uniform(0, 2 * math.pi)
  speed = rng.uniform(0.01, 0.025)
  direction = np.asarray([math.cos(angle), math.sin(angle)])
  noise = rng.normal(0.0, 0.004, (steps, 2))
  pushing = [False]

  def move(state, t):
    pusher, obj = state["pusher_position"], state[f"{target}_position"][:2]
    behind = obj - clearance * direction
    pushing[0] = pushing[0] or np.linalg.norm(pusher - behind) < 0.02 or t >= steps // 2
    if not pushing[0]:
      return _detour(pusher, obj, direction, clearance) - pusher + noise[t]
    off_line = (obj - pusher) - ((obj - pusher) @ direction) * direction
    return speed * direction + 0.5 * off_line + noise[t]
  return move


def record_episode(scene: Scene, seed: int, index: int, steps: int,
                   cameras: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Episode ``index``: every camera's frames (T, H, W, 3), the state and the T - 1 actions."""
  rng = np.random.default_rng([seed, index])
  shapes = scene.reset(rng)
  for _ in range(5):  # let the objects settle before the first frame
    scene.act(np.zeros(2))
  target = scene.objects[int(rng.integers(len(scene.objects)))]
  clearance = PUSHER_RADIUS + scene.model.geom(target).rbound + 0.01
  move = policy(rng, steps, target, clearance)
  out = {c: [] for c in cameras}
  states, actions = [], []
  for t in range(steps):
    state = scene.state()
    states.append(state)
    for c in cameras:
      out[c].append(scene.frame(c))
    if t < steps - 1:
      actions.append(scene.act(move(state, t)))
  arrays = {c: np.stack(f) for c, f in out.items()}
  arrays.update({k: np.stack([s[k] for s in states]) for k in states[0]})
  arrays.update({f"{n}_shape": np.full(steps, s, np.int32) for n, s in shapes.items()})
  arrays["actions"] = np.asarray(actions, np.float32)
  return arrays


def _write_episode(path: str, arrays: dict[str, np.ndarray]) -> None:
  """A file whole or absent (``files.write_atomically``); a killed run leaves no half episode."""
  files.write_atomically(path, lambda f: np.savez(f, **arrays), "wb")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cameras = tuple(_CAMERAS.value)
  unknown = [c for c in cameras if c not in CAMERAS]
  if unknown or not cameras or len(set(cameras)) != len(cameras):
    raise errors.UserError(f"--cameras must be distinct names from {', '.join(CAMERAS)}; "
                           f"got {', '.join(cameras) or 'none'}.")
  if _STEPS.value < 2 or _EPISODES.value < 1:
    raise errors.UserError(f"Need --steps >= 2 and --episodes >= 1, got {_STEPS.value} and "
                           f"{_EPISODES.value}.")
  if not 1 <= _SIZE.value <= MAX_SIZE:
    raise errors.UserError(f"--image_size must be in [1, {MAX_SIZE}], got {_SIZE.value}.")
  os.makedirs(_OUT.value, exist_ok=True)
  scene = Scene(_SCENE.value, _SIZE.value)
  start, recorded = time.perf_counter(), 0
  for i in range(_EPISODES.value):
    path = os.path.join(_OUT.value, f"ep_{i:05d}.npz")
    if os.path.exists(path):
      continue
    _write_episode(path, record_episode(scene, _SEED.value, i, _STEPS.value, cameras))
    recorded += 1
    if recorded % 20 == 0:
      print(f"  {i + 1}/{_EPISODES.value} episodes, "
            f"{(time.perf_counter() - start) / recorded:.2f} s each", flush=True)
  scene.close()
  print(f"Recorded {recorded} {_SCENE.value} episodes ({_EPISODES.value - recorded} already "
        f"there) of {_STEPS.value} steps, cameras {', '.join(cameras)}, into {_OUT.value} "
        f"({time.perf_counter() - start:.0f} s).")


if __name__ == "__main__":
  common.run(main)
