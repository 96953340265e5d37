"""Training on two processes (JAX's multi-controller runtime, gloo collectives on CPU)
equals one process, resumes from the group's checkpoint, and survives a killed peer."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sjepa_jax import checkpointing
from sjepa_jax import loading
from tests.conftest import init_agents
from tests import die_in_save as die_in_save_lib

pytestmark = pytest.mark.slow  # several processes under jax.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
# eps = 1e-3: Adam does not blow float noise in near-zero gradients up to lr-sized steps,
# so differently batched programs (one agent per device, or three on one) agree closely.
FLAGS = [
    "--config=experiments/configs/smoke.py", f"--config.num_train_steps={STEPS}",
    "--config.log_every=2", "--config.checkpoint_every=2", "--config.data.image_size=16",
    "--config.model.patch=4", "--config.data.batch_size=8", "--config.eval.probe_train=48",
    "--config.eval.probe_test=16", "--config.eval.alignment_pairs=16",
    "--config.eval.probe_steps=10", "--config.optim.eps=1e-3"]
ATOL = 1e-4  # float reordering between one process and two, after 4 steps
HEARTBEAT_S = 10
KILLED_PEER_TIMEOUT_S = 60  # HEARTBEAT_S plus slack for a loaded machine


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, views, tmp_path, tag, die_in_save=None):
  """Both processes of a run; ``die_in_save=(process, step)``: that one dies in that save."""
  port = _free_port()
  program, env = ["-m", "experiments.train"], None
  if die_in_save is not None:
    program = [os.path.join(ROOT, "tests", "die_in_save.py")]
    env = {**os.environ, die_in_save_lib.ENV: "%d:%d" % die_in_save}
  procs = []
  for i in range(2):
    out = open(tmp_path / f"{tag}.p{i}.out", "w")
    err = open(tmp_path / f"{tag}.p{i}.err", "w")
    procs.append(subprocess.Popen(
        [sys.executable, *program, f"--views={views}", f"--workdir={workdir}",
         *FLAGS, "--multihost", f"--coordinator_address=localhost:{port}",
         "--num_processes=2", f"--process_id={i}", f"--heartbeat_timeout={HEARTBEAT_S}"],
        cwd=ROOT, stdout=out, stderr=err, env=env))
  return procs


def _finish(procs, tmp_path, tag, timeout=900):
  for p in procs:
    p.wait(timeout=timeout)
  read = lambda i, s: (tmp_path / f"{tag}.p{i}.{s}").read_text()
  for i, p in enumerate(procs):
    assert p.returncode == 0, read(i, "err")[-3000:]
  return [read(i, "out") for i in range(2)], [read(i, "err") for i in range(2)]


def _params(workdir):
  meta, step = checkpointing.read_meta(workdir)
  config = loading.config_from_meta(meta)
  abstract = jax.eval_shape(lambda: init_agents(config, meta["views"], meta["seeds"]))
  state, step = checkpointing.restore(checkpointing.reader(workdir), abstract)
  assert step == STEPS
  return {v: jax.tree.map(lambda x: np.asarray(x[i]), state.params)
          for i, v in enumerate(meta["views"])}


def _max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """The same command on one process (one device): the reference agents."""
  workdir = str(tmp_path_factory.mktemp("single") / "run")
  out = subprocess.run([sys.executable, "-m", "experiments.train",
                        "--views=mountain,forest", f"--workdir={workdir}", *FLAGS],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return _params(workdir)


def test_two_processes_equal_one_survive_a_killed_peer_and_resume(single, tmp_path):
  workdir = str(tmp_path / "run")
  # Agents sharded: one per process. Process 1 dies inside the save of the last step, once
  # Orbax has started it: process 0 is left in Orbax's save barrier, waiting for it.
  procs = _launch(workdir, "mountain,forest", tmp_path, "killed", die_in_save=(1, STEPS))
  try:
    procs[1].wait(timeout=900)
    killed_at = time.time()
    procs[0].wait(timeout=KILLED_PEER_TIMEOUT_S)
    exited_s = time.time() - killed_at
  finally:
    for p in procs:
      p.kill()  # never leave a hung survivor behind the suite
  assert procs[1].returncode == -signal.SIGKILL, (tmp_path / "killed.p1.err").read_text()
  err = (tmp_path / "killed.p0.err").read_text()
  assert procs[0].returncode == 1, err[-3000:]
  assert err.splitlines()[-1].startswith(
      "error: A process of this multi-process run stopped or cannot be reached"), err[-3000:]
  print(f"survivor exited {exited_s:.1f} s after its peer was killed")
  last = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())

  # The same command again on both: both resume from the group's checkpoint and finish.
  outs, errs = _finish(_launch(workdir, "mountain,forest", tmp_path, "resumed"), tmp_path,
                       "resumed")
  for e in errs:
    assert f"Resumed from step {last}" in e
  assert "Probes on frozen latents" in outs[0] and "Probes" not in outs[1]  # process 0 reports
  assert os.path.exists(os.path.join(workdir, "probe.json"))
  step_dir = os.path.join(workdir, "checkpoints", str(STEPS))
  assert checkpointing.damage(step_dir) is None
  assert any("process_1" in f for f in open(os.path.join(step_dir, "checksums.json")).read()
             .split('"'))  # one checkpoint for the group, both processes' shards covered

  # Loads on one process, as align_and_probe and migrate do, and equals the one-process run.
  two = _params(workdir)
  for v in ("mountain", "forest"):
    d = _max_difference(two[v], single[v])
    print(f"{v}: two processes vs one, max |difference| {d:.2e}")
    assert d < ATOL
    np.testing.assert_array_equal(
        np.asarray(loading.load_agent(workdir, v).params["encoder"]["Dense_0"]["kernel"]),
        two[v]["encoder"]["Dense_0"]["kernel"])
  assert [a.view for a in loading.load_agents(workdir)] == ["mountain", "forest"]


def test_two_processes_split_the_batch_when_agents_do_not_divide(single, tmp_path):
  # One agent on two devices: its batch is split; an agent's keys depend only on the seed and
  # its view, so it is the one-process run's forest agent.
  workdir = str(tmp_path / "run")
  _finish(_launch(workdir, "forest", tmp_path, "batch"), tmp_path, "batch")
  d = _max_difference(_params(workdir)["forest"], single["forest"])
  print(f"forest: two processes (batch split) vs one, max |difference| {d:.2e}")
  assert d < ATOL
