r"""Agent-steps/s for A agents: one vmapped step vs a Python loop vs lax.map, per encoder.

  python -m benchmarks.vmap_agents [--encoders=mixer,vit,cnn] [--agents=1,2,4,8]

Each step is the real training step (the batch is rendered inside it). Figures are medians
of ``--repeats`` timed rounds after compilation, all from one run so the ratios compare
like with like: ``vmap/loop`` > 1 means vmap wins; ``per-agent`` is vmap's agent-steps/s
at A divided by A = 1's (1.0 = no loss from batching agents).
"""

import functools
import itertools
import time

from absl import app
from absl import flags
import jax
import numpy as np

from experiments.configs import default
from sjepa_jax import agents
from sjepa_jax import world

_ENCODERS = flags.DEFINE_list("encoders", ["mixer", "vit", "cnn"], "Encoders to time.")
_AGENTS = flags.DEFINE_list("agents", ["1", "2", "4", "8"], "Numbers of agents.")
_BATCH = flags.DEFINE_integer("batch", 64, "Batch size per agent.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds per figure; the median is kept.")
_MODES = flags.DEFINE_list("modes", ["vmap", "loop", "lax_map"], "Ways to run A agents.")


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn(0))  # compile and warm up
  times = []
  for i in range(1, repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def agent_steps_per_second(config, num_agents: int, mode: str, repeats: int) -> float:
  """Agent-steps/s of ``num_agents`` agents (views cycled, keys distinct) run by ``mode``."""
  names = list(itertools.islice(itertools.cycle(sorted(world.VIEWS)), num_agents))
  views = jax.tree.map(lambda *x: np.stack(x), *[world.get_view(n) for n in names])
  keys = jax.random.split(jax.random.key(0), num_agents)
  state = jax.jit(jax.vmap(lambda k: agents.init_agent(k, config)))(keys)
  one = functools.partial(agents.train_step, config=config)
  if mode == "vmap":
    step = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))
    run = lambda i: step(state, views, keys, i)
  elif mode == "lax_map":
    step = jax.jit(lambda s, v, k, i: jax.lax.map(lambda a: one(*a, i), (s, v, k)))
    run = lambda i: step(state, views, keys, i)
  elif mode == "loop":
    step = jax.jit(one)
    parts = [jax.tree.map(lambda x, a=a: x[a], (state, views, keys)) for a in range(num_agents)]
    run = lambda i: [step(*p, i) for p in parts]
  else:
    raise ValueError(f"Unknown mode {mode!r}; valid modes: vmap, loop, lax_map.")
  return num_agents / _median_seconds(run, repeats)


def main(argv):
  del argv
  counts = [int(a) for a in _AGENTS.value]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch "
        f"{_BATCH.value} per agent, median of {_REPEATS.value}; agent-steps/s")
  header = "".join(f"{m:>10}" for m in _MODES.value)
  print(f"{'encoder':<8}{'A':>3}{header}{'vmap/loop':>11}{'per-agent':>11}")
  for encoder in _ENCODERS.value:
    config = default.get_config()
    config.model.encoder = encoder
    config.data.batch_size = _BATCH.value
    base = None
    for a in counts:
      rates = {m: agent_steps_per_second(config, a, m, _REPEATS.value) for m in _MODES.value}
      base = base or rates.get("vmap")
      ratio = rates["vmap"] / rates["loop"] if {"vmap", "loop"} <= rates.keys() else float("nan")
      per_agent = rates["vmap"] / base if "vmap" in rates else float("nan")
      print(f"{encoder:<8}{a:>3}" + "".join(f"{rates[m]:>10.2f}" for m in _MODES.value)
            + f"{ratio:>11.2f}{per_agent:>11.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
