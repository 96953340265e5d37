"""Labelled image datasets read through tensorflow-datasets, each agent seeing one region.

An agent's view of an image is a fixed region of it (``REGIONS``): ``left``, ``right``,
``top`` and ``bottom`` span the image's full height or width and ``size`` of the other side;
``center`` is a centred box of ``size`` of both sides. Regions are rounded to whole pixels,
and the overlap of two regions is the fraction of A's pixels that B also sees.

An agent's training samples are ``frames`` sub-crops of its own region (side ``s`` times the
region's, ``s`` uniform in ``[min_crop, 1]``, anywhere inside the region), each resized to
``size x size`` (bilinear, without antialiasing: choose ``size`` near the region's size in
pixels; a non-square region is stretched to the square). The action from crop t to crop
t + 1 is ``(dy, dx, log s_{t+1}/s_t)``: their centres' offset in units of the region's
height and width, and their log scale ratio. Probes and alignment see the whole region.
Everything after loading runs on the device, inside the jitted step, like the world's
renderer.

Nothing ever downloads: datasets are read from a local data directory. ``store`` writes
arrays as such a dataset (``python -m experiments.import_images``).

Shapes: N = images, H x W = image, A = agents (regions), B = batch, L = frames.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from sjepa_jax import errors
from sjepa_jax import names as names_lib
from sjepa_jax.tfds_local import tfds
from sjepa_jax import tfds_local

if TYPE_CHECKING:
  import tensorflow_datasets

REGIONS = ("left", "right", "top", "bottom", "center")
ACTION_DIM = 3  # (dy, dx, log scale ratio)


class Region(NamedTuple):
  """A box in fractions of the image's height and width (leaves gain an axis when stacked)."""
  top: np.ndarray
  left: np.ndarray
  height: np.ndarray
  width: np.ndarray


def get_region(name: str, size: float) -> Region:
  """The region called ``name`` covering ``size`` (in (0, 1]) of the image's side."""
  if name not in REGIONS:
    raise errors.UserError(f"Unknown region view {name!r}; valid region views: "
                           f"{', '.join(REGIONS)}.")
  if not 0 < size <= 1:
    raise errors.UserError(f"data.region_size must be in (0, 1], got {size}.")
  box = {"left": (0, 0, 1, size), "right": (0, 1 - size, 1, size),
         "top": (0, 0, size, 1), "bottom": (1 - size, 0, size, 1),
         "center": ((1 - size) / 2, (1 - size) / 2, size, size)}[name]
  return Region(*(np.float32(x) for x in box))


def parse_regions(names: str | Sequence[str]) -> list[str]:
  """Checks a comma-separated string (or list) of region names: known and distinct."""
  return names_lib.parse_names(names, lambda n: get_region(n, 1.0), ", ".join(REGIONS))


def stack_regions(names: Sequence[str], size: float) -> Region:
  """The named regions stacked along a leading axis (for ``jax.vmap`` over agents)."""
  regions = [get_region(n, size) for n in parse_regions(names)]
  return jax.tree.map(lambda *leaves: np.stack(leaves), *regions)


def pixel_box(region: Region, height: int, width: int) -> tuple:
  """(top, left, height, width) of the region in whole pixels; works traced."""
  top = jnp.round(region.top * height)
  left = jnp.round(region.left * width)
  return (top, left, jnp.round((region.top + region.height) * height) - top,
          jnp.round((region.left + region.width) * width) - left)


def overlap_matrix(names: Sequence[str], size: float, height: int, width: int) -> np.ndarray:
  """(A, A): entry (a, b) is the fraction of region a's pixels that region b also covers."""
  boxes = [np.asarray(pixel_box(get_region(n, size), height, width)) for n in names]
  out = np.zeros((len(boxes), len(boxes)))
  for a, (ta, la, ha, wa) in enumerate(boxes):
    for b, (tb, lb, hb, wb) in enumerate(boxes):
      rows = max(0.0, min(ta + ha, tb + hb) - max(ta, tb))
      cols = max(0.0, min(la + wa, lb + wb) - max(la, lb))
      out[a, b] = rows * cols / (ha * wa)
  return out


# --- On the device -----------------------------------------------------------------------

def crop(image_HxWxC: jax.Array, top, left, height, width, size: int) -> jax.Array:
  """The box (in continuous pixels) resampled bilinearly to (size, size, C) in [0, 1]."""
  rows = top + (jnp.arange(size) + 0.5) * height / size - 0.5  # output pixel centres
  cols = left + (jnp.arange(size) + 0.5) * width / size - 0.5
  grid = jnp.meshgrid(rows, cols, indexing="ij")
  image = image_HxWxC.astype(jnp.float32) / 255.0
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, grid, order=1,
                                                             mode="nearest")
  return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


