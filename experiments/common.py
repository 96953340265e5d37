"""Flag, error and logging helpers shared by the entry points."""

import errno
import logging
import os
import re
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from sjepa_jax import checkpointing
from sjepa_jax import errors
from sjepa_jax import files
from sjepa_jax import images
from sjepa_jax import names as names_lib
from sjepa_jax import world

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_views_flag(name: str, default: str | None, help_text: str) -> flags.FlagHolder:
  """A comma-separated list of view names, checked at parse time where it can be (empty,
  duplicate, unknown world or region names): world views, region views of a dataset, or
  camera keys of a recording (checked against it when it is read)."""
  holder = flags.DEFINE_string(
      name, default, f"{help_text} World views: {','.join(sorted(world.VIEWS))}; region "
      f"views of a --dataset: {','.join(images.REGIONS)}; a recording's cameras by key.")

  def check(value):
    if value is None:
      return True
    names = [n.strip() for n in value.split(",") if n.strip()]
    known = [n in world.VIEWS or n in images.REGIONS for n in names]
    try:
      if all(n in images.REGIONS for n in names):
        images.parse_regions(names)
      elif all(known):
        world.parse_views(names)
      else:  # camera keys: the recording names its own (data.parse_views)
        names_lib.parse_names(names, lambda n: None, "a recording's camera keys")
    except errors.UserError as e:
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


# Library warnings about choices made on purpose: tfds decoding images with PIL rather than
# OpenCV (not installed: not needed). Reading checkpoints is quiet at its source
# (checkpointing.reader).
_EXPECTED_WARNINGS = ("OpenCV is not installed",)


class _DropLibraryNoise(logging.Filter):
  """Drops INFO (and lower) records from Orbax, which logs every step of every save, and
  the library warnings that say nothing a user can act on."""

  def filter(self, record: logging.LogRecord) -> bool:
    if any(w in str(record.msg) for w in _EXPECTED_WARNINGS):
      return False
    return record.levelno > logging.INFO or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """Keeps the run's own log lines readable: Orbax speaks only to warn."""
  logging.getLogger("absl").addFilter(_DropLibraryNoise())
  # JAX's backend search says "Unable to initialize backend 'tpu'" on every CPU run.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def command_line() -> str:
  """The command that is running, as a user would type it (``python -m <module> ...``)."""
  module = os.path.relpath(os.path.abspath(sys.argv[0]), _ROOT)[:-len(".py")].replace(os.sep, ".")
  return " ".join(["python -m", module] + sys.argv[1:])


def write_json(obj, path: str) -> None:
  """Writes JSON atomically: a crash leaves the previous file, never half of a new one."""
  files.write_json(obj, path)


# --- Errors ------------------------------------------------------------------------------

_TRACEBACK = flags.DEFINE_bool("traceback", False, "On an error, print the whole traceback, "
                               "not one line (so does --verbosity=1).")
# What a user can cause and fix: ``errors.UserError`` (bad values, names and files, a
# damaged checkpoint, a workdir in use, a diverged run, an optional extra not installed), a
# path that is missing or not theirs to write, and a full disk (below). Anything else, a
# ValueError or an OSError from deeper down included, is a bug: full traceback.
USER_ERRORS = (errors.UserError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)
_MAX_LINE = 400
PEER_LOST = "A process of this multi-process run stopped or cannot be reached"


def _peer_lost(error: BaseException) -> bool:
  """Whether ``error`` says that another process of a multi-process run is gone."""
  return isinstance(error, checkpointing.PeerLostError) or any(
      k in str(error) for k in ("Gloo", "heartbeat timeout", "Barrier failed",
                                "Connection reset by peer"))


