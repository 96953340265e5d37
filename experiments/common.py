"""Flag and logging helpers shared by the entry points."""

import json
import logging
import os

from absl import flags
import jax

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


CACHE_ENV = "SJEPA_COMPILATION_CACHE"
DEFAULT_CACHE = "~/.cache/sjepa_jax/xla"
# Compiles shorter than this are not written: the train and evaluation steps take seconds,
# while caching every sub-second helper would cost more disk reads than it saves.
_MIN_COMPILE_SECS = 0.2


def enable_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache; returns its directory (None: off).

  The directory is ``$SJEPA_COMPILATION_CACHE``, else ``$JAX_COMPILATION_CACHE_DIR``, else
  ``~/.cache/sjepa_jax/xla``; ``SJEPA_COMPILATION_CACHE=off`` turns it off. Entries are
  keyed by the program, the JAX version and the device, so a stale one is never used, and
  the directory is safe to delete at any time. Call before the first compilation.
  """
  path = os.environ.get(CACHE_ENV) or jax.config.jax_compilation_cache_dir or DEFAULT_CACHE
  if path.lower() == "off":
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  path = os.path.abspath(os.path.expanduser(path))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECS)
  return path


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
