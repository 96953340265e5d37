r"""A PyTorch yardstick: the default agent's train step in PyTorch on CPU against ours.

  pip install torch   # benchmark-only, not in requirements.txt; without it this says so
  python -m benchmarks.torch_step [--rounds=7] [--steps=5] [--json=/tmp/torch_step.json]
      [--components] [--torch_threads=1] [--config.objective.inverse_weight=0]

Both sides run the same step for one agent of ``experiments/configs/default.py`` (read at
run time, so the figures follow the default; ``--config.<field>=<value>`` overrides a field):
the mixer encoder on every frame, the predictor rolled out over the frames, loss =
prediction + VICReg variance/covariance against the stop-gradient online target (+ inverse
dynamics when ``objective.inverse_weight > 0``), the same diagnostics (embedding std,
copy-predictor loss, gradient norm), then global-norm clipping and
AdamW. The torch twin starts from our initial weights, and the run stops unless both sides
have the same parameter count and the same first loss. The batch is given, one fixed random
tensor on both sides, so rendering is not timed. Each figure is the median over ``--rounds``
of the mean step time over ``--steps`` steps, after warm-up (and compilation); both sides
run in this one process on the same cores, alternating round by round. ``jax/torch`` < 1
means ours is faster.

Where the time goes: ``--components`` also times the forward (encoder only, encoder +
loss) and forward + backward on both sides; ``--profile`` traces our step with
jax.profiler and prints its slowest XLA ops (benchmarks/op_profile.py), each with what it
fuses and whether it is forward, backward or the update.
"""
import functools
import json
import math
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import op_profile
from experiments import common
from sjepa_jax import agents
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import models
from sjepa_jax import objectives

_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds per side; the median is kept.")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per timed round.")
_JSON = flags.DEFINE_string("json", None, "Also write the table here as JSON.")
_COMPONENTS = flags.DEFINE_bool("components", False, "Also time forward and backward parts.")
_PROFILE = flags.DEFINE_bool("profile", False, "Also trace our step and print its slowest "
                             "XLA ops (jax.profiler).")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "torch's intra-op threads; 0 keeps torch's default (one per core). "
    "On a loaded machine its OpenMP workers wait for a free core at every op; 1 avoids that.")
_CONFIG = common.define_config_flag("experiments/configs/default.py",
                                    "The agent to time (the twin refuses what it lacks).")

try:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
except ImportError:
  torch = None


# --- PyTorch: the same networks, loss and optimizer -------------------------------------

def _layer_norm(width: int):
  return nn.LayerNorm(width, eps=1e-6)  # flax's LayerNorm epsilon


def _gelu(x):
  return F.gelu(x, approximate="tanh")  # flax's nn.gelu is the tanh approximation


class _MlpBlock(nn.Module if torch else object):
  def __init__(self, width: int, hidden: int):
    super().__init__()
    self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

  def forward(self, x):
    return self.down(_gelu(self.up(x)))


