"""The one class of error a user causes and can fix: bad input.

Below every other module (it imports nothing), so any layer can raise it.
"""


class UserError(ValueError):
  """Bad input: a flag, a config value, a view name, a path or a file that is not what it
  must be. The message names the bad value and the valid choices.

  The entry points print it as one line (``experiments.common.run``); any other exception
  is a bug and keeps its traceback. A ``ValueError``, so code that catches those still
  catches it.
  """


class MissingExtraError(UserError, ImportError):
  """An optional dependency is not installed; the message names the extra that adds it."""
