"""experiments/record_mujoco.py: simulated scenes recorded as episodes that import.

Everything runs in subprocesses, as a user runs it (the script defines absl flags, which
would clash with other entry points imported into the test process). Tiny runs: 2
episodes of 5 steps at 16 x 16.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("mujoco")

from sjepa_jax import recordings  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--episodes=2", "--steps=5", "--image_size=16")
CAMERAS = ("front", "overhead", "pusher")


def _cli(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def _load(path) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """Tabletop twice (the second time with episode 0 already there, so a fresh process
  records episode 1 alone), and distractors once."""
  root = tmp_path_factory.mktemp("mujoco")
  out = {}
  for name, scene in (("tabletop", "tabletop"), ("again", "tabletop"),
                      ("distractors", "distractors")):
    os.makedirs(root / name)
    if name == "again":
      np.savez(root / name / "ep_00000.npz", placeholder=np.zeros(1))
    run = _cli("experiments.record_mujoco", f"--scene={scene}", f"--out={root / name}", *TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    out[name] = (root / name, run.stdout)
  return out


def test_tabletop_episodes_hold_three_cameras_the_state_and_the_actions(recorded):
  folder, stdout = recorded["tabletop"]
  assert sorted(os.listdir(folder)) == ["ep_00000.npz", "ep_00001.npz"]
  assert "Recorded 2 tabletop episodes (0 already there)" in stdout
  ep = _load(folder / "ep_00001.npz")
  assert {k: (v.shape, v.dtype.name) for k, v in ep.items()} == {
      **{c: ((5, 16, 16, 3), "uint8") for c in CAMERAS},
      "pusher_position": ((5, 2), "float32"), "object_a_position": ((5, 3), "float32"),
      "object_b_position": ((5, 3), "float32"), "object_a_shape": ((5,), "int32"),
      "object_b_shape": ((5,), "int32"), "actions": ((4, 2), "float32")}
  assert all(ep[c].std() > 0 for c in CAMERAS)  # not blank frames


def test_an_episode_depends_on_seed_and_index_only(recorded):
  first = _load(recorded["tabletop"][0] / "ep_00001.npz")
  folder, stdout = recorded["again"]
  assert "Recorded 1 tabletop episodes (1 already there)" in stdout
  assert list(_load(folder / "ep_00000.npz")) == ["placeholder"]  # left alone
  again = _load(folder / "ep_00001.npz")
  for k in first:
    np.testing.assert_array_equal(again[k], first[k], err_msg=k)
  other = _load(recorded["tabletop"][0] / "ep_00000.npz")
  for k in ("overhead", "pusher", "pusher_position", "object_a_position", "actions"):
    assert not np.array_equal(other[k], first[k]), k


def test_recorded_pusher_follows_the_actions(recorded):
  """The pusher's moves, projected on the commanded ones: about 0.85 of them (it lags a
  little behind its target; at least 0.38 in 80 episodes' first 4 steps)."""
  for name in ("tabletop", "distractors"):
    for e in range(2):
      ep = _load(recorded[name][0] / f"ep_{e:05d}.npz")
      moved, actions = np.diff(ep["pusher_position"], axis=0), ep["actions"]
      assert (moved * actions).sum() > 0.25 * (actions * actions).sum(), (name, e)


def test_distractors_record_their_own_positions_and_keep_moving(recorded):
  for e in range(2):
    ep = _load(recorded["distractors"][0] / f"ep_{e:05d}.npz")
    assert {"object_position", "object_shape", "distractor_ball_position",
            "distractor_slider_position"} <= set(ep)
    for k in ("distractor_ball_position", "distractor_slider_position"):
      assert np.all(np.linalg.norm(np.diff(ep[k][:, :2], axis=0), axis=1) > 1e-3), (e, k)


