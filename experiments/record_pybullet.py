r"""Records a physics simulator with several cameras: a KUKA iiwa arm pushing an object, in
pybullet, rendered offline on the CPU (TinyRenderer: no display, no OpenGL).

  pip install -e .[pybullet]
  python -m experiments.record_pybullet --out=recordings/pushing --episodes=300
  python -m experiments.import_episodes --npz='recordings/pushing/ep_*.npz' \
      --name=pybullet_pushing --data_dir=~/tensorflow_datasets --test_episodes=60

Each episode: a random object (a box, a ball or a cylinder, its ``object_shape``; random
colour and size) at a random place on the floor in front of the arm; a scripted policy
moves the end effector behind it and pushes it in a random direction, with noise (one
episode in five is a random walk instead). The action is the commanded displacement of
the end effector's target (dx, dy, dz, metres per step, within a workspace box); the arm
follows it through inverse kinematics and position control. State per step:
``joint_positions`` (7, radians), ``effector_position`` (3), ``object_position`` (3),
``object_orientation`` (quaternion x, y, z, w with w >= 0) and ``object_shape``. Cameras
(``--cameras``): ``front`` (facing the arm), ``side`` (from its left), ``top`` (overhead)
and ``wrist`` (on the end effector, looking down).

Episodes are written as ``ep_<index>.npz`` (one file each, atomically: a killed run leaves
whole files, and a rerun records only the missing ones); episode i depends only on
(--seed, i). A 64 x 64 camera frame takes about 6 ms, so 300 episodes of 40 steps with 3
cameras take about 4 minutes on one core.
"""

import math
import os
import time

from absl import app
from absl import flags
import numpy as np

from experiments import common
from sjepa_jax import errors
from sjepa_jax import files

_OUT = flags.DEFINE_string("out", None, "Folder for the episodes' .npz files.", required=True)
_EPISODES = flags.DEFINE_integer("episodes", 300, "Episodes to record.")
_STEPS = flags.DEFINE_integer("steps", 40, "Steps per episode.")
_SIZE = flags.DEFINE_integer("image_size", 64, "Camera frames' height and width.")
_CAMERAS = flags.DEFINE_list("cameras", ["front", "side", "top"], "Cameras to record: "
                             "front, side, top, wrist.")
_SEED = flags.DEFINE_integer("seed", 0, "Episode i depends on (seed, i) only.")
flags.adopt_module_key_flags(common)

SHAPES = ("box", "ball", "cylinder")
SUBSTEPS = 20  # physics steps (240 Hz) per recorded step: 12 recorded steps per second
MAX_MOVE = 0.04  # largest commanded effector move per step and axis, metres
PUSH_HEIGHT = 0.06
WORKSPACE = (np.asarray([0.25, -0.35, PUSH_HEIGHT - 0.01]), np.asarray([0.8, 0.35, 0.4]))
# (eye, target, up) of the fixed cameras; the wrist camera follows the effector.
CAMERAS = {"front": ((1.2, 0.0, 0.6), (0.5, 0.0, 0.05), (0, 0, 1)),
           "side": ((0.5, 0.85, 0.5), (0.5, 0.0, 0.05), (0, 0, 1)),
           "top": ((0.52, 0.0, 1.15), (0.52, 0.0, 0.0), (-1, 0, 0))}
VALID_CAMERAS = (*CAMERAS, "wrist")
# The arm's joint limits (lower, upper, range) and rest pose, as pybullet's KUKA examples.
LIMITS = ([-0.967, -2.0, -2.96, 0.19, -2.96, -2.09, -3.05],
          [0.967, 2.0, 2.96, 2.29, 2.96, 2.09, 3.05], [5.8, 4, 5.8, 4, 5.8, 4, 6])
REST_POSE = [0, 0, 0, 0.5 * math.pi, 0, -0.33 * math.pi, 0]


def _pybullet():
  try:
    import pybullet  # pylint: disable=g-import-not-at-top
    import pybullet_data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.MissingExtraError(
        "Recording needs pybullet: install the extra with `pip install -e .[pybullet]` (or "
        "`pip install pybullet`).") from e
  return pybullet, pybullet_data


