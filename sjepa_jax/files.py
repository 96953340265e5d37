"""Files written whole or not at all: a crash leaves the previous file, never half of a new
one (reports, metadata, exchanged maps and probes, checksums); and a rerun's report never
replaces an earlier one unasked."""

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


def fresh_folder(out: str, overwrite: bool) -> str:
  """``out``, or if it already holds a study's report (and not ``overwrite``), the first free
  ``<out>/study_<n>``, saying so: a rerun never silently replaces an earlier study."""
  target = out
  n = 2
  while not overwrite and os.path.exists(os.path.join(target, "report.json")):
    target = os.path.join(out, f"study_{n}")
    n += 1
  if target != out:
    print(f"{os.path.join(out, 'report.json')} holds an earlier study; writing this one to "
          f"{target} (--overwrite replaces it, --out chooses the folder).")
  os.makedirs(target, exist_ok=True)
  return target
