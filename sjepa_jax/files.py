"""Files written whole or not at all: a crash leaves the previous file, never half of a new
one (reports, metadata, exchanged maps and probes, checksums)."""

import json
import os


def write_atomically(path: str, write, mode: str = "w") -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it to ``path``:
  a crash leaves the previous file, never half of a new one."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(obj, path: str) -> None:
  """Writes JSON atomically (``write_atomically``)."""
  write_atomically(path, lambda f: json.dump(obj, f, indent=1))