def region_obs(pixels_NxHxWxC: jax.Array, region: Region, size: int) -> jax.Array:
  """Every image's whole region at (size, size): (N, size, size, C), what probes see."""
  box = pixel_box(region, *pixels_NxHxWxC.shape[1:3])
  return jax.vmap(lambda im: crop(im, *box, size))(pixels_NxHxWxC)


def region_batch(key: jax.Array, pixels_NxHxWxC: jax.Array, region: Region, batch: int,
                 frames: int, size: int, min_crop: float):
  """``batch`` random images, each as ``frames`` sub-crops of the region, with the actions
  between consecutive crops: obs (B, L, size, size, C), actions (B, L - 1, 3)."""
  k_image, k_scale, k_where = jax.random.split(key, 3)
  top, left, height, width = pixel_box(region, *pixels_NxHxWxC.shape[1:3])
  index = jax.random.randint(k_image, (batch,), 0, pixels_NxHxWxC.shape[0])
  scale = jax.random.uniform(k_scale, (batch, frames), minval=min_crop, maxval=1.0)
  where = jax.random.uniform(k_where, (batch, frames, 2))  # where the crop sits: 0 to 1
  crop_h, crop_w = scale * height, scale * width
  y0 = top + where[..., 0] * (height - crop_h)
  x0 = left + where[..., 1] * (width - crop_w)

  def one(i, y, x, h, w):
    return jax.vmap(lambda *b: crop(pixels_NxHxWxC[i], *b, size))(y, x, h, w)
  obs = jax.vmap(one)(index, y0, x0, crop_h, crop_w)
  centre_y, centre_x = (y0 + crop_h / 2) / height, (x0 + crop_w / 2) / width
  actions = jnp.stack([jnp.diff(centre_y, axis=1), jnp.diff(centre_x, axis=1),
                       jnp.diff(jnp.log(scale), axis=1)], -1)
  return obs, actions


# --- Reading and writing local datasets --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Images:
  """One split of a labelled image dataset, in memory."""
  pixels: np.ndarray  # (N, H, W, 3) uint8
  labels: np.ndarray  # (N,) int32
  num_classes: int


def _features(b: tensorflow_datasets.core.DatasetBuilder) -> tuple[str, str, int]:
  """(image key, label key, number of classes): the Image and ClassLabel features, by the
  usual names ``image`` and ``label`` when several exist."""
  feats = b.info.features
  keys = {}
  for kind, cls in (("image", tfds.features.Image), ("label", tfds.features.ClassLabel)):
    found = [k for k, f in feats.items() if isinstance(f, cls)]
    if not found:
      raise errors.UserError(f"Dataset {b.name!r} needs an {cls.__name__} feature; it has "
                             f"{dict((k, type(f).__name__) for k, f in feats.items())}.")
    if len(found) > 1 and kind not in found:
      raise errors.UserError(f"Dataset {b.name!r} has several {cls.__name__} features {found} and "
                             f"none is called {kind!r}; which to use is ambiguous.")
    keys[kind] = kind if kind in found else found[0]
  return keys["image"], keys["label"], feats[keys["label"]].num_classes


def load(name: str, data_dir: str, split: str) -> Images:
  """One split of a local tfds dataset in memory (``download=False``, always).

  Images must share one size; greyscale ones are repeated to three channels.
  """
  b = tfds_local.builder(name, data_dir)
  if split not in b.info.splits:
    raise errors.UserError(f"Dataset {name!r} has no split {split!r}; valid splits: "
                           f"{', '.join(sorted(b.info.splits))}.")
  image_key, label_key, num_classes = _features(b)
  shape = b.info.features[image_key].shape
  if None in shape:
    raise errors.UserError(f"Dataset {name!r} has images of varying size {shape}; region views "
                           "need one size. Resize them first (e.g. into arrays for "
                           "`python -m experiments.import_images`).")
  pixels, labels = _read_split(b, split, image_key, label_key)
  if pixels.shape[-1] == 1:
    pixels = np.repeat(pixels, 3, axis=-1)
  if pixels.shape[-1] != 3:
    raise errors.UserError(f"Dataset {name!r} has {pixels.shape[-1]}-channel images; agents read "
                           "RGB or greyscale (1 or 3 channels).")
  logging.info("Loaded %s[%s]: %d images of %s, %d classes.", name, split, len(pixels),
               pixels.shape[1:], num_classes)
  return Images(pixels, labels, num_classes)


