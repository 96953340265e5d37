"""The few Orbax calls the project makes: a manager, save, restore, and one agent by view.

A checkpoint holds the stacked agent state (leading agent axis) and, beside it, the run's
config and view names as JSON, so one agent can be loaded by name without the command
that trained it. Saves are asynchronous; Orbax writes into a temporary directory and
renames it when complete, so a crash never leaves a half-written checkpoint as the latest.
"""

import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

PyTree = Any


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  """Checkpoint manager over ``<workdir>/checkpoints``, keeping the last ``keep``."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: PyTree,
         config: ml_collections.ConfigDict, views: list[str], seeds: list[int]) -> None:
  """Starts an asynchronous save of ``state`` at ``step`` with the config, and each agent's
  view and seed."""
  meta = {"config": config.to_dict(), "views": list(views), "seed": seeds[0],
          "seeds": list(seeds)}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state: PyTree,
            step: int | None = None) -> tuple[PyTree, int] | None:
  """The state at ``step`` (default: latest) shaped like ``abstract_state``; None if none."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"], step


def read_meta(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """The saved config (as a dict) and views of a run, and the step they were read at."""
  mngr = manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {os.path.join(workdir, 'checkpoints')!r}.")
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  mngr.close()
  return meta, step