class Scene:
  """One pybullet world (DIRECT mode: no display) with the arm and a floor."""

  def __init__(self, size: int):
    self.p, data = _pybullet()
    self.client = self.p.connect(self.p.DIRECT)
    self.p.setAdditionalSearchPath(data.getDataPath(), physicsClientId=self.client)
    self.size = size
    self.down = self.p.getQuaternionFromEuler([0, -math.pi, 0])
    self.projection = self.p.computeProjectionMatrixFOV(55, 1.0, 0.05, 5.0)

  def reset(self, rng: np.random.Generator) -> tuple[int, int]:
    """A fresh episode: the arm at rest above the floor, one random object. Returns the
    object's shape index and body id."""
    p, c = self.p, self.client
    p.resetSimulation(physicsClientId=c)
    p.setGravity(0, 0, -9.8, physicsClientId=c)
    p.loadURDF("plane.urdf", physicsClientId=c)
    self.robot = p.loadURDF("kuka_iiwa/model.urdf", [0, 0, 0], useFixedBase=True,
                            physicsClientId=c)
    shape = int(rng.integers(len(SHAPES)))
    half = float(rng.uniform(0.04, 0.06))
    colour = [*rng.uniform(0.2, 1.0, 3), 1.0]
    kind = (p.GEOM_BOX, p.GEOM_SPHERE, p.GEOM_CYLINDER)[shape]
    geometry = ({"halfExtents": [half] * 3}, {"radius": half},
                {"radius": half, "height": 2 * half})[shape]
    collision = p.createCollisionShape(kind, physicsClientId=c, **geometry)
    visual = p.createVisualShape(kind, rgbaColor=colour, physicsClientId=c, **(
        {"radius": half, "length": 2 * half} if shape == 2 else geometry))
    where = [rng.uniform(0.45, 0.7), rng.uniform(-0.2, 0.2), half]
    self.object = p.createMultiBody(0.2, collision, visual, where, physicsClientId=c)
    # Damped, so a struck ball slows down instead of rolling out of every camera's view.
    p.changeDynamics(self.object, -1, lateralFriction=0.6, rollingFriction=0.01,
                     spinningFriction=0.01, linearDamping=0.6, angularDamping=0.6,
                     physicsClientId=c)
    self.target = np.asarray([0.45, 0.0, 0.3])
    self._move_to(self.target, reset=True)
    return shape, self.object

  def _move_to(self, target: np.ndarray, reset: bool = False) -> None:
    p, c = self.p, self.client
    for _ in range(4 if reset else 1):  # from the rest pose IK needs a few rounds
      q = p.calculateInverseKinematics(  # null-space IK: inside the joint limits
          self.robot, 6, target.tolist(), self.down, lowerLimits=LIMITS[0],
          upperLimits=LIMITS[1], jointRanges=LIMITS[2], restPoses=REST_POSE,
          maxNumIterations=50, physicsClientId=c)
      if reset:
        for j in range(7):
          p.resetJointState(self.robot, j, q[j], physicsClientId=c)
    p.setJointMotorControlArray(self.robot, list(range(7)), p.POSITION_CONTROL,
                                targetPositions=q[:7], forces=[500.0] * 7,
                                positionGains=[0.3] * 7, physicsClientId=c)

  def act(self, move: np.ndarray) -> np.ndarray:
    """Moves the effector's target by ``move``, clipped to ``MAX_MOVE`` and the workspace,
    and runs the physics for one recorded step; returns the move made (the action)."""
    target = np.clip(self.target + np.clip(move, -MAX_MOVE, MAX_MOVE), *WORKSPACE)
    made, self.target = target - self.target, target
    self._move_to(self.target)
    for _ in range(SUBSTEPS):
      self.p.stepSimulation(physicsClientId=self.client)
    return made.astype(np.float32)

  def state(self) -> dict[str, np.ndarray]:
    p, c = self.p, self.client
    joints = [s[0] for s in p.getJointStates(self.robot, list(range(7)), physicsClientId=c)]
    position, orientation = p.getBasePositionAndOrientation(self.object, physicsClientId=c)
    return {"joint_positions": np.asarray(joints, np.float32),
            "effector_position": np.asarray(p.getLinkState(self.robot, 6, physicsClientId=c)[4],
                                            np.float32),
            "object_position": np.asarray(position, np.float32),
            # q and -q are one rotation: w >= 0 keeps the label continuous for the probes.
            "object_orientation": np.asarray(orientation, np.float32) * np.sign(
                orientation[3] or 1.0)}

  def frame(self, camera: str) -> np.ndarray:
    """One (size, size, 3) uint8 frame from ``camera`` (TinyRenderer: CPU, no OpenGL)."""
    p, c = self.p, self.client
    if camera == "wrist":
      effector = np.asarray(p.getLinkState(self.robot, 6, physicsClientId=c)[4])
      eye, target, up = effector + [0.0, 0.0, -0.03], effector + [0.12, 0.0, -0.5], [1, 0, 0]
    else:
      eye, target, up = CAMERAS[camera]
    view = p.computeViewMatrix(list(eye), list(target), up, physicsClientId=c)
    _, _, rgba, _, _ = p.getCameraImage(self.size, self.size, view, self.projection,
                                        renderer=p.ER_TINY_RENDERER, physicsClientId=c)
    return np.asarray(rgba, np.uint8).reshape(self.size, self.size, 4)[..., :3]


