"""The few Orbax calls the project makes, and the safety around them.

A checkpoint holds the stacked agent state (leading agent axis) and, beside it, the run's
config and view names as JSON, so one agent can be loaded by name without the command
that trained it. Saves are asynchronous; Orbax writes into a temporary directory and
renames it when complete, so a crash never leaves a half-written checkpoint as the latest.

Around Orbax: a SHA-256 per checkpoint file, written into the checkpoint before Orbax
commits it (``checksums.json``) and verified before a restore, so a flipped bit, a
truncated or missing file is caught and named; a damaged checkpoint is set aside (moved to
``<workdir>/checkpoints_damaged/<step>``, never deleted) and training resumes from the
newest intact one; a lock, so one trainer at a time writes a workdir; and, on several
processes, save barriers that notice a process that died (``PeerLostError``).
"""

import contextlib
import fcntl
import hashlib
import json
import logging as python_logging
import os
import socket
from typing import Any, Iterator, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from sjepa_jax import errors
from sjepa_jax import files

PyTree = Any
CHECKSUMS = "checksums.json"
# Orbax's own bookkeeping, rewritten when it commits a step: not covered by the checksums.
_UNCHECKED = frozenset({CHECKSUMS, "_CHECKPOINT_METADATA", "commit_success.txt"})
_TMP = ".orbax-checkpoint-tmp"


class DamagedCheckpointError(errors.UserError):
  """A checkpoint whose files do not match the checksums recorded when it was saved."""


class WorkdirLockedError(errors.UserError, RuntimeError):
  """Another trainer holds the workdir (a RuntimeError too, as it was before UserError)."""


class PeerLostError(RuntimeError):
  """A process of a multi-process run stopped while the others waited for it at a barrier."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds ``<workdir>/.lock`` (flock) for the block: one writer per workdir.

  The kernel drops the lock when the holder dies, so a killed run never leaves it stuck.
  """
  f = open(os.path.join(workdir, ".lock"), "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "a process"
    f.close()
    raise WorkdirLockedError(
        f"Workdir {workdir!r} is in use by another trainer ({holder}); wait for it to "
        "finish or use another --workdir.") from None
  f.seek(0)
  f.truncate()
  f.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
  f.flush()
  try:
    yield
  finally:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def _files(step_dir: str) -> list[str]:
  """Paths under ``step_dir`` that the checksums cover, relative to it, sorted."""
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names
            if n not in _UNCHECKED]
  return sorted(out)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def record_checksums(step_dir: str) -> None:
  """Writes ``checksums.json``: the SHA-256 of every file of the checkpoint in ``step_dir``."""
  sums = {name: _sha256(os.path.join(step_dir, name)) for name in _files(step_dir)}
  files.write_json(sums, os.path.join(step_dir, CHECKSUMS))


def damage(step_dir: str) -> str | None:
  """What is wrong with the checkpoint in ``step_dir``, or None if its files match their
  checksums (or it has none: saved before checksums existed)."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      sums = json.load(f)
  except (OSError, ValueError):
    return f"its {CHECKSUMS} cannot be read"
  for name, digest in sorted(sums.items()):
    full = os.path.join(step_dir, name)
    if not os.path.exists(full):
      return f"file {name} is missing"
    if _sha256(full) != digest:
      return f"file {name} does not match its checksum (changed or truncated)"
  return None


def _record_in_flight(directory: str) -> None:
  """Checksums of the step Orbax is about to commit (called on Orbax's save thread, after
  the files are written and before the temporary directory is renamed)."""
  if jax.process_index() != 0:
    return
  for name in os.listdir(directory):
    if _TMP in name and name.split(".")[0].isdigit():
      record_checksums(os.path.join(directory, name))


# --- Orbax -------------------------------------------------------------------------------

def barrier_noticing_lost_peers(*, key: str, timeout_ms: int) -> None:
  """A barrier of every process that raises ``PeerLostError`` naming a process that died,
  instead of waiting for it; Orbax's save barrier (``AsyncOptions.barrier_sync_fn``).

  Orbax's own barrier waits out its whole timeout (20 minutes) for a dead process: JAX's
  coordination barrier does not fail when a recoverable task (``jax_enable_recoverability``)
  dies. The coordination service's list of live processes is itself a barrier of the live
  processes, and it drops a process once its heartbeat stops (``heartbeat_timeout_seconds``
  of ``jax.distributed.initialize``): it returns when every process has arrived, or names
  the lost ones. A live but stuck process is waited for, as by every collective.
  """
  del timeout_ms  # bounded by the heartbeat timeout instead, for a dead process
  lost = lost_processes()
  if lost:
    raise PeerLostError(
        f"process {', '.join(map(str, lost))} stopped (no heartbeat) while process "
        f"{jax.process_index()} waited for it at barrier {key!r}")


def lost_processes() -> list[int]:
  """The processes of a multi-process run that have stopped, after waiting for every live
  one to ask too (``multihost_utils.live_devices`` is a barrier of the live processes)."""
  everyone = jax.devices()
  try:
    with multihost_utils.live_devices(everyone) as alive:
      live = {d.process_index for d in alive}
  except multihost_utils.ProcessFailureError as e:  # one died since the last time we asked
    live = {d.process_index for d in everyone} - {d.process_index for d in e.failed_devices}
  return sorted({d.process_index for d in everyone} - live)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, keep: int = 3, keep_steps: Sequence[int] = ()
            ) -> ocp.CheckpointManager:
  """Checkpoint manager over ``<workdir>/checkpoints`` for training, keeping the last
  ``keep`` and every step of ``keep_steps``."""
  directory = checkpoint_dir(workdir)
  policies = [ocp.checkpoint_managers.LatestN(keep)]
  if keep_steps:
    policies.append(ocp.checkpoint_managers.CustomSteps(list(keep_steps)))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      create=True, enable_async_checkpointing=True,
      async_options=ocp.options.AsyncOptions(
          post_finalization_callback=lambda: _record_in_flight(directory),
          barrier_sync_fn=barrier_noticing_lost_peers if jax.process_count() > 1 else None))
  return ocp.CheckpointManager(directory, options=options)


class _DropRecord(python_logging.Filter):
  """Drops the log records whose format string is ``message``."""

  def __init__(self, message: str):
    super().__init__()
    self.message = message

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.msg != self.message


@contextlib.contextmanager
def _unlogged(message: str) -> Iterator[None]:
  """Drops absl log records whose format string is ``message``, for the block only."""
  drop = _DropRecord(message)
  python_logging.getLogger("absl").addFilter(drop)
  try:
    yield
  finally:
    python_logging.getLogger("absl").removeFilter(drop)


# What Orbax warns of every read-only manager it builds, whatever its options: reading
# was asked for, so it says nothing a reader can act on.
_READ_ONLY_WARNING = "Given directory is read only=%s"


def reader(workdir: str) -> ocp.CheckpointManager:
  """A read-only manager over a training run's checkpoints; creates nothing, logs nothing."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No training run in {workdir!r}: it has no checkpoints/ folder "
                            "(give the --workdir a training run wrote).")
  # save_interval_steps=0: read-only managers save nothing, and Orbax warns when it has to
  # turn the default (1) off itself.
  options = ocp.CheckpointManagerOptions(create=False, read_only=True, save_interval_steps=0)
  with _unlogged(_READ_ONLY_WARNING):
    return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: PyTree,
         config: ml_collections.ConfigDict, views: list[str], seeds: list[int],
         names: list[str], hparams: list[dict]) -> None:
  """Starts an asynchronous save of ``state`` at ``step`` with the config, and each agent's
  view, seed, name and swept values."""
  meta = {"config": config.to_dict(), "views": list(views), "seeds": list(seeds),
          "names": list(names), "hparams": list(hparams)}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)


