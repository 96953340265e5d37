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
from sjepa_jax import checkpointing
from sjepa_jax import errors
from sjepa_jax import probes

_KINDS = {"map": align.LinearMap, "probe": probes.Probe}


def _kind(obj) -> str:
  for kind, cls in _KINDS.items():
    if isinstance(obj, cls):
      return kind
  raise TypeError(f"Can save an align.LinearMap or a probes.Probe, not {type(obj).__name__}.")


def save(path: str, obj: align.LinearMap | probes.Probe, **meta: Any) -> int:
  """Writes ``obj`` and its ``meta`` (JSON-serialisable) to ``path``; returns its size in
  bytes."""
  kind = _kind(obj)
  arrays = {"x_mean": obj.x_mean, "y_mean": obj.y_mean, "w": obj.w} if kind == "map" else {
      "mean": obj.mean, "std": obj.std, "w": obj.w, "b": obj.b}
  record = {"kind": kind, **({"classes": obj.classes} if kind == "probe" else {}), **meta}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  checkpointing.write_atomically(path, lambda f: np.savez(
      f, meta=np.asarray(json.dumps(record)),
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
  """The record saved beside the map or probe at ``path``: its kind and where it came from."""
  return _read(path)[0]
