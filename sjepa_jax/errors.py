"""The one class of error a user causes and can fix: bad input; and where a NaN first
appears, which every finiteness check names.

Below every other module (it imports nothing of the package), so any layer can use it.
"""

import numpy as np


class UserError(ValueError):
  """Bad input: a flag, a config value, a view name, a path or a file that is not what it
  must be. The message names the bad value and the valid choices.

  The entry points print it as one line (``experiments.common.run``); any other exception
  is a bug and keeps its traceback. A ``ValueError``, so code that catches those still
  catches it.
  """


class MissingExtraError(UserError, ImportError):
  """An optional dependency is not installed; the message names the extra that adds it."""


def first_nonfinite(values: dict[str, np.ndarray]) -> tuple[str, int] | None:
  """The first (name, index along the leading axis) whose entry holds a NaN or inf: an
  agent of stacked metrics, a step of an episode. Integer arrays are finite. None when
  everything is."""
  for name, v in values.items():
    v = np.asarray(v)
    if np.issubdtype(v.dtype, np.integer) or v.dtype == np.bool_:
      continue
    bad = np.flatnonzero(~np.all(np.isfinite(v.reshape(len(v), -1)), axis=1))
    if bad.size:
      return name, int(bad[0])
  return None