def resolve_step(mngr: ocp.CheckpointManager, step: int | None = None) -> int:
  """``step`` if it is saved and intact, else the newest intact step; clear errors if none."""
  directory = str(mngr.directory)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {directory!r}.")
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(f"No checkpoint at step {step} in {directory!r}; saved steps: "
                              f"{', '.join(map(str, steps))}.")
    problem = damage(os.path.join(directory, str(step)))
    if problem:
      raise DamagedCheckpointError(f"Checkpoint step {step} in {directory!r} is damaged: "
                                   f"{problem}.")
    return step
  for s in reversed(steps):
    problem = damage(os.path.join(directory, str(s)))
    if problem is None:
      return s
    logging.warning("Skipping damaged checkpoint step %d in %s: %s.", s, directory, problem)
  raise DamagedCheckpointError(f"Every checkpoint in {directory!r} (steps "
                               f"{', '.join(map(str, steps))}) is damaged.")


def set_aside_damaged(workdir: str) -> list[int]:
  """Moves every damaged checkpoint to ``<workdir>/checkpoints_damaged/<step>`` (never
  deleting one) so training resumes from the newest intact one; returns their steps."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  moved = []
  for name in sorted(os.listdir(directory), key=lambda n: (len(n), n)):
    problem = damage(os.path.join(directory, name)) if name.isdigit() else None
    if problem:
      aside = os.path.join(os.path.abspath(workdir), "checkpoints_damaged", name)
      while os.path.exists(aside):
        aside += "_"
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.replace(os.path.join(directory, name), aside)
      logging.warning("Checkpoint step %s is damaged (%s); moved it to %s and resuming from "
                      "the newest intact checkpoint.", name, problem, aside)
      moved.append(int(name))
  return moved


def restore(mngr: ocp.CheckpointManager, abstract_state: PyTree,
            step: int | None = None) -> tuple[PyTree, int] | None:
  """The state at ``step`` (default: newest intact) shaped like ``abstract_state``."""
  step = resolve_step(mngr, step)
  if jax.process_count() == 1:  # whatever the devices it was saved from (several processes)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state = jax.tree.map(
        lambda x: x if getattr(x, "sharding", None) is not None else jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=device), abstract_state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"], step


def restore_params(mngr: ocp.CheckpointManager, abstract_params: PyTree,
                   step: int | None = None) -> tuple[PyTree, int]:
  """Only the ``params`` of a saved ``AgentState`` (no target, no optimiser state), at
  ``step`` (default: newest intact), on this process's first device."""
  step = resolve_step(mngr, step)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract_params)
  item = {"params": abstract}
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True)))
  return restored["state"]["params"], step


def read_meta(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """The saved config (as a dict) and views of a run, and the step they were read at
  (default: the newest intact checkpoint). Creates nothing."""
  mngr = reader(workdir)
  step = resolve_step(mngr, step)
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  mngr.close()
  return meta, step
