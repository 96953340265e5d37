"""Training metrics out: TensorBoard event files and log lines, without TensorFlow.

``MetricWriter`` writes scalars and hyperparameters through tensorboardX (the event files
``tensorboard --logdir`` reads), and logs them only at ``--verbosity=1``; ``Progress`` logs
one short line per logged step: the step, each agent's loss, steps/s and the time left.
Both speak only in process 0 of a multi-process job, so a job writes one set of
event files and one set of log lines.
"""

import math
import time
from typing import Any, Mapping

from absl import logging
import tensorboardX
from tensorboardX import summary as tbx_summary


class MetricWriter:
  """Scalars and hyperparameters to TensorBoard event files in ``logdir`` and to the log.

  With ``enabled=False`` (processes other than 0) it writes and logs nothing.
  """

  def __init__(self, logdir: str, enabled: bool = True):
    self._tb = tensorboardX.SummaryWriter(logdir) if enabled else None

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's hyperparameters, for TensorBoard's HParams tab (strings, numbers, bools)."""
    if self._tb is None:
      return
    logging.vlog(1, "Hyperparameters: %s", dict(hparams))
    for proto in tbx_summary.hparams(dict(hparams), {}):  # experiment, session start, end
      self._tb.file_writer.add_summary(proto)
    self._tb.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One value per tag at ``step``; flushed at once, so a killed run keeps what it logged."""
    if self._tb is None:
      return
    logging.vlog(1, "[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))
    for tag, value in scalars.items():
      self._tb.add_scalar(tag, float(value), step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def format_duration(seconds: float) -> str:
  """``2h 05m``, ``3m 07s`` or ``42s``: rounded up, so time left is never shown as none."""
  s = math.ceil(max(seconds, 0.0))
  if s < 3600:
    minutes, secs = divmod(s, 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
  hours, minutes = divmod(math.ceil(s / 60), 60)
  return f"{hours}h {minutes:02d}m"


class Progress:
  """Logs the step, each agent's loss, steps/s and ETA at each call, the rate measured from
  the first call onward.

  The first call (the first logged step of a run) only starts the clock: the steps before
  it include compiling the step, and a rate over them would be wrong either way.
  """

  def __init__(self, total_steps: int, enabled: bool = True, clock=time.monotonic):
    self._total = total_steps
    self._enabled = enabled
    self._clock = clock
    self._first: tuple[int, float] | None = None

  def __call__(self, step: int, losses: Mapping[str, float] | None = None) -> float | None:
    """Logs progress at ``step`` (steps done) with each agent's ``losses``; returns
    steps/s, None on the first call."""
    now = self._clock()
    if self._first is None or step <= self._first[0]:
      self._first = (step, now)
      rate = None
      line = "measuring steps/s from here"
    else:
      rate = (step - self._first[0]) / max(now - self._first[1], 1e-9)
      line = f"{rate:.3g} steps/s, ETA {format_duration((self._total - step) / rate)}"
    if self._enabled:
      loss = "".join(f" {name} {value:.4g}," for name, value in (losses or {}).items())
      logging.info("Step %d/%d (%.0f%%):%s%s %s.", step, self._total, 100 * step / self._total,
                   " loss" if loss else "", loss, line)
    return rate