def policy(rng: np.random.Generator, steps: int):
  """A scripted push (or, one episode in five, a random walk): ``move(effector, object, t)``
  gives the commanded effector displacement."""
  if rng.random() < 0.2:
    walk = rng.normal(0.0, 0.02, (steps, 3)) * [1, 1, 0.5]
    return lambda effector, obj, t: walk[t]
  angle = rng.uniform(0, 2 * math.pi)
  speed = rng.uniform(0.01, 0.025)
  direction = np.asarray([math.cos(angle), math.sin(angle), 0.0])
  noise = rng.normal(0.0, 0.006, (steps, 3))

  def move(effector, obj, t):
    behind = obj - 0.11 * direction
    behind[2] = PUSH_HEIGHT
    if np.linalg.norm((effector - behind)[:2]) > 0.03 and t < steps // 2:
      above = behind.copy()
      above[2] = PUSH_HEIGHT if np.linalg.norm((effector - behind)[:2]) < 0.06 else 0.2
      return above - effector + noise[t]
    return speed * direction + [0.0, 0.0, PUSH_HEIGHT - effector[2]] + noise[t]
  return move


def record_episode(scene: Scene, seed: int, index: int, steps: int,
                   cameras: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Episode ``index``: every camera's frames (T, H, W, 3), the state and the T - 1 actions."""
  rng = np.random.default_rng([seed, index])
  shape, _ = scene.reset(rng)
  for _ in range(5):  # let the object settle before the first frame
    scene.act(np.zeros(3))
  move = policy(rng, steps)
  out = {c: [] for c in cameras}
  states, actions = [], []
  for t in range(steps):
    state = scene.state()
    states.append(state)
    for c in cameras:
      out[c].append(scene.frame(c))
    if t < steps - 1:
      actions.append(scene.act(move(state["effector_position"], state["object_position"], t)))
  arrays = {c: np.stack(f) for c, f in out.items()}
  arrays.update({k: np.stack([s[k] for s in states]) for k in states[0]})
  arrays["object_shape"] = np.full(steps, shape, np.int32)
  arrays["actions"] = np.asarray(actions, np.float32)
  return arrays


def _write_episode(path: str, arrays: dict[str, np.ndarray]) -> None:
  """A file whole or absent (``files.write_atomically``); a killed run leaves no half episode."""
  files.write_atomically(path, lambda f: np.savez(f, **arrays), "wb")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cameras = tuple(_CAMERAS.value)
  unknown = [c for c in cameras if c not in VALID_CAMERAS]
  if unknown or not cameras or len(set(cameras)) != len(cameras):
    raise errors.UserError(f"--cameras must be distinct names from {', '.join(VALID_CAMERAS)}; "
                           f"got {', '.join(cameras) or 'none'}.")
  if _STEPS.value < 2 or _EPISODES.value < 1:
    raise errors.UserError(f"Need --steps >= 2 and --episodes >= 1, got {_STEPS.value} and "
                           f"{_EPISODES.value}.")
  os.makedirs(_OUT.value, exist_ok=True)
  scene = Scene(_SIZE.value)
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
  print(f"Recorded {recorded} episodes ({_EPISODES.value - recorded} already there) of "
        f"{_STEPS.value} steps, cameras {', '.join(cameras)}, into {_OUT.value} "
        f"({time.perf_counter() - start:.0f} s).")


if __name__ == "__main__":
  common.run(main)
