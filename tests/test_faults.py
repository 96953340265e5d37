"""Faults and bad input (issue 14): each test first reproduced the fault on the old code."""

import ast
import errno
import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from experiments import common
from sjepa_jax import checkpointing
from sjepa_jax import errors
from sjepa_jax import files
from sjepa_jax import images
from sjepa_jax import loading
from sjepa_jax import summaries
from sjepa_jax import train
from tests.conftest import tiny_config, init_agents
from tests.test_train import _TINY_FLAGS  # the same tiny run, flag by flag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = ["mountain", "forest"]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def _state(config, workdir, step=None):
  abstract = jax.eval_shape(lambda: init_agents(config, VIEWS, 0))
  mngr = checkpointing.reader(workdir)
  state, step = checkpointing.restore(mngr, abstract, step)
  mngr.close()
  return state, step


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny two-agent run with checkpoints at steps 2 and 4 (copy it before changing it)."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(tiny_config(), workdir, VIEWS)
  return workdir


# --- 1, 4: config values ----------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("num_train_steps", -5), ("data.batch_size", 0), ("log_every", 0),
    ("checkpoint_every", 0), ("keep_checkpoints", 0), ("keep_checkpoints", -1),
    ("optim.lr", 0.0), ("objective.ema_decay", 1.5), ("model.patch", 5)])
def test_bad_config_values_are_refused_before_anything_is_written(field, value, tmp_path):
  config = tiny_config()
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=rf"config\.{field.replace('.', '[.]')}"):
    train.train_and_evaluate(config, str(tmp_path / "run"), VIEWS)
  assert not (tmp_path / "run").exists()


# --- 2: one trainer per workdir ---------------------------------------------------------

_HOLD = "import fcntl,sys,time; f=open(sys.argv[1],'a+'); fcntl.flock(f, fcntl.LOCK_EX); " \
        "f.write('PID %d on test' % __import__('os').getpid()); f.flush(); print('held', " \
        "flush=True); time.sleep(600)"


def test_a_second_trainer_is_refused_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(workdir / ".lock")],
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  out = _cli("experiments.train", "--views=mountain,forest", f"--workdir={workdir}",
             *_TINY_FLAGS)
  assert out.returncode == 1
  assert out.stderr.strip() == (f"error: Workdir {str(workdir)!r} is in use by another trainer "
                                f"(PID {holder.pid} on test); wait for it to finish or use "
                                "another --workdir."), out.stderr[-2000:]
  assert not (workdir / "checkpoints").exists()
  holder.kill()
  holder.wait()
  with checkpointing.workdir_lock(str(workdir)):  # the kernel dropped the dead one's lock
    with pytest.raises(checkpointing.WorkdirLockedError, match=f"PID {os.getpid()}"):
      train.train_and_evaluate(tiny_config(), str(workdir), VIEWS)


# --- 3: damaged checkpoints -------------------------------------------------------------

def _largest_file(step_dir):
  files = [os.path.join(r, n) for r, _, ns in os.walk(step_dir) for n in ns
           if n not in ("checksums.json", "_CHECKPOINT_METADATA", "commit_success.txt")]
  return max(files, key=os.path.getsize)


def _flip_bit(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x10]))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.slow
@pytest.mark.parametrize("harm", [_flip_bit, _truncate, os.remove])
def test_damage_to_any_checkpoint_file_is_detected_and_named(harm, trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  step_dir = os.path.join(workdir, "checkpoints", "4")
  assert checkpointing.damage(step_dir) is None
  victim = _largest_file(step_dir)
  harm(victim)
  problem = checkpointing.damage(step_dir)
  assert os.path.relpath(victim, step_dir) in problem
  # Read-only tools skip it (newest intact: 2) or, asked for it, name it and touch nothing.
  assert checkpointing.read_meta(workdir)[1] == 2
  with pytest.raises(checkpointing.DamagedCheckpointError, match="step 4 .* is damaged: file"):
    loading.load_agent(workdir, "forest", step=4)
  assert os.path.isdir(step_dir)


@pytest.mark.slow
def test_training_resumes_from_the_newest_intact_checkpoint_and_keeps_the_damaged_one(
    trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  _flip_bit(_largest_file(os.path.join(workdir, "checkpoints", "4")))
  config = tiny_config()
  train.train_and_evaluate(config, workdir, VIEWS)  # resumes from the intact step 2
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "4"))
  assert checkpointing.damage(os.path.join(workdir, "checkpoints_damaged", "4"))
  assert sorted(checkpointing.reader(workdir).all_steps()) == [2, 4]
  # Step 4 trained again from step 2 equals the undamaged original.
  chex.assert_trees_all_equal(_state(config, workdir)[0], _state(config, trained)[0])


# --- 5, 6, 7: entry points --------------------------------------------------------------

