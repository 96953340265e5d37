"""Lists of names a user types (views, regions, cameras): one parser, below every layer."""

from typing import Callable, Sequence

from sjepa_jax import errors


def parse_names(names: str | Sequence[str], check: Callable[[str], object], valid: str
                ) -> list[str]:
  """A comma-separated string (or list) of view names, each passed to ``check`` (which
  raises on an unknown one), non-empty and distinct. ``valid`` lists them for errors."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  if not names:
    raise errors.UserError(f"No view given; valid views: {valid}.")
  for name in names:
    check(name)
  duplicates = sorted({n for n in names if list(names).count(n) > 1})
  if duplicates:
    raise errors.UserError(f"Duplicate views {duplicates}: each agent needs its own view.")
  return list(names)
