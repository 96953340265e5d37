r"""Can the world's rendering run beside the training step on CPU? Three ways to feed it.

  python -m benchmarks.render_beside_step [--agents=2] [--rounds=5] [--steps=10] \
      [--json=docs/render_beside_step.json]

The default recipe's agents, their batches rendered by one jitted program and trained on
by another (the trainer fuses the two; here they are apart so they can overlap). Timed, ms
per step, medians of ``--rounds`` rounds of ``--steps`` steps, the ways taken in turn:

- ``render`` and ``train`` alone;
- ``in turn``: render step i's batch, then train on it (what the fused step does);
- ``beside, one device``: dispatch the render of batch i + 1, then the training step on
  batch i, and wait for both (JAX dispatches asynchronously);
- ``beside, two devices``: the same with the render on a second host device
  (``--xla_force_host_platform_device_count=2``, set here) and its batch copied over.

Every way trains on the same batches in the same order, so each ends with the same
parameters (checked, printed and written). ``benchmarks/cpu_threads.py`` tries XLA's
threading flags on the fused step.
"""

import functools
import os

# Before JAX starts its CPU backend, which reads XLA_FLAGS once: a second host device.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2").strip()

import time  # pylint: disable=g-import-not-at-top,g-bad-import-order

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from experiments.configs import default  # pylint: disable=g-import-not-at-top
from sjepa_jax import agents  # pylint: disable=g-import-not-at-top
from sjepa_jax import configs  # pylint: disable=g-import-not-at-top
from sjepa_jax import files  # pylint: disable=g-import-not-at-top
from sjepa_jax import objectives  # pylint: disable=g-import-not-at-top
from sjepa_jax import world  # pylint: disable=g-import-not-at-top

_AGENTS = flags.DEFINE_integer("agents", 2, "Agents (views in world order).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds; the median is kept.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed round.")
_BATCH = flags.DEFINE_integer("batch", None, "Batch per agent (default: the recipe's).")
_SIZE = flags.DEFINE_integer("image_size", None, "Frame size (default: the recipe's).")
_JSON = flags.DEFINE_string("json", None, "Also write the table here as JSON.")


def programs(learner: agents.Learner):
  """(render, train): the world's batches of every agent, and one step on given batches;
  the agents one after another (``lax.map``), as the trainer maps them on CPU."""
  def render(views, keys, step):
    return jax.lax.map(lambda a: learner.sample(jax.random.fold_in(a[1], step), a[0], None),
                       (views, keys))

  def train(state, batch, keys, step):
    def one(a):
      s, b, k = a
      loss = functools.partial(objectives.loss_fn, learner.model, learner.objective)
      grads, m = jax.grad(loss, has_aux=True)(
          s.params, s.target, b, jax.random.fold_in(k, step))
      return agents.apply_gradients(learner, s, grads), m["loss"]
    return jax.lax.map(one, (state, batch, keys))

  return jax.jit(render), jax.jit(train)


def main(argv):
  del argv
  config = default.get_config()
  config.data.batch_size = _BATCH.value or config.data.batch_size
  config.data.image_size = _SIZE.value or config.data.image_size
  learner = configs.learner_from_config(config)
  names = sorted(world.VIEWS)[:_AGENTS.value]
  d0, d1 = jax.devices()[:2]
  views, keys = world.stack_views(names), agents.agent_keys(0, names)
  on0, on1 = jax.device_put((views, keys), d0), jax.device_put((views, keys), d1)
  initial = jax.device_put(agents.init_agents(learner, names, 0), d0)
  render, train = programs(learner)

  def in_turn(state, first):
    for i in range(first, first + _STEPS.value):
      state, _ = train(state, render(*on0, i), on0[1], i)
    return state

  def beside(state, first, where):
    batch = jax.device_put(render(*where, first), d0)
    for i in range(first, first + _STEPS.value):
      upcoming = jax.device_put(render(*where, i + 1), d0)  # dispatched first
      state, _ = train(state, batch, on0[1], i)
      jax.block_until_ready((upcoming, state))
      batch = upcoming
    return state

  batch0 = render(*on0, 0)
  ways = {
      "render": lambda s, f: [render(*on0, i) for i in range(f, f + _STEPS.value)][-1],
      "train": lambda s, f: [train(s, batch0, on0[1], i) for i in range(f, f + _STEPS.value)][-1],
      "in turn": in_turn,
      "beside, one device": lambda s, f: beside(s, f, on0),
      "beside, two devices": lambda s, f: beside(s, f, on1),
  }
  for way in ways.values():  # compile, and the parameters each feeding ends with
    jax.block_until_ready(way(jax.tree.map(jax.numpy.copy, initial), 0))
  ends = {name: ways[name](jax.tree.map(jax.numpy.copy, initial), 0)
          for name in ("in turn", "beside, one device", "beside, two devices")}
  same = all(bool(np.all(jax.tree.leaves(jax.tree.map(
      lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), ends["in turn"].params,
      e.params)))) for e in ends.values())

  times = {name: [] for name in ways}
  for _ in range(_ROUNDS.value):
    for name, way in ways.items():
      state = jax.tree.map(jax.numpy.copy, initial)
      start = time.perf_counter()
      jax.block_until_ready(way(state, 0))
      times[name].append(1e3 * (time.perf_counter() - start) / _STEPS.value)
  ms = {name: float(np.median(t)) for name, t in times.items()}
  print(f"{len(names)} agents, batch {config.data.batch_size}, {config.data.image_size}x"
        f"{config.data.image_size}; {os.cpu_count()} CPUs; ms per step, median of "
        f"{_ROUNDS.value} rounds of {_STEPS.value} steps")
  for name, v in ms.items():
    print(f"  {name:<22}{v:8.1f}" + (f"  ({ms['in turn'] / v:.2f}x in turn)"
                                      if name.startswith("beside") else ""))
  print(f"  same parameters after every feeding: {same}")
  if _JSON.value:
    files.write_json({"agents": names, "batch": config.data.batch_size,
                              "image_size": config.data.image_size, "rounds": _ROUNDS.value,
                              "steps": _STEPS.value, "cpus": os.cpu_count(), "ms": ms,
                              "same_parameters": same}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
