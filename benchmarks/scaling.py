r"""How the many-agent training step scales on this device: A = 1, 2, 4, ... agents.

  python -m benchmarks.scaling --quick                  # a few minutes, CPU or accelerator
  python -m benchmarks.scaling --recipes=default,long --agents=1,2,4,8,16,32 \
      --json=docs/scaling_<device>.json [--peak_tflops=989]

For each recipe (``experiments/configs/<recipe>.py``), way of mapping the agents (``vmap``,
``lax_map``) and number of agents, it compiles the real training step (batches rendered
inside it, as in training) and prints:

- agent-steps/s and images/s (frames rendered and encoded per second), medians of
  ``--repeats`` timed rounds of ``--steps`` steps;
- compile time, and the compiled program's memory (arguments, outputs and temporaries from
  XLA's memory analysis) beside the device's peak bytes in use where it reports them;
- model FLOP utilisation: the step's FLOPs from ``sjepa_jax.flops`` (the program as
  written, rendering included) times steps/s, over the device's peak (``PEAK_TFLOPS`` by
  device kind at the recipe's compute dtype, or ``--peak_tflops``); "-" where unknown.

Agent counts stop at the first that does not fit (out of memory). ``--quick`` is the
default recipe only, A = 1, 2, 4, 2 repeats of 3 steps.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import default
from experiments.configs import long
from sjepa_jax import agents
from sjepa_jax import files
from sjepa_jax import configs
from sjepa_jax import flops
from sjepa_jax import train
from sjepa_jax import world

RECIPES = {"default": default.get_config, "long": long.get_config}
# Dense peak TFLOP/s by device kind (a substring of ``device_kind``): (bfloat16, float32).
# Vendor data sheets; float32 on GPUs is the non-tensor-core figure.
PEAK_TFLOPS = {
    "H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5),
    "L4": (121.0, 30.3), "A10": (125.0, 31.2), "V100": (125.0, 15.7), "T4": (65.0, 8.1),
    "TPU v6": (918.0, None), "TPU v5p": (459.0, None), "TPU v5 lite": (197.0, None),
    "TPU v5e": (197.0, None), "TPU v4": (275.0, None),
}

_QUICK = flags.DEFINE_bool("quick", False, "Default recipe, A = 1, 2, 4, 2 rounds of 3 steps.")
_RECIPES = flags.DEFINE_list("recipes", ["default", "long"], f"Of {', '.join(RECIPES)}.")
_AGENTS = flags.DEFINE_list("agents", ["1", "2", "4", "8", "16"], "Numbers of agents.")
_MODES = flags.DEFINE_list("modes", ["vmap", "lax_map"], "Ways to map the agents.")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per timed round.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds; the median is kept.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s at the recipe's "
                           "compute dtype (default: looked up by device kind).")
_BATCH = flags.DEFINE_integer("batch", None, "Batch per agent (default: the recipe's).")
_SIZE = flags.DEFINE_integer("image_size", None, "Frame size (default: the recipe's; a "
                             "multiple of its patch size).")
_JSON = flags.DEFINE_string("json", None, "Also write the table here as JSON.")


def peak_flops(device_kind: str, dtype, override: float | None = None) -> float | None:
  """FLOP/s the device can do at ``dtype``: ``override`` TFLOP/s, or the table's."""
  if override:
    return override * 1e12
  for kind, (bf16, f32) in PEAK_TFLOPS.items():
    if kind.lower() in device_kind.lower():
      peak = bf16 if dtype == jnp.bfloat16 else f32
      return None if peak is None else peak * 1e12
  return None


def measure(config, num_agents: int, how: str, steps: int, repeats: int) -> dict:
  """One row: compile, then time ``repeats`` rounds of ``steps`` steps of A agents."""
  learner = configs.learner_from_config(config)
  names = [sorted(world.VIEWS)[a % len(world.VIEWS)] for a in range(num_agents)]
  seeds = [a // len(world.VIEWS) for a in range(num_agents)]
  state = agents.init_agents(learner, names, seeds)
  views = world.stack_views(sorted(set(names)))
  views = jax.tree.map(lambda x: x[np.asarray([sorted(set(names)).index(n) for n in names])],
                       views)
  keys = agents.agent_keys(seeds, names)
  fn = train.step_function(learner, how, num_agents=num_agents)
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=0).lower(state, views, keys, 0, None).compile()
  compile_s = time.perf_counter() - start
  step_flops = flops.count_flops(fn, state, views, keys, 0, None)
  memory = compiled.memory_analysis()
  program_bytes = None if memory is None else int(
      memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes)
  state, _ = compiled(state, views, keys, 0, None)  # warm up
  times = []
  for r in range(repeats):
    start = time.perf_counter()
    for i in range(steps):
      state, metrics = compiled(state, views, keys, 1 + r * steps + i, None)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - start) / steps)
  step_s = float(np.median(times))
  stats = jax.devices()[0].memory_stats() or {}
  d = config.data
  return {"agents": num_agents, "agent_map": how, "compile_s": compile_s,
          "agent_steps_per_s": num_agents / step_s,
          "images_per_s": num_agents * d.batch_size * d.frames / step_s,
          "step_flops": step_flops, "flops_per_s": step_flops / step_s,
          "program_bytes": program_bytes, "peak_bytes_in_use": stats.get("peak_bytes_in_use")}


def _is_out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


def main(argv):
  del argv
  names = ["default"] if _QUICK.value else _RECIPES.value
  counts = [1, 2, 4] if _QUICK.value else [int(a) for a in _AGENTS.value]
  steps, repeats = (3, 2) if _QUICK.value else (_STEPS.value, _REPEATS.value)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} "
        f"device(s)); median of {repeats} rounds of {steps} steps")
  print(f"{'recipe':<9}{'map':<9}{'A':>4}{'agent-st/s':>12}{'images/s':>10}{'compile s':>11}"
        f"{'program MB':>12}{'peak MB':>9}{'GFLOP/st':>10}{'MFU':>7}")
  rows = []
  for name in names:
    if name not in RECIPES:
      raise ValueError(f"Unknown recipe {name!r}; valid: {', '.join(RECIPES)}.")
    config = RECIPES[name]()
    config.data.batch_size = _BATCH.value or config.data.batch_size
    config.data.image_size = _SIZE.value or config.data.image_size
    peak = peak_flops(device.device_kind, configs.compute_dtype(config.model.compute_dtype),
                      _PEAK.value)
    for how in _MODES.value:
      for a in counts:
        try:
          row = {"recipe": name, **measure(config, a, how, steps, repeats)}
        except Exception as e:  # pylint: disable=broad-except
          if not _is_out_of_memory(e):
            raise
          print(f"{name:<9}{how:<9}{a:>4}  out of memory: larger A does not fit")
          break
        row["mfu"] = None if peak is None else row["flops_per_s"] / peak
        rows.append(row)
        mb = lambda b: "-" if b is None else f"{b / 2**20:.0f}"
        print(f"{name:<9}{how:<9}{a:>4}{row['agent_steps_per_s']:>12.2f}"
              f"{row['images_per_s']:>10.0f}{row['compile_s']:>11.1f}"
              f"{mb(row['program_bytes']):>12}{mb(row['peak_bytes_in_use']):>9}"
              f"{row['step_flops'] / 1e9:>10.2f}"
              f"{'-' if row['mfu'] is None else format(row['mfu'], '.1%'):>7}", flush=True)
  if _JSON.value:
    files.write_json({"device": device.device_kind, "backend": jax.default_backend(),
                              "steps": steps, "repeats": repeats, "rows": rows}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
