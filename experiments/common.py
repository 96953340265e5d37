"""Flag and logging helpers shared by the entry points."""

import json
import logging
import os

from absl import flags

from sjepa_jax import images
from sjepa_jax import world


def define_views_flag(name: str, default: str | None, help_text: str) -> flags.FlagHolder:
  """A comma-separated list of view names, checked at parse time (unknown, duplicate):
  world views, or region views of a dataset (whether they fit the source is checked later)."""
  holder = flags.DEFINE_string(
      name, default, f"{help_text} World views: {','.join(sorted(world.VIEWS))}; region "
      f"views of a --dataset: {','.join(images.REGIONS)}.")

  def check(value):
    if value is None:
      return True
    names = [n.strip() for n in value.split(",") if n.strip()]
    try:
      if all(n in images.REGIONS for n in names):
        images.parse_regions(names)
      else:
        world.parse_views(names)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from e
    return True

  flags.register_validator(name, check)
  return holder


class _DropLibraryInfo(logging.Filter):
  """Drops INFO (and lower) records from Orbax, which logs every step of every save."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """Keeps the run's own log lines readable: Orbax speaks only to warn."""
  logging.getLogger("absl").addFilter(_DropLibraryInfo())


def write_json(obj, path: str) -> None:
  """Writes JSON atomically: a crash leaves the previous file, never half of a new one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