def _read_split(b: tensorflow_datasets.core.DatasetBuilder, split: str, image_key: str,
                label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """(pixels, int32 labels) of one split: array_record files are read directly, without
  TensorFlow; tfrecord files (what `tfds build` writes by default) need tf.data."""
  if tfds_local.is_array_record(b):
    source = b.as_data_source(split=split)
    examples = source.__getitems__(range(len(source)))
    pixels = np.stack([e[image_key] for e in examples])
    return pixels, np.asarray([e[label_key] for e in examples], np.int32)
  data = tfds_local.as_numpy(b, split, "experiments.import_images", batch_size=-1)
  return data[image_key], data[label_key].astype(np.int32)


def store(name: str, data_dir: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
          num_classes: int | None = None, version: str = "1.0.0") -> str:
  """Writes labelled image arrays as a local tfds dataset readable by ``load`` and by
  ``tfds.builder(name, data_dir=data_dir)``; returns its directory.

  ``splits`` maps a split name to (images (N, H, W) or (N, H, W, C) uint8, labels (N,)).
  tfds writes into a temporary directory and renames it when complete.
  """
  first = next(iter(splits.values()))[0]
  channels = 1 if first.ndim == 3 else first.shape[-1]
  if num_classes is None:
    num_classes = int(max(np.max(labels) for _, labels in splits.values())) + 1
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=first.shape[1:3] + (channels,)),
      "label": tfds.features.ClassLabel(num_classes=num_classes)})

  def examples(pixels, labels):
    pixels = pixels.reshape(pixels.shape[:3] + (channels,)).astype(np.uint8)
    for i in range(len(pixels)):  # PIL images: tfds encodes arrays with TensorFlow
      image = pixels[i, ..., 0] if channels == 1 else pixels[i]
      yield i, {"image": PIL.Image.fromarray(image), "label": int(labels[i])}
  return tfds_local.write_examples(name, data_dir, features,
                        {s: examples(*arrays) for s, arrays in splits.items()}, version)


def split_for_import(pixels: np.ndarray, labels: np.ndarray, test_size: int, seed: int
                     ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
  """Checks arrays to import, shuffles once and splits off the last ``test_size`` as test.

  Test images identical to a train image (byte for byte) are dropped, so no probe is
  scored on an image an agent trained on. Returns the splits and how many were dropped.
  Raises before anything is written if the arrays cannot make a dataset.
  """
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if pixels.ndim not in (3, 4) or labels.ndim != 1 or len(pixels) != len(labels):
    raise errors.UserError(f"images must be (N, H, W) or (N, H, W, C) and labels (N,), one label "
                           f"per image; got {pixels.shape} and {labels.shape}.")
  if len(labels) == 0 or pixels.size == 0:
    raise errors.UserError(f"The arrays are empty: images {pixels.shape}, labels {labels.shape}.")
  if pixels.ndim == 4 and pixels.shape[-1] not in (1, 3):
    raise errors.UserError(f"images must have 1 or 3 channels; got {pixels.shape[-1]} "
                           f"(shape {pixels.shape}).")
  if not 0 < test_size < len(labels):
    raise errors.UserError(f"test_size must be in (0, {len(labels)}), got {test_size}.")
  if not np.issubdtype(pixels.dtype, np.integer) or pixels.min() < 0 or pixels.max() > 255:
    raise errors.UserError(f"images must be integers in [0, 255]; got {pixels.dtype} in "
                           f"[{pixels.min()}, {pixels.max()}] (scale floats in [0, 1] by 255).")
  if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
    raise errors.UserError(f"labels must be integers from 0; got {labels.dtype} from "
                           f"{labels.min()}.")
  order = np.random.default_rng(seed).permutation(len(labels))
  pixels, labels = pixels[order].astype(np.uint8), labels[order].astype(np.int64)
  cut = len(labels) - test_size
  seen = {p.tobytes() for p in pixels[:cut]}
  keep = np.asarray([p.tobytes() not in seen for p in pixels[cut:]], bool)
  if not keep.any():
    raise errors.UserError(f"Every one of the {test_size} test images is also in the train split; "
                           "nothing is left to score probes on.")
  test = (pixels[cut:][keep], labels[cut:][keep])
  return {"train": (pixels[:cut], labels[:cut]), "test": test}, int((~keep).sum())
