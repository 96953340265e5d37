"""Maps and probes as small files: what two agents exchange instead of data.

A fitted ``align.LinearMap`` (agent B's latents into agent A's space) or ``probes.Probe``
(a read-out of A's latents) is saved as one ``.npz`` file holding its arrays and a JSON
record of where it came from (which agents, dimensions, fitting pairs, held-out score), and
loaded back as the same object, ready to ``apply`` or ``predict``::

  exchange.save("forest_to_mountain.npz", linear_map, source="mountain", target="forest")
  z_in_mountain = exchange.load("forest_to_mountain.npz").apply(z_forest)

Files are written atomically (a temporary file, then a rename) and read without pickle.
"""

import json
import os
from typing import Any

import numpy as np

from sjepa_jax import align
from sjepa_jax import errors
from sjepa_jax import files
from sjepa_jax import probes

_KINDS = {"map": align.LinearMap, "probe": probes.Probe}


def _kind(obj) -> str:
  for kind, cls in _KINDS.items():
    if isinstance(obj, cls):
      return kind
  raise TypeError(f"Can save an align.LinearMap or a probes.Probe, not {type(obj).__name__}.")


# Keys of the record that say how to read the file back: not the caller's to set.
_RESERVED = ("kind", "classes")


def _plain(value: Any) -> Any:
  """NumPy and JAX numbers and arrays as JSON's numbers and lists (``json``'s ``default``)."""
  if hasattr(value, "__array__"):
    return np.asarray(value).tolist()
  raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _record(kind: str, obj: align.LinearMap | probes.Probe, meta: dict[str, Any]) -> str:
  """The file's JSON record: its kind (and a probe's ``classes``), then ``meta``."""
  taken = sorted(set(meta) & set(_RESERVED))
  if taken:
    raise errors.UserError(f"meta keys {taken} are the file's own; name them otherwise "
                           f"(reserved: {', '.join(_RESERVED)}).")
  for key, value in meta.items():
    try:
      json.dumps(value, default=_plain)
    except (TypeError, ValueError) as e:
      raise errors.UserError(f"meta {key}={value!r:.100} cannot be saved as JSON ({e}); give "
                             "numbers, strings, booleans, None, lists or dicts of them (NumPy "
                             "and JAX arrays become lists).") from e
  record = {"kind": kind, **({"classes": obj.classes} if kind == "probe" else {}), **meta}
  return json.dumps(record, default=_plain)


def save(path: str, obj: align.LinearMap | probes.Probe, **meta: Any) -> int:
  """Writes ``obj`` and what the caller says of it to ``path``; returns its size in bytes.

  ``meta`` is anything JSON can hold (NumPy and JAX numbers and arrays become numbers and
  lists): which agents a map joins, its fitting pairs, its held-out score. ``load_meta``
  gives it back, with ``kind`` (and a probe's ``classes``) beside it.
  """
  kind = _kind(obj)
  arrays = {"x_mean": obj.x_mean, "y_mean": obj.y_mean, "w": obj.w} if kind == "map" else {
      "mean": obj.mean, "std": obj.std, "w": obj.w, "b": obj.b}
  record = _record(kind, obj, meta)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.write_atomically(path, lambda f: np.savez(
      f, meta=np.asarray(record),
      **{k: np.asarray(v, np.float32) for k, v in arrays.items()}), mode="wb")
  return os.path.getsize(path)


def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No map or probe file at {path!r}.")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
  except (ValueError, KeyError, OSError) as e:
    raise errors.UserError(f"{path!r} is not a map or probe file written by exchange.save "
                           f"({e}).") from e
  if meta.get("kind") not in _KINDS:
    raise errors.UserError(f"{path!r} holds kind {meta.get('kind')!r}; valid: map, probe.")
  return meta, arrays


def load(path: str) -> align.LinearMap | probes.Probe:
  """The map or probe saved at ``path``."""
  meta, a = _read(path)
  if meta["kind"] == "map":
    return align.LinearMap(a["x_mean"], a["y_mean"], a["w"])
  return probes.Probe(a["mean"], a["std"], a["w"], a["b"], classes=bool(meta["classes"]))


def load_meta(path: str) -> dict[str, Any]:
  """The record saved beside the map or probe at ``path``: its ``kind`` (a probe's
  ``classes``) and every ``meta`` its ``save`` was given."""
  return _read(path)[0]
