"""``python -m experiments.train``, except that one process dies in the middle of a
checkpoint save: a test's way to lose a peer exactly while the others are saving.

  SJEPA_DIE_IN_SAVE=<process>:<step> python tests/die_in_save.py <experiments.train flags>

Process ``<process>`` sends itself SIGKILL (no clean-up, as a crash or an OOM kill) as soon
as Orbax has started the save of step ``<step>`` and before it commits it, so the others
wait for it in Orbax's save barrier. The save before (Orbax waits for it) is complete.
"""

import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from sjepa_jax import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position

ENV = "SJEPA_DIE_IN_SAVE"


def dying_save(save, process: int, step: int):
  """``save``, but process ``process`` is killed once the save of ``step`` has started."""
  def wrapped(mngr, at_step, *args, **kwargs):
    save(mngr, at_step, *args, **kwargs)
    if at_step == step and jax.process_index() == process:
      os.kill(os.getpid(), signal.SIGKILL)
  return wrapped


if __name__ == "__main__":
  process, step = (int(x) for x in os.environ[ENV].split(":"))
  checkpointing.save = dying_save(checkpointing.save, process, step)
  runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
