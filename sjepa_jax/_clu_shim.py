"""A stand-in for the few clu calls train.py makes, for environments without clu.

Temporary (issue 14's worktree): clu imports TensorFlow; another branch replaces clu with
tensorboardX. Same tags (``train/agent_<view>/<metric>``), TensorBoard events via
tensorboardX, absl log lines. Drop this file and the import fallback when merging.
"""

import contextlib
import time
import types

from absl import logging


class _Writer:
  """TensorBoard event files (tensorboardX) plus log lines; log lines only if just_logging."""

  def __init__(self, logdir: str, just_logging: bool = False):
    self._tb = None
    if not just_logging:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: dict) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)

  def write_hparams(self, hparams: dict) -> None:
    logging.info("Hyperparameters: %s", hparams)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


@contextlib.contextmanager
def _ensure_flushes(writer):
  try:
    yield
  finally:
    writer.flush()


class _ReportProgress:
  """Logs steps/s every ``every_steps`` steps."""

  def __init__(self, num_train_steps: int, writer=None, every_steps: int = 100):
    self._total, self._every = num_train_steps, every_steps
    self._last = None

  def __call__(self, step: int) -> None:
    now = time.perf_counter()
    if self._last is None:
      self._last = (step, now)
      return
    if step % self._every == 0:
      s0, t0 = self._last
      logging.info("Step %d/%d, %.1f steps/s", step, self._total, (step - s0) / (now - t0))
      self._last = (step, now)


metric_writers = types.SimpleNamespace(
    create_default_writer=lambda logdir, just_logging=False: _Writer(logdir, just_logging),
    ensure_flushes=_ensure_flushes)
periodic_actions = types.SimpleNamespace(ReportProgress=_ReportProgress)