class _Mixer(nn.Module if torch else object):
  """models.MixerEncoder: patch embedding, token- and channel-mixing blocks, flatten head."""

  def __init__(self, m, image_size: int):
    super().__init__()
    self.patch, num = m.patch, (image_size // m.patch) ** 2
    self.embed = nn.Linear(m.patch * m.patch * 3, m.width)
    self.blocks = nn.ModuleList([nn.ModuleList([
        _layer_norm(m.width), _MlpBlock(num, 2 * num), _layer_norm(m.width),
        _MlpBlock(m.width, 2 * m.width)]) for _ in range(m.depth)])
    self.norm = _layer_norm(m.width)
    self.head = nn.Linear(num * m.width, m.dim)

  def forward(self, obs_NxHxWx3):
    n, h, w, c = obs_NxHxWx3.shape
    p = self.patch
    x = obs_NxHxWx3.reshape(n, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
    x = self.embed(x.reshape(n, (h // p) * (w // p), p * p * c))
    for norm1, tokens, norm2, channels in self.blocks:
      x = x + tokens(norm1(x).transpose(1, 2)).transpose(1, 2)
      x = x + channels(norm2(x))
    return self.head(self.norm(x).flatten(1))


class _Predictor(nn.Module if torch else object):
  """models.Predictor: z + MLP([LN(z), a])."""

  def __init__(self, dim: int, action_dim: int, hidden: int, depth: int):
    super().__init__()
    self.norm = _layer_norm(dim)
    sizes = [dim + action_dim] + [hidden] * depth
    self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
    self.out = nn.Linear(sizes[-1], dim)

  def forward(self, z, action):
    x = torch.cat([self.norm(z), action], -1)
    for layer in self.layers:
      x = _gelu(layer(x))
    return z + self.out(x)


class _Inverse(nn.Module if torch else object):
  """models.InverseDynamics: MLP([LN(z_t), LN(z_t+1)]) -> a_t."""

  def __init__(self, dim: int, action_dim: int, hidden: int):
    super().__init__()
    self.norm, self.norm_next = _layer_norm(dim), _layer_norm(dim)
    self.block = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(approximate="tanh"),
                               nn.Linear(hidden, action_dim))

  def forward(self, z, z_next):
    return self.block(torch.cat([self.norm(z), self.norm_next(z_next)], -1))


class _Agent(nn.Module if torch else object):
  """models.WorldModel for the JEPA objective: encoder, predictor, inverse model if used."""

  def __init__(self, config, action_dim: int):
    super().__init__()
    m = config.model
    self.encoder = _Mixer(m, config.data.image_size)
    self.predictor = _Predictor(m.dim, action_dim, m.predictor_hidden, m.predictor_depth)
    self.inverse = (_Inverse(m.dim, action_dim, m.predictor_hidden)
                    if config.objective.inverse_weight > 0 else None)


def _copy_dense(linear, p):
  linear.weight.copy_(torch.tensor(np.asarray(p["kernel"]).T))
  linear.bias.copy_(torch.tensor(np.asarray(p["bias"])))


def _copy_norm(norm, p):
  norm.weight.copy_(torch.tensor(np.asarray(p["scale"])))
  norm.bias.copy_(torch.tensor(np.asarray(p["bias"])))


def _copy_mlp(block, p):  # flax names the outer (down) Dense first: Dense_0 = down
  _copy_dense(block.up, p["Dense_1"])
  _copy_dense(block.down, p["Dense_0"])


def load_jax_params(agent, params) -> None:
  """Copies one agent's flax params (agents.init_agent(...).params) into the torch twin."""
  with torch.no_grad():
    e, enc = params["encoder"], agent.encoder
    _copy_dense(enc.embed, e["Dense_0"])
    for i, (norm1, tokens, norm2, channels) in enumerate(enc.blocks):
      _copy_norm(norm1, e[f"LayerNorm_{2 * i}"])
      _copy_mlp(tokens, e[f"MlpBlock_{2 * i}"])
      _copy_norm(norm2, e[f"LayerNorm_{2 * i + 1}"])
      _copy_mlp(channels, e[f"MlpBlock_{2 * i + 1}"])
    _copy_norm(enc.norm, e[f"LayerNorm_{2 * len(enc.blocks)}"])
    _copy_dense(enc.head, e["Dense_1"])
    p, pred = params["predictor"], agent.predictor
    _copy_norm(pred.norm, p["LayerNorm_0"])
    for i, layer in enumerate(pred.layers):
      _copy_dense(layer, p[f"Dense_{i}"])
    _copy_dense(pred.out, p[f"Dense_{len(pred.layers)}"])
    if agent.inverse is not None:
      p, inv = params["inverse"], agent.inverse
      _copy_norm(inv.norm, p["LayerNorm_0"])
      _copy_norm(inv.norm_next, p["LayerNorm_1"])
      _copy_dense(inv.block[0], p["Dense_1"])  # the outer Dense is Dense_0, as in MlpBlock
      _copy_dense(inv.block[2], p["Dense_0"])


def _prediction_loss(pred, target):  # losses.prediction_loss
  return ((pred - target) ** 2).sum(-1).mean() / pred.shape[-1]


def torch_loss(agent, obs, actions, o):
  """objectives.jepa_loss with the online stop-gradient target and VICReg: (loss, metrics)."""
  b, l = obs.shape[:2]
  z = agent.encoder(obs.reshape((b * l,) + obs.shape[2:])).reshape(b, l, -1)
  target = z.detach()
  z_hat, pred = z[:, 0], 0.0
  for t in range(l - 1):
    z_hat = agent.predictor(z_hat, actions[:, t])
    pred = pred + _prediction_loss(z_hat, target[:, t + 1]) / (l - 1)
  z_flat = z.reshape(b * l, -1)
  with torch.no_grad():  # the diagnostics our step computes too
    metrics = {"copy_prediction": sum(_prediction_loss(target[:, 0], target[:, t + 1])
                                      for t in range(l - 1)) / (l - 1),
               "embedding_std": z_flat.std(0, unbiased=False).mean()}
  loss = o.prediction_weight * pred
  if o.inverse_weight > 0:  # through the online encoder, as ours
    a_hat = agent.inverse(z[:, :-1], z[:, 1:])
    metrics["inverse_dynamics"] = ((a_hat - actions) ** 2).sum(-1).mean()
    loss = loss + o.inverse_weight * metrics["inverse_dynamics"]
  metrics["vicreg_variance"] = F.relu(
      1.0 - torch.sqrt(z_flat.var(0, unbiased=False) + 1e-4)).mean()
  zc = z_flat - z_flat.mean(0)
  cov = zc.T @ zc / (z_flat.shape[0] - 1)
  metrics["vicreg_covariance"] = (cov - torch.diag(torch.diag(cov))).pow(2).sum() / z.shape[-1]
  loss = loss + o.variance_weight * metrics["vicreg_variance"]
  loss = loss + o.covariance_weight * metrics["vicreg_covariance"]
  return loss, metrics


def torch_step_fn(config, obs, actions, jax_params):
  """A closure running one training step of the torch agent, started from ``jax_params``,
  on the given batch; and the closures timing its parts."""
  agent = _Agent(config, actions.shape[-1])
  load_jax_params(agent, jax_params)
  params = list(agent.parameters())
  o = config.optim
  opt = torch.optim.AdamW(params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, 1.0, min(o.warmup_steps, config.num_train_steps - 1), config.num_train_steps,
      end_value=o.final_lr_fraction)
  lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(schedule(i)))
  loss_fn = lambda: torch_loss(agent, obs, actions, config.objective)[0]

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, o.grad_clip)  # returns the norm, as ours logs
    opt.step()
    lr.step()
    return loss

  step.params = params
  parts = {"forward: encoder": lambda: agent.encoder(obs.reshape((-1,) + obs.shape[2:])),
           "forward: loss": loss_fn,
           "forward + backward": lambda: loss_fn().backward()}
  return step, {k: torch.no_grad()(f) if "backward" not in k else f for k, f in parts.items()}


# --- JAX: our own step on the same batch -------------------------------------------------

def jax_step_fn(config, obs, actions, state):
  """agents.train_step without the rendering: grad of objectives.loss_fn, then the update,
  from ``state`` (donated); the closures timing its parts; and its optimised HLO text."""
  batch = data.Batch(jnp.asarray(obs), jnp.asarray(actions))
  key = jax.random.key(1)
  learner = configs.learner_from_config(config)
  loss_fn = functools.partial(objectives.loss_fn, learner.model, learner.objective)

  def train_step(state, batch):
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state.target, batch, key)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return agents.apply_gradients(learner, state, grads), metrics

  box = [jax.tree.map(jnp.copy, state)]  # ours to donate
  compiled = jax.jit(train_step, donate_argnums=0).lower(box[0], batch).compile()

  def step():
    box[0], metrics = compiled(box[0], batch)
    return metrics["loss"]

  loss = lambda p, t: loss_fn(p, t, batch, key)[0]
  encode = jax.jit(lambda p: models.encode(learner.model, p["encoder"], batch.obs))
  loss_jit, grad_jit = jax.jit(loss), jax.jit(jax.grad(loss))
  parts = {"forward: encoder": lambda: encode(box[0].params),
           "forward: loss": lambda: loss_jit(box[0].params, box[0].target),
           "forward + backward": lambda: grad_jit(box[0].params, box[0].target)}
  return step, parts, compiled.as_text()


# --- Timing ------------------------------------------------------------------------------

def _mean_seconds(step, sync, steps: int) -> float:
  start = time.perf_counter()
  for _ in range(steps):
    out = step()
  sync(out)
  return (time.perf_counter() - start) / steps


def median_step_seconds(jax_step, torch_step, rounds: int, steps: int) -> tuple[float, float]:
  """Medians over rounds of the mean step time, JAX then torch in each round (so a change
  in the machine's load hits both), after two warm-up (and compiling) calls of each."""
  sides = ((jax_step, jax.block_until_ready), (torch_step, lambda x: x))
  for step, sync in sides:
    for _ in range(2):
      sync(step())
  times = [[_mean_seconds(step, sync, steps) for step, sync in sides] for _ in range(rounds)]
  return tuple(float(x) for x in np.median(times, axis=0))


def unsupported(config) -> str | None:
  """Why the torch twin cannot run ``config`` (one line), or None when it can."""
  m, o = config.model, config.objective
  for field, value, want in (("model.encoder", m.encoder, "mixer"),
                             ("model.pool", m.pool, "flatten"),
                             ("objective.kind", o.kind, "jepa"),
                             ("objective.target", o.target, "online"),
                             ("objective.regularizer", o.regularizer, "vicreg")):
    if value != want:
      return f"{field} is {value!r}, the twin has only {want!r}"
  return None


def main(argv):
  del argv
  if torch is None:
    print("benchmarks.torch_step needs PyTorch, a benchmark-only dependency: "
          "pip install torch")
    sys.exit(0)
  config = _CONFIG.value
  reason = unsupported(config)
  if reason:
    sys.exit(f"The torch twin does not implement this config: {reason}.")
  d = config.data
  rng = np.random.default_rng(0)
  obs = rng.random((d.batch_size, d.frames, d.image_size, d.image_size, 3), np.float32)
  actions = rng.normal(size=(d.batch_size, d.frames - 1, data.action_dim(config)))
  actions = actions.astype(np.float32)
  if _TORCH_THREADS.value > 0:
    torch.set_num_threads(_TORCH_THREADS.value)
  threads = torch.get_num_threads()
  print(f"agent, batch {d.batch_size} x {d.frames} frames x {d.image_size}x"
        f"{d.image_size}x3, D = {config.model.dim}, {config.model.encoder} (patch "
        f"{config.model.patch}, width {config.model.width}, depth {config.model.depth}), inverse "
        f"dynamics weight {config.objective.inverse_weight}; "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({threads} threads), jax "
        f"{jax.__version__} ({jax.default_backend()}); median of {_ROUNDS.value} rounds of "
        f"{_STEPS.value} steps")
  state = agents.init_agent(configs.learner_from_config(config), jax.random.key(0))
  torch_step, torch_parts = torch_step_fn(config, torch.from_numpy(obs),
                                          torch.from_numpy(actions), state.params)
  jax_step, jax_parts, jax_hlo = jax_step_fn(config, obs, actions, state)
  counts = (sum(x.size for x in jax.tree.leaves(state.params)),
            sum(p.numel() for p in torch_step.params))
  print(f"parameters: jax {counts[0]}, torch {counts[1]}")
  if counts[0] != counts[1]:
    sys.exit("The torch twin's parameter count differs from ours: fix the twin first.")
  losses = float(jax_parts["forward: loss"]()), float(torch_parts["forward: loss"]())
  print(f"first loss: jax {losses[0]:.6f}, torch {losses[1]:.6f}")
  if not math.isclose(*losses, rel_tol=1e-4):
    sys.exit("The torch twin's loss differs from ours on the same weights: fix the twin.")
  rows = {"train step": (jax_step, torch_step)}
  if _COMPONENTS.value:
    rows.update({k: (jax_parts[k], torch_parts[k]) for k in jax_parts})
  table = []
  print(f"{'':<20}{'jax ms':>10}{'torch ms':>10}{'jax/torch':>11}")
  for name, (j, t) in rows.items():
    jax_s, torch_s = median_step_seconds(j, t, _ROUNDS.value, _STEPS.value)
    table.append({"what": name, "jax_ms": 1e3 * jax_s, "torch_ms": 1e3 * torch_s,
                  "jax_over_torch": jax_s / torch_s})
    print(f"{name:<20}{1e3 * jax_s:>10.1f}{1e3 * torch_s:>10.1f}{jax_s / torch_s:>11.2f}",
          flush=True)
  profile = None
  if _PROFILE.value:
    steps = _ROUNDS.value * _STEPS.value
    rows = op_profile.op_table(jax_hlo, op_profile.trace_op_seconds(jax_step, steps), steps)
    profile = {"ops_ms": sum(r["ms"] for r in rows), "shares": op_profile.summarise(rows),
               "top_ops": rows[:15]}
    print(f"\nOur step's XLA ops, traced over {steps} steps: {profile['ops_ms']:.1f} ms of "
          "op time per step (summed over threads); shares: " + ", ".join(
              f"{k} {v:.0%}" for k, v in sorted(profile["shares"].items())))
    print(f"{'ms':>6}{'share':>7}  {'phase':<9}{'output':<17}{'what':<30}where")
    for r in profile["top_ops"]:
      print(f"{r['ms']:>6.2f}{r['share']:>7.1%}  {r['phase']:<9}{r['shape'][:16]:<17}"
            f"{r['what'][:29]:<30}{r['where'][-45:]}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"config": {"batch": d.batch_size, "frames": d.frames,
                            "image_size": d.image_size, "dim": config.model.dim,
                            "encoder": config.model.encoder, "patch": config.model.patch,
                            "width": config.model.width, "depth": config.model.depth,
                            "inverse_weight": config.objective.inverse_weight,
                            "parameters": counts[0]},
                 "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads,
                 "jax": jax.__version__, "rounds": _ROUNDS.value, "steps": _STEPS.value,
                 "rows": table, "jax_profile": profile}, f, indent=1)
  assert all(math.isfinite(r["jax_ms"]) for r in table)


if __name__ == "__main__":
  app.run(main)
