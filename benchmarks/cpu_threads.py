r"""Can XLA's CPU backend use the second core for our step? Step time under XLA flag sets.

  python -m benchmarks.cpu_threads [--agents=1,2] [--rounds=3] [--json=docs/cpu_threads.json]

The default recipe's real training step (batches rendered inside it) for A agents, timed in
a fresh process per flag set (XLA reads its flags when its backend starts), the flag sets
taken in turn in every round so a change in the machine's load hits each alike; medians of
the rounds, and each set's time over the default's (< 1: faster). The sets: XLA's defaults;
XNNPACK fusions of dots, elementwise ops and reductions (multi-threaded kernels); XNNPACK
graph fusion; oneDNN matmul thunks; and Eigen single-threaded (what the default's
multi-threaded Eigen buys). ``benchmarks.torch_step`` compares the step with PyTorch's.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

from sjepa_jax import files

FLAG_SETS = {
    "default": "",
    "xnn fusions": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "xnn graph fusion": "--xla_cpu_experimental_xnn_graph_fusion_mode="
                        "XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn": "--xla_cpu_use_onednn=true",
    "eigen 1 thread": "--xla_cpu_multi_thread_eigen=false",
}

_AGENTS = flags.DEFINE_list("agents", ["1", "2"], "Numbers of agents.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds, each taking every flag set in turn.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per process.")
_SETS = flags.DEFINE_list("sets", list(FLAG_SETS), "Flag sets to time.")
_JSON = flags.DEFINE_string("json", None, "Also write the table here as JSON.")

# What each timing process runs: the default recipe's step for A agents, ms per step.
_CHILD = r"""
import json, sys, time
import jax
from experiments.configs import default
from sjepa_jax import agents, configs, train, world
agents_n, steps = int(sys.argv[1]), int(sys.argv[2])
config = default.get_config()
learner = configs.learner_from_config(config)
names = sorted(world.VIEWS)[:agents_n]
state = agents.init_agents(learner, names, 0)
views, keys = world.stack_views(names), agents.agent_keys(0, names)
step = train.make_step(learner, configs.agent_map(config), num_agents=agents_n)
state, m = step(state, views, keys, 0)
jax.block_until_ready(m)
start = time.perf_counter()
for i in range(1, steps + 1):
  state, m = step(state, views, keys, i)
jax.block_until_ready(m)
print(json.dumps({"ms": 1e3 * (time.perf_counter() - start) / steps}))
"""


def time_step(xla_flags: str, num_agents: int, steps: int) -> float:
  """Milliseconds per step of ``num_agents`` agents in a fresh process with ``xla_flags``."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "XLA_FLAGS": xla_flags, "SJEPA_COMPILATION_CACHE": "off",
         "PYTHONPATH": root}
  out = subprocess.run([sys.executable, "-c", _CHILD, str(num_agents), str(steps)], env=env,
                       capture_output=True, text=True, cwd=root, timeout=1800)
  if out.returncode != 0:
    raise RuntimeError(f"XLA_FLAGS={xla_flags!r} failed: {out.stderr[-1500:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


def main(argv):
  del argv
  sets = {name: FLAG_SETS[name] for name in _SETS.value}
  print(f"{os.cpu_count()} CPUs; median of {_ROUNDS.value} rounds of {_STEPS.value} steps; "
        "ms per step (the set's time over the default's)")
  rows = []
  for a in (int(x) for x in _AGENTS.value):
    times = {name: [] for name in sets}
    for _ in range(_ROUNDS.value):
      for name, xla_flags in sets.items():
        times[name].append(time_step(xla_flags, a, _STEPS.value))
    base = float(np.median(times["default"])) if "default" in times else None
    for name, ts in times.items():
      ms = float(np.median(ts))
      ratio = None if base is None else ms / base
      rows.append({"agents": a, "set": name, "xla_flags": sets[name], "ms": ms,
                   "over_default": ratio})
      print(f"A={a}  {name:<18}{ms:>9.1f} ms" + ("" if ratio is None else f"  ({ratio:.2f})"),
            flush=True)
  if _JSON.value:
    files.write_json({"cpus": os.cpu_count(), "rounds": _ROUNDS.value,
                              "steps": _STEPS.value, "rows": rows}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
