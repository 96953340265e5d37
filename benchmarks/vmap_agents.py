r"""Agent-steps/s for A agents: one vmapped step vs a Python loop vs lax.map, per encoder.

  python -m benchmarks.vmap_agents [--encoders=mixer,vit,cnn] [--agents=1,2,4,8]

The last line checks ``agent_map="auto"`` on this machine: which of vmap and lax.map it
picks here, and in how many rows the pick was the faster of the two.

Each step is the real training step (the batch is rendered inside it). Figures are medians
of ``--repeats`` timed rounds after compilation, each round taking the modes in turn, all
from one run so the ratios compare like with like: ``vmap/loop`` > 1 means vmap wins;
``per-agent`` is vmap's agent-steps/s at A divided by the first row's; ``lax/vmap`` > 1
means lax.map wins.
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
from sjepa_jax import files
from sjepa_jax import configs
from sjepa_jax import world

_ENCODERS = flags.DEFINE_list("encoders", [default.get_config().model.encoder],
                              "Encoders to time (mixer, vit, cnn); default: the default's.")
_AGENTS = flags.DEFINE_list("agents", ["2", "4"], "Numbers of agents.")
_BATCH = flags.DEFINE_integer("batch", 64, "Batch size per agent.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds per figure; the median is kept.")
_MODES = flags.DEFINE_list("modes", ["vmap", "loop", "lax_map"], "Ways to run A agents.")
_JSON = flags.DEFINE_string("json", None, "Also write the table here as JSON.")


def _seconds(fn, i: int) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(i))
  return time.perf_counter() - start


def agent_steps_per_second(config, num_agents: int, modes, repeats: int) -> dict[str, float]:
  """Agent-steps/s of ``num_agents`` agents per mode: medians of rounds that take the modes
  in turn, so a change in the machine's load hits every mode alike."""
  runs = {m: make_run(config, num_agents, m) for m in modes}
  for run in runs.values():
    jax.block_until_ready(run(0))  # compile and warm up
  times = [[_seconds(run, i) for run in runs.values()] for i in range(1, repeats + 1)]
  return dict(zip(runs, num_agents / np.median(times, axis=0)))


def make_run(config, num_agents: int, mode: str):
  """``step -> outputs`` for ``num_agents`` agents (views cycled, keys distinct) run by
  ``mode``."""
  names = list(itertools.islice(itertools.cycle(sorted(world.VIEWS)), num_agents))
  views = jax.tree.map(lambda *x: np.stack(x), *[world.get_view(n) for n in names])
  keys = jax.random.split(jax.random.key(0), num_agents)
  learner = configs.learner_from_config(config)
  state = jax.jit(jax.vmap(functools.partial(agents.init_agent, learner)))(keys)
  one = functools.partial(agents.train_step, learner)
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
  return run


def main(argv):
  del argv
  counts = [int(a) for a in _AGENTS.value]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch "
        f"{_BATCH.value} per agent, median of {_REPEATS.value}; agent-steps/s")
  header = "".join(f"{m:>10}" for m in _MODES.value)
  print(f"{'encoder':<8}{'A':>3}{header}{'vmap/loop':>11}{'per-agent':>11}{'lax/vmap':>10}")
  config = default.get_config()
  config.agent_map = "auto"
  auto = configs.agent_map(config)  # what a default run picks on this machine
  other = {"vmap": "lax_map", "lax_map": "vmap"}[auto]
  wins, rows = [], []
  for encoder in _ENCODERS.value:
    config = default.get_config()
    config.model.encoder = encoder
    config.data.batch_size = _BATCH.value
    base = None
    for a in counts:
      rates = agent_steps_per_second(config, a, _MODES.value, _REPEATS.value)
      base = base or rates.get("vmap")
      ratio = rates["vmap"] / rates["loop"] if {"vmap", "loop"} <= rates.keys() else float("nan")
      per_agent = rates["vmap"] / base if "vmap" in rates else float("nan")
      lax_vmap = rates.get("lax_map", float("nan")) / rates.get("vmap", float("nan"))
      print(f"{encoder:<8}{a:>3}" + "".join(f"{rates[m]:>10.2f}" for m in _MODES.value)
            + f"{ratio:>11.2f}{per_agent:>11.2f}{lax_vmap:>10.2f}", flush=True)
      rows.append({"encoder": encoder, "agents": a, "agent_steps_per_second": rates})
      if a > 1 and {auto, other} <= rates.keys():  # one agent runs without either
        wins.append(rates[auto] / rates[other])
  if wins:
    print(f"agent_map=auto picks {auto} on {jax.default_backend()}: faster than {other} in "
          f"{sum(w > 1 for w in wins)} of {len(wins)} rows with A > 1 ({auto}/{other} "
          f"{min(wins):.2f}-{max(wins):.2f}x).")
  if _JSON.value:
    files.write_json({"device": jax.devices()[0].device_kind, "batch": _BATCH.value,
                       "repeats": _REPEATS.value, "auto": auto, "rows": rows}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