PLANTED = textwrap.dedent("""
  import sys
  import numpy as np
  from experiments import record_mujoco as rm
  out = {}
  for name in ("tabletop", "distractors"):
    scene = rm.Scene(name, 16)
    scene.reset(np.random.default_rng(7))
    for _ in range(5):
      scene.act(np.zeros(2))
    moves = [(0.02, 0.0)] * 4 + [(0.0, -0.02)] * 4 + [(0.0, 0.0)] * 12
    states, frames, made = [scene.state()], [scene.frame("pusher")], []
    for move in moves:
      made.append(scene.act(np.asarray(move)))
      states.append(scene.state())
      frames.append(scene.frame("pusher"))
    out[name + "/made"] = np.stack(made)
    out[name + "/pusher_frames"] = np.stack(frames)
    for k in states[0]:
      out[name + "/" + k] = np.stack([s[k] for s in states])
  np.savez(sys.argv[1], **out)
""")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  """Both scenes driven by planted actions: 4 steps of +x, 4 of -y, then 12 of nothing."""
  path = tmp_path_factory.mktemp("planted") / "planted.npz"
  run = subprocess.run([sys.executable, "-c", PLANTED, str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return _load(path)


@pytest.mark.parametrize("scene", ["tabletop", "distractors"])
def test_pusher_moves_with_planted_actions(planted, scene):
  made, position = planted[f"{scene}/made"], planted[f"{scene}/pusher_position"]
  np.testing.assert_allclose(made[:8], [[0.02, 0]] * 4 + [[0, -0.02]] * 4, atol=1e-7)
  step = np.diff(position, axis=0)
  assert np.all(step[:4, 0] > 0.005), step[:4]  # +x commanded: x grows
  assert np.all(step[4:8, 1] < -0.005), step[4:8]  # -y commanded: y falls
  assert abs(position[-1, 0] - position[0, 0] - 0.08) < 0.01  # it gets where it was sent
  assert abs(position[-1, 1] - position[0, 1] + 0.08) < 0.01


def test_pusher_camera_moves_with_the_pusher_alone(planted):
  frames = planted["tabletop/pusher_frames"].astype(int)
  changed = np.abs(np.diff(frames, axis=0)).sum(axis=(1, 2, 3))
  assert np.all(changed[:8] > 0), changed  # the pusher moved: its camera's view changed
  assert np.all(changed[-3:] == 0), changed  # at rest in a still scene: the same frame


def test_distractors_move_without_any_action(planted):
  still = slice(-6, None)  # the pusher has come to rest
  assert np.ptp(planted["distractors/pusher_position"][still], axis=0).max() < 1e-4
  for k in ("distractor_ball_position", "distractor_slider_position"):
    assert np.linalg.norm(np.ptp(planted[f"distractors/{k}"][still, :2], axis=0)) > 0.01, k
  assert np.ptp(planted["tabletop/object_a_position"][still], axis=0).max() < 1e-4


@pytest.mark.parametrize("scene,labels", [
    ("tabletop", {"object_a_position": "value", "object_a_shape": "class",
                  "object_b_position": "value", "object_b_shape": "class",
                  "pusher_position": "value"}),
    ("distractors", {"distractor_ball_position": "value",
                     "distractor_slider_position": "value", "object_position": "value",
                     "object_shape": "class", "pusher_position": "value"})])
def test_recording_imports_with_import_episodes(recorded, tmp_path, scene, labels):
  data_dir = str(tmp_path / "tfds")
  run = _cli("experiments.import_episodes", f"--npz={recorded[scene][0]}/ep_*.npz",
             f"--name=mujoco_{scene}", f"--data_dir={data_dir}", "--test_episodes=1")
  assert run.returncode == 0, run.stderr[-3000:]
  lay = recordings.layout(f"mujoco_{scene}", data_dir)
  assert lay.cameras == CAMERAS and lay.action_dim == 2
  assert lay.labels == labels and not lay.skipped
  assert lay.splits == {"train": 1, "test": 1}


@pytest.mark.parametrize("flag,message", [
    ("--cameras=overhead,wrist", "error: --cameras must be distinct names from overhead, "
     "front, pusher; got overhead, wrist."),
    ("--image_size=0", "error: --image_size must be in [1, 2048], got 0."),
    ("--steps=1", "error: Need --steps >= 2 and --episodes >= 1, got 1 and 2.")])
def test_bad_flags_give_one_line(tmp_path, flag, message):
  run = _cli("experiments.record_mujoco", f"--out={tmp_path}", "--episodes=2", flag)
  assert run.returncode == 1 and run.stderr.strip() == message, run.stderr[-2000:]
  assert not os.listdir(tmp_path)