def user_error_line(error: BaseException) -> str | None:
  """The one line to show for ``error`` (or an error it was raised from), None if a bug."""
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  for e in chain:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e):
      where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
      return f"No space left on device{where}: free some space (or use another --workdir) " \
             "and rerun; the run resumes from its last checkpoint."
  for e in chain:
    if _peer_lost(e):
      first = " ".join(str(e).split())[:200]
      return (f"{PEER_LOST} ({first}); rerun every process with the same command: "
              "training resumes from the last checkpoint.")
  # Only through explicit causes (``raise ... from e``): a bug raised while a user error
  # was being handled is still a bug.
  causes = [chain[0]]
  while causes[-1].__cause__ is not None and len(causes) < len(chain):
    causes.append(causes[-1].__cause__)
  e = next((c for c in causes if isinstance(c, USER_ERRORS)), None)
  if e is None:
    return None
  text = " ".join(str(e).split()) or type(e).__name__
  if isinstance(e, OSError) and e.strerror and e.filename:
    text = f"{e.strerror}: {e.filename}"
  if len(text) > _MAX_LINE:
    text = text[:_MAX_LINE] + " ... (--traceback shows all)"
  return text


def run(main) -> None:
  """``app.run(main)``, but a user's error prints one line ``error: ...`` to stderr and
  exits 1; the traceback only with --traceback or --verbosity=1."""
  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      line = user_error_line(e)
      if line is None or _TRACEBACK.value or flags.FLAGS.verbosity >= 1:
        raise
      print(f"error: {line}", file=sys.stderr)
      if line.startswith(PEER_LOST):
        # Not sys.exit: it joins Orbax's save threads, which wait for the lost process; the
        # group's save cannot complete without it, and a rerun resumes from the last one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # pylint: disable=protected-access
      sys.exit(1)
  app.run(wrapped)


# --- Many processes ---------------------------------------------------------------------

def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None, heartbeat_timeout: int) -> None:
  """Joins a multi-process run: ``jax.distributed.initialize`` (which reads SLURM, TPU and
  cluster environments where arguments are None), gloo collectives for CPU devices."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only; harmless else
  # When a peer dies, the others raise (and print one line) instead of JAX aborting them
  # from a C++ thread with a stack dump.
  jax.config.update("jax_enable_recoverability", True)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout,
                             initialization_timeout=max(heartbeat_timeout, 60))


def finish_distributed(timeout_s: int = 300) -> None:
  """Leaves a multi-process run in order once every process is done: the others first,
  then process 0, whose coordination service must outlive them (recoverable tasks, see
  ``initialize_distributed``, do not get JAX's own shutdown barrier). A process that died
  is named within the heartbeat timeout, not waited for."""
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.distributed.is_initialized():
    return
  checkpointing.barrier_noticing_lost_peers(key="sjepa_finished", timeout_ms=timeout_s * 1000)
  if jax.process_index() == 0:
    # The others leave without asking again, so this returns once they are gone.
    deadline = time.time() + timeout_s
    while len(checkpointing.lost_processes()) < jax.process_count() - 1 and (
        time.time() < deadline):
      time.sleep(0.05)
  jax.distributed.shutdown()


# --- Help --------------------------------------------------------------------------------

_FIELD = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(.+?)\s*(?:#\s*(.*))?$")


def config_fields_help(path: str) -> str:
  """Every field a config file sets, its value and the comment that explains it, one a
  line; a comment block above a group of fields is shown before them."""
  lines, pending = [], []
  with open(path) as f:
    for raw in f:
      stripped = raw.strip()
      if stripped.startswith("#"):
        pending.append(stripped.lstrip("# "))
        continue
      m = _FIELD.match(raw)
      if not m or m.group(2).startswith("ml_collections.ConfigDict"):
        pending = [] if not stripped.startswith("c.") else pending
        continue
      if pending:
        lines.append("  (" + " ".join(pending) + ")")
        pending = []
      lines.append(f"  {m.group(1)} = {m.group(2)}" + (f"  ({m.group(3)})" if m.group(3) else ""))
  return "\n".join(lines)


def define_config_flag(default: str, help_text: str):
  """``--config``: a ConfigDict file, locked; its help lists every field of ``default``."""
  fields = config_fields_help(os.path.join(_ROOT, default))
  return config_flags.DEFINE_config_file(
      "config", default, f"{help_text} Override a field with --config.<field>=<value>; "
      f"fields of {default}:\n{fields}", lock_config=True)