def test_user_errors_are_one_line_and_bugs_keep_their_traceback():
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/30")
    except OSError as e:
      raise RuntimeError("Orbax save failed") from e
  except RuntimeError as e:
    line = common.user_error_line(e)
  assert line.startswith("No space left on device writing /w/checkpoints/30: free some space")
  assert common.user_error_line(errors.UserError("bad\n  value")) == "bad value"
  assert common.user_error_line(FileNotFoundError(2, "No such file", "/x")) == \
      "No such file: /x"
  assert common.user_error_line(KeyError("bug")) is None
  # Only UserError is bad input: a ValueError or OSError from deeper down is a bug.
  assert common.user_error_line(ValueError("math domain error")) is None
  assert common.user_error_line(OSError(errno.EIO, "Input/output error")) is None
  for user_error in (checkpointing.WorkdirLockedError("in use"), errors.MissingExtraError("x"),
                     train.NonFiniteError("NaN"), checkpointing.DamagedCheckpointError("bad")):
    assert common.user_error_line(user_error) is not None, user_error
  try:
    raise RuntimeError("wrapped") from errors.UserError("the cause")
  except RuntimeError as e:
    assert common.user_error_line(e) == "the cause"  # raised from it: the user's error
  try:
    try:
      raise errors.UserError("being handled")
    except errors.UserError:
      raise KeyError("a bug in the handler")  # pylint: disable=raise-missing-from
  except KeyError as e:
    assert common.user_error_line(e) is None


_MAIN = """
import sys
from experiments import common
from sjepa_jax import errors

def main(argv):
  raise {"user": errors.UserError("Unknown view 'lake'; valid views: forest."),
         "bug": KeyError("no such field")}[argv[1]]

common.run(main)
"""


@pytest.mark.parametrize("kind", ["user", "bug"])
def test_the_entry_point_handler_prints_a_user_error_in_one_line_and_a_bug_in_full(kind):
  out = subprocess.run([sys.executable, "-c", _MAIN, kind], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  if kind == "user":
    assert out.stderr == "error: Unknown view 'lake'; valid views: forest.\n"
  else:
    assert "Traceback (most recent call last)" in out.stderr, out.stderr[-2000:]
    assert out.stderr.rstrip().splitlines()[-1] == "KeyError: 'no such field'"


def test_entry_points_print_one_clean_line_and_exit_nonzero(tmp_path):
  out = _cli("experiments.train", "--views=mountain,forest", f"--workdir={tmp_path / 'r'}",
             *_TINY_FLAGS, "--config.log_every=0")
  assert out.returncode == 1
  assert out.stderr == "error: config.log_every must be >= 1, got 0.\n"
  out = _cli("experiments.train", "--views=mountain,forest", f"--workdir={tmp_path / 'r'}",
             *_TINY_FLAGS, "--config.log_every=0", "--traceback")
  assert out.returncode == 1 and "Traceback" in out.stderr
  missing = tmp_path / "nonexistent"
  for args in (["experiments.align_and_probe", f"--workdir={missing}"],
               ["experiments.migrate", f"--teacher_workdir={missing}", "--student_view=forest",
                "--target_acc=0.6"]):
    out = _cli(*args)
    assert out.returncode == 1
    assert out.stderr == (f"error: No training run in {str(missing)!r}: it has no checkpoints/ "
                          "folder (give the --workdir a training run wrote).\n"), out.stderr
    assert not missing.exists()  # read-only tools create nothing


@pytest.mark.slow
def test_a_missing_step_lists_the_saved_ones(trained):
  with pytest.raises(FileNotFoundError, match="No checkpoint at step 45 .*saved steps: 2, 4"):
    loading.load_agent(trained, "forest", step=45)


def test_help_shows_the_main_flags_and_the_config_fields():
  train_help = _cli("experiments.train", "--help").stdout
  for text in ("--views:", "--view:", "--workdir:", "--[no]traceback:", "num_train_steps = 1500",
               "keep_checkpoints = 3", "model.encoder"):
    assert text in train_help, text
  migrate_help = _cli("experiments.migrate", "--help").stdout
  for text in ("--student_view:", "--teacher_workdir:", "migrate.weight = 1.0"):
    assert text in migrate_help, text


# --- 8, 12: import_images -----------------------------------------------------------------

def _npz(path, images_, labels):
  np.savez(path, images=images_, labels=labels)
  return str(path)


def test_import_images_refuses_bad_names_and_inputs_before_writing(tmp_path):
  rng = np.random.default_rng(0)
  good = _npz(tmp_path / "good.npz", rng.integers(0, 256, (12, 8, 8), np.uint8),
              np.arange(12) % 3)
  cases = {
      "--name=mnist": (good, "already registered by tensorflow-datasets"),
      "--name=Bad-Name": (good, "cannot be read back by tfds"),
      "--name=five": (_npz(tmp_path / "five.npz", rng.integers(0, 256, (12, 8, 8, 5), np.uint8),
                           np.arange(12)), "1 or 3 channels; got 5"),
      "--name=empty": (_npz(tmp_path / "empty.npz", np.zeros((0, 8, 8), np.uint8),
                            np.zeros((0,), np.int64)), "The arrays are empty"),
      "--name=absent": (str(tmp_path / "absent.npz"), "No such file"),
      "--name=notnpz": (str(tmp_path / "good.npz.txt"), "is not an .npz file"),
  }
  (tmp_path / "good.npz.txt").write_text("hello")
  for name_flag, (npz, message) in cases.items():
    out = _cli("experiments.import_images", f"--npz={npz}", name_flag,
               f"--data_dir={tmp_path / 'tfds'}", "--test_size=4")
    assert out.returncode == 1, name_flag
    assert out.stderr.startswith("error: ") and message in out.stderr, (name_flag, out.stderr)
    assert out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "tfds").exists(), name_flag  # nothing half-written


