r"""Training from a recording against training on the world's in-step rendering, one run.

  python -m benchmarks.recording_speed [--size=32] [--views=mountain,forest] \
      [--episodes=200] [--steps=20] [--repeats=3] [--json=PATH]

Writes the world's episodes as a recording (a temporary directory), then times the real
training step of the default config (every agent, its batch made inside the step) on both
sources at the same image size: the world rendering each batch, and the recording's frames
gathered from the device; and, as the floor, the same step fed one fixed batch (no data
made at all). Rounds take the sources in turn and the median of ``--repeats`` rounds is
kept, so a change in the machine's load hits all alike. Where the time goes: each source's
step minus the floor is what making its batches costs inside the step (also timed alone,
jitted on its own: ``batch_ms``); and the one-off costs of a recording (writing it, reading
it into memory). ``ratio`` > 1 means training from the recording is faster.
"""

import dataclasses
import functools
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from experiments.configs import default
from sjepa_jax import agents
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import files
from sjepa_jax import train
from sjepa_jax import world
from sjepa_jax import world_dataset as dataset

_SIZE = flags.DEFINE_integer("size", 32, "Image size of both sources (the default config's).")
_VIEWS = flags.DEFINE_string("views", "mountain,forest", "Views: world cameras, one agent each.")
_EPISODES = flags.DEFINE_integer("episodes", 200, "Train episodes of the recording.")
_LENGTH = flags.DEFINE_integer("episode_length", 8, "Steps per recorded episode.")
_STEPS = flags.DEFINE_integer("steps", 20, "Training steps per timed round.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds per source; the median is kept.")
_BATCH = flags.DEFINE_integer("batch", None, "Batch size per agent (default: the config's).")
_JSON = flags.DEFINE_string("json", None, "Also write the figures here as JSON.")


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


class _Run:
  """One source's training step and its batch alone, ready to time."""

  def __init__(self, config, views, fixed: bool = False):
    self.learner = configs.learner_from_config(config)
    src = data.source(config)
    start = time.perf_counter()
    self.pixels = data.on_device(data.load_images(src, src.train_split, views))
    jax.block_until_ready(self.pixels)
    self.load_s = time.perf_counter() - start
    if fixed:  # the floor: one batch made once, handed to the step as its "pixels"
      first = jax.tree.map(lambda x: x[0], data.stack_views(src, views))
      self.pixels = self.learner.sample(jax.random.key(0), first, self.pixels)
      self.learner = dataclasses.replace(self.learner, sample=lambda key, view, batch: batch)
    self.views = data.stack_views(src, views)
    self.keys = agents.agent_keys(0, views)
    how = configs.agent_map(config)
    self.step = train.make_step(self.learner, how, num_agents=len(views))
    self.state = agents.init_agents(self.learner, views, 0)
    sample = lambda v, k, i, p: self.learner.sample(jax.random.fold_in(k, i), v, p)
    self.batch = jax.jit(lambda v, k, i, p: jax.lax.map(lambda a: sample(*a, i, p), (v, k)))
    self.i = 0

  def steps(self, n: int):
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.views, self.keys, self.i, self.pixels)
      self.i += 1
    return metrics

  def batches(self, n: int):
    return [self.batch(self.views, self.keys, i, self.pixels).obs for i in range(n)]


def measure(size: int, views: list[str], episodes: int, length: int, steps: int,
            repeats: int, batch: int | None) -> dict:
  """Steps/s and batch milliseconds of both sources, and the recording's one-off costs."""
  config = default.get_config()
  config.data.image_size = size
  config.data.batch_size = batch or config.data.batch_size
  with tempfile.TemporaryDirectory() as data_dir:
    start = time.perf_counter()
    dataset.build(data_dir, views, episode_length=length, image_size=size,
                  num_train=episodes, num_validation=0, num_test=8)
    write_s = time.perf_counter() - start
    recorded = default.get_config()
    recorded.data.update(image_size=size, batch_size=config.data.batch_size,
                         dataset=dataset.WorldConfig(tuple(views), length, size, episodes, 0,
                                                     8).name, data_dir=data_dir)
    recorded = data.resolve(recorded)
    runs = {"world": _Run(config, views), "recording": _Run(recorded, views),
            "fixed_batch": _Run(config, views, fixed=True)}
  for run in runs.values():  # compile and warm up
    run.steps(2)
    jax.block_until_ready(run.batches(2))
  step_s = {k: [] for k in runs}
  batch_s = {k: [] for k in runs}
  for _ in range(repeats):  # the sources in turn
    for k, run in runs.items():
      step_s[k].append(_median_seconds(functools.partial(run.steps, steps), 1) / steps)
      batch_s[k].append(_median_seconds(functools.partial(run.batches, steps), 1) / steps)
  out = {k: {"steps_per_sec": 1 / float(np.median(step_s[k])),
             "step_ms": 1e3 * float(np.median(step_s[k])),
             "batch_ms": 1e3 * float(np.median(batch_s[k]))} for k in runs}
  for k in ("world", "recording"):  # what making the batches adds to the step
    out[k]["batch_in_step_ms"] = out[k]["step_ms"] - out["fixed_batch"]["step_ms"]
  rec = runs["recording"].pixels
  out["recording"].update(write_s=write_s, load_s=runs["recording"].load_s,
                          steps_in_memory=int(rec.frames.shape[1]),
                          device_mb=sum(x.nbytes for x in jax.tree.leaves(rec)) / 2 ** 20)
  return out


def main(argv):
  del argv
  views = world.parse_views(_VIEWS.value)
  out = measure(_SIZE.value, views, _EPISODES.value, _LENGTH.value, _STEPS.value,
                _REPEATS.value, _BATCH.value)
  ratio = out["recording"]["steps_per_sec"] / out["world"]["steps_per_sec"]
  device = jax.devices()[0].device_kind
  print(f"device: {device} ({jax.default_backend()}), {_SIZE.value}x{_SIZE.value}, "
        f"{len(views)} agents, default config, median of {_REPEATS.value} rounds of "
        f"{_STEPS.value} steps")
  print(f"{'source':<13}{'steps/s':>9}{'step ms':>9}{'batches in step ms':>20}"
        f"{'batches alone ms':>18}")
  for k in ("world", "recording", "fixed_batch"):
    r = out[k]
    print(f"{k:<13}{r['steps_per_sec']:>9.2f}{r['step_ms']:>9.1f}"
          f"{r.get('batch_in_step_ms', 0.0):>20.1f}{r['batch_ms']:>18.2f}")
  r = out["recording"]
  print(f"recording / world steps/s: {ratio:.2f}; the recording's one-off costs: written in "
        f"{r['write_s']:.1f} s, read into memory in {r['load_s']:.2f} s "
        f"({r['steps_in_memory']} steps, {r['device_mb']:.1f} MB on the device)")
  if _JSON.value:
    files.write_json({"device": device, "backend": jax.default_backend(),
                              "size": _SIZE.value, "views": views, "steps": _STEPS.value,
                              "repeats": _REPEATS.value, **out, "ratio": ratio}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