def test_import_drops_test_images_identical_to_train_images_and_accepts_nx1_labels(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (40, 8, 8), np.uint8)
  pixels[30:] = pixels[:10]  # 10 exact duplicates
  labels = (np.arange(40) % 4)[:, None]  # (N, 1)
  splits, dropped = images.split_for_import(pixels, labels, 20, seed=0)
  train_set = {p.tobytes() for p in splits["train"][0]}
  assert not any(p.tobytes() in train_set for p in splits["test"][0])
  assert 0 < dropped <= 10 and len(splits["test"][0]) == 20 - dropped
  pytest.importorskip("tensorflow")  # tfds writes datasets through it
  out = _cli("experiments.import_images", f"--npz={_npz(tmp_path / 'd.npz', pixels, labels)}",
             "--name=dups", f"--data_dir={tmp_path / 'tfds'}", "--test_size=20")
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"dropped {dropped} test images identical to a train image" in out.stdout


# --- 10, 11: reports ----------------------------------------------------------------------

def test_write_json_never_leaves_half_a_file(tmp_path):
  path = str(tmp_path / "probe.json")
  files.write_json({"a": 1}, path)
  with pytest.raises(TypeError):
    files.write_json({"a": object()}, path)  # fails halfway through
  assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["probe.json"]


def _pair(src, tgt, same_view=None):
  controls = {"random_init": {"r2_lstsq": 0.1, "r2_ridge": 0.1, "r2_procrustes": 0.1,
                              "transfer_acc": 0.2}}
  if same_view is not None:
    controls["same_view"] = {"agents": [src, f"{src}_seed1"], "r2_ridge": same_view,
                             "r2_lstsq": same_view,
                             "r2_procrustes": same_view, "transfer_acc": same_view}
  return {"source": src, "target": tgt, "r2_lstsq": 0.5, "r2_ridge": 0.5,
          "r2_procrustes": 0.5, "isometry_gap": 0.1, "cka_unbiased": 0.5, "native_acc": 0.8,
          "transfer_acc": 0.6, "controls": controls}


def test_a_control_present_for_one_view_only_says_so_and_is_not_counted_per_pair():
  # Only mountain has a second seed: its ceiling is repeated in both pairs it is the source of.
  pairs = [_pair("mountain", "forest", 0.9), _pair("mountain", "drone", 0.9),
           _pair("forest", "mountain"), _pair("drone", "mountain")]
  s = summaries.summarise(pairs, chance_acc=0.1)
  assert s["controls"]["same_view"]["pairs"] == 1  # one view, not two pairs
  assert s["controls"]["random_init"]["pairs"] == 4
  assert s["controls"]["same_view"]["r2_ridge"] == pytest.approx(0.9)


def test_a_rerun_study_does_not_overwrite_the_previous_report(tmp_path, capsys):
  out = str(tmp_path)
  assert files.fresh_folder(out, overwrite=False) == out
  (tmp_path / "report.json").write_text("{}")
  assert files.fresh_folder(out, overwrite=False) == str(tmp_path / "study_2")
  assert "holds an earlier study; writing this one to" in capsys.readouterr().out
  (tmp_path / "study_2" / "report.json").write_text("{}")
  assert files.fresh_folder(out, overwrite=False) == str(tmp_path / "study_3")
  assert files.fresh_folder(out, overwrite=True) == out


def test_the_entry_points_the_tests_import_can_share_one_process():
  """pytest's workers each run many test files, so the absl flags of every entry point a test
  imports must not clash (two definitions of one flag name fail at import)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  mains = set()
  for name in os.listdir(os.path.join(root, "tests")):
    if name.endswith(".py"):
      with open(os.path.join(root, "tests", name)) as f:
        mains |= {(node.module, alias.name) for node in ast.walk(ast.parse(f.read()))
                  if isinstance(node, ast.ImportFrom) and node.module in ("experiments",
                                                                          "benchmarks")
                  for alias in node.names}
  assert ("benchmarks", "sources") in mains
  code = "import importlib\n" + "".join(
      f"try:\n  importlib.import_module('{p}.{m}')\nexcept ImportError:\n  pass\n"
      for p, m in sorted(mains))  # an optional dependency (torch) may be missing
  run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
