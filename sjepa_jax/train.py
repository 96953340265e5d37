"""The training loop: A agents, one per view, trained independently in one jitted program.

``train_and_evaluate(config, workdir, views, seeds)`` trains, logs, checkpoints, resumes
from the latest checkpoint, and ends with a linear probe of each agent's frozen latents
beside the same probe on its untrained (random-init) encoder. Every (view, seed) pair is one
agent on the agent axis, so several seeds train in the same program.

Shapes: A = agents, N = evaluation states, D = latent size.
"""

import contextlib
import functools
import os
from typing import Any, Sequence

from absl import logging
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjepa_jax import agents
from sjepa_jax import align
from sjepa_jax import checkpointing
from sjepa_jax import data
from sjepa_jax import losses
from sjepa_jax import metrics_io
from sjepa_jax import probes

def _flatten(d: dict) -> dict:
  return traverse_util.flatten_dict(d, sep=".")


# Config keys that may change between a run and its resumption; any other change is an error.
_RESUMABLE_CHANGES = ("num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                      "max_steps_per_run", "eval.", "data.data_dir")


# --- Setup checks ------------------------------------------------------------------------

def check_workdir(workdir: str) -> None:
  """Creates ``workdir`` or fails with a clear message if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"Cannot create workdir {workdir!r}: {e.strerror}.") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise PermissionError(f"Workdir {workdir!r} is not writable.")


def check_resumable(meta: dict, config: ml_collections.ConfigDict, roster: agents.Roster,
                    workdir: str) -> None:
  """Refuses to resume a checkpoint made with other views, seeds or model settings."""
  if list(meta["views"]) != roster.views or agents.meta_seeds(meta) != roster.seeds:
    raise ValueError(f"Workdir {workdir!r} holds a run of views {meta['views']} with seeds "
                     f"{agents.meta_seeds(meta)}, not {roster.views} with seeds "
                     f"{roster.seeds}; use another workdir or the same views and seeds.")
  old = _flatten(agents.config_from_meta(meta).to_dict())
  new = _flatten(config.to_dict())
  changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                   and not k.startswith(_RESUMABLE_CHANGES))
  if changed:
    raise ValueError(f"Workdir {workdir!r} holds a run with other settings for {changed}; "
                     "use another workdir to train with new settings.")


@contextlib.contextmanager
def hold_workdir(workdir: str):
  """One trainer per workdir: process 0 holds ``<workdir>/.lock`` for the block, and every
  process of a multi-process run learns whether it got it."""
  with contextlib.ExitStack() as stack:
    error = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(checkpointing.workdir_lock(workdir))
      except checkpointing.WorkdirLockedError as e:
        error = e
    if jax.process_count() > 1:
      held = multihost_utils.broadcast_one_to_all(np.int32(error is None))
      if not held and error is None:
        error = checkpointing.WorkdirLockedError(
            f"Workdir {workdir!r} is in use by another trainer (process 0 names it).")
    if error is not None:
      raise error
    yield


# --- Devices -----------------------------------------------------------------------------

def shardings(num_agents: int, batch_size: int):
  """(agent-axis sharding, batch sharding) for the devices present; None when unsharded.

  Agents are split over devices when their number divides evenly; otherwise each agent's
  batch is split, and batch statistics (VICReg, SIGReg) stay global because they are plain
  means under ``jit``.
  """
  n = jax.device_count()
  if n == 1:
    return None, None
  # Auto axes: XLA propagates shardings through the renderer's gathers on its own.
  mesh = jax.make_mesh((n,), ("devices",), axis_types=(jax.sharding.AxisType.Auto,))
  if num_agents % n == 0:
    return jax.NamedSharding(mesh, jax.P("devices")), None
  if batch_size % n == 0:
    return jax.NamedSharding(mesh, jax.P()), jax.NamedSharding(mesh, jax.P("devices"))
  raise ValueError(f"Cannot split {num_agents} agents or a batch of {batch_size} over {n} "
                   f"devices: choose data.batch_size divisible by {n}, or a number of views "
                   f"divisible by {n}.")


def to_global(tree: Any, sharding: jax.NamedSharding) -> Any:
  """Places values every process holds whole (the same on each) on ``sharding``: each
  process hands over only the shards of its own devices, so nothing crosses hosts. One
  process: a plain ``device_put``. PRNG key arrays travel as their raw key data."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # global already (restored)
      return x
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(one, tree)


def host_local(tree: Any) -> Any:
  """Whole values on this process: gathered from every process's shards when there are
  several (a collective: every process calls it), unchanged when there is one."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.process_allgather(tree, tiled=True)


def replicated(sharding: jax.NamedSharding) -> jax.NamedSharding:
  """The same mesh, every device holding a whole copy (a dataset's images)."""
  return jax.NamedSharding(sharding.mesh, jax.P())


def make_step(config: ml_collections.ConfigDict, agent_sharding, batch_sharding,
              num_agents: int = 2):
  """The jitted step over all agents: (state, views, keys, step[, pixels]) -> (state,
  metrics); ``pixels`` are a dataset's train images, shared by every agent (None: world).
  ``step_function`` says how the agents share it."""
  step = step_function(config, batch_sharding, num_agents, agent_sharding is not None)
  if agent_sharding is None:
    jitted = jax.jit(step, donate_argnums=0)
  else:
    jitted = jax.jit(step, donate_argnums=0, in_shardings=(agent_sharding,) * 3 + (None, None),
                     out_shardings=(agent_sharding, agent_sharding))
  return lambda state, views, keys, step, pixels=None: jitted(state, views, keys, step, pixels)


def step_function(config: ml_collections.ConfigDict, batch_sharding=None, num_agents: int = 2,
                  agents_sharded: bool = False):
  """The step over all agents before jitting: (state, views, keys, step, pixels) -> (state,
  metrics).

  One agent skips the vmap: XLA's CPU backend runs a batched matmul with a batch of one
  about 1.4x slower than the plain matmul (benchmarks/vmap_agents.py, A = 1). Several
  agents run as ``agents.agent_map(config)`` says: ``lax_map`` (one after another inside
  the program; measured faster than vmap on 2 CPU cores) or ``vmap`` (batched; for GPU and
  TPU, and agents split over devices); ``auto`` picks by ``jax.default_backend()``.
  """
  one = functools.partial(agents.train_step, config=config, batch_sharding=batch_sharding)
  if num_agents == 1:
    squeeze = lambda t: jax.tree.map(lambda x: x[0], t)
    expand = lambda t: jax.tree.map(lambda x: x[None], t)
    step = lambda s, v, k, i, p: expand(one(squeeze(s), squeeze(v), k[0], i, pixels=p))
  elif agents.agent_map(config, agents_sharded) == "lax_map":  # one at a time
    step = lambda s, v, k, i, p: jax.lax.map(lambda a: one(*a, i, pixels=p), (s, v, k))
  else:
    step = jax.vmap(lambda s, v, k, i, p: one(s, v, k, i, pixels=p),
                    in_axes=(0, 0, 0, None, None))
  return step


# --- Evaluation --------------------------------------------------------------------------

def make_encoder(config: ml_collections.ConfigDict):
  """``(params, obs (U, N, H, W, 3), index (A,)) -> (A, N, D)``: agent ``a`` encodes the
  states as seen from view ``index[a]`` (``agents.encode_chunked``)."""
  return lambda params, obs, index: agents.encode_chunked(config, params["encoder"], obs, index)


# Rank metrics need many more states than dimensions: N = 8 D keeps isotropic Gaussian
# latents' effective rank above 0.9 D (at N = D / 2 it is below D / 2).
RANK_STATES_PER_DIM = 8


def eval_set_size(config: ml_collections.ConfigDict) -> int:
  """Paired states for the running evaluation: ``eval.alignment_pairs``, or 8 D if more."""
  return max(config.eval.alignment_pairs, RANK_STATES_PER_DIM * config.model.dim)


@jax.jit
def _spectra(z_AxNxD):
  return jax.vmap(losses.spectrum_stats)(z_AxNxD)


def spectrum_scalars(z_AxNxD: jax.Array, names: Sequence[str],
                     reference: dict[str, float]) -> dict[str, float]:
  """Each agent's ``losses.spectrum_stats`` on the evaluation states, and beside them under
  ``train/isotropic_reference/`` those of isotropic Gaussian latents of the same N and D."""
  stats = jax.device_get(_spectra(z_AxNxD))
  out = {f"train/agent_{v}/{k}": float(x[a]) for k, x in stats.items()
         for a, v in enumerate(names)}
  out.update({f"train/isotropic_reference/{k}": x for k, x in reference.items()})
  return out


def alignment_scores(z_AxNxD: jax.Array, names: Sequence[str]) -> dict[str, float]:
  """Unbiased linear CKA between every pair of agents on the paired set."""
  scores = {}
  for a in range(len(names)):
    for b in range(a + 1, len(names)):
      cka = float(align.linear_cka_unbiased(z_AxNxD[a], z_AxNxD[b]))
      scores[f"align/{names[a]}_to_{names[b]}/cka"] = cka
  return scores


def probe_report(config: ml_collections.ConfigDict, encode_all, state: agents.AgentState,
                 initial: agents.AgentState, probe_set: data.PairedSet, index: np.ndarray,
                 names: Sequence[str]) -> dict[str, dict[str, float]]:
  """``probes.evaluate`` of every agent, trained vs random-init: held-out class accuracy,
  position R^2 (the world only) and the class probe's final gradient norm; agent ``a`` sees
  the probe states from view ``index[a]`` of ``probe_set``."""
  n_train = probe_train_size(config, probe_set.obs.shape[1])
  report = {}
  for name, s in (("trained", state), ("random_init", initial)):
    z = encode_all(s.params, probe_set.obs, index)
    for a, view in enumerate(names):
      scores = probes.evaluate(z[a], probe_set.labels, n_train, probe_set.num_classes,
                               config.eval.probe_steps)[2]
      report.setdefault(view, {}).update({f"{name}/{k}": v for k, v in scores.items()})
  return report


def probe_train_size(config: ml_collections.ConfigDict, available: int) -> int:
  """Probe training states out of ``available``: ``eval.probe_train``, or the same share of
  a dataset split smaller than ``eval.probe_train + eval.probe_test``."""
  e = config.eval
  if available >= e.probe_train + e.probe_test:
    return e.probe_train
  return int(available * e.probe_train / (e.probe_train + e.probe_test))


def check_finite(metrics: dict[str, np.ndarray], names: Sequence[str], first: int,
                 last: int, latest_checkpoint: int | None) -> None:
  """Raises if any agent's metric is NaN or inf, naming the steps, agent and checkpoint."""
  for name, values in metrics.items():
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      raise FloatingPointError(
          f"Non-finite {name} for agent {bad[0]} ({names[bad[0]]}) between steps {first} and "
          f"{last}; training stopped. Last good checkpoint: {_step_or_none(latest_checkpoint)}.")


# --- The loop ----------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       views: Sequence[str] | str, seeds: int | Sequence[int] = 0
                       ) -> dict[str, Any]:
  """Trains one agent per (view, seed) in ``workdir`` (resuming if it holds a checkpoint).

  Returns the end-of-training probe report (also written to ``<workdir>/probe.json``).
  """
  agents.validate(config)
  views = data.parse_views(config, views)
  roster = agents.roster(views, seeds)
  check_workdir(workdir)
  with hold_workdir(workdir):
    return _train_and_evaluate(config, workdir, views, roster)


def _train_and_evaluate(config, workdir, views, roster: agents.Roster) -> dict[str, Any]:
  """The run, once the config is checked and the workdir held."""
  # Setup.
  names = roster.names
  agent_sharding, batch_sharding = shardings(len(names), config.data.batch_size)
  stacked_views = data.stack_views(config, roster.views)
  train_images = data.load_images(config, config.data.train_split)
  eval_images = data.load_images(config, config.data.eval_split)
  pixels = None if train_images is None else jnp.asarray(train_images.pixels)
  keys = agents.agent_keys(roster.seeds, roster.views)

  # Model and checkpoint: resume from the latest checkpoint when there is one.
  initial = agents.init_agents(config, roster.views, roster.seeds)
  if jax.process_index() == 0:
    checkpointing.set_aside_damaged(workdir)
  if jax.process_count() > 1:  # every process sees the same checkpoints from here on
    multihost_utils.sync_global_devices("sjepa_checkpoints_checked")
  mngr = checkpointing.manager(workdir, config.keep_checkpoints)
  start = 0
  if mngr.latest_step() is not None:
    meta, _ = checkpointing.read_meta(workdir)
    check_resumable(meta, config, roster, workdir)
    abstract = jax.eval_shape(lambda: initial)
    if jax.process_count() > 1:  # each process reads only its own shards
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                             sharding=agent_sharding), abstract)
    state, start = checkpointing.restore(mngr, abstract)
    logging.info("Resumed from step %d in %s.", start, workdir)
  else:
    state = jax.tree.map(jnp.copy, initial)
  if agent_sharding is not None:
    state, stacked_views, keys = to_global((state, stacked_views, keys), agent_sharding)
  if pixels is not None and jax.device_count() > 1:  # once, not a copy per step
    pixels = to_global(pixels, replicated(agent_sharding or batch_sharding))
  step_fn = make_step(config, agent_sharding, batch_sharding, len(names))
  encode_all = make_encoder(config)

  # Evaluation data: fixed paired states, the same for every run, rendered once per view:
  # the running cross-agent CKA and every agent's latent spectrum are measured on them.
  e = config.eval
  eval_key = jax.random.key(e.seed)
  eval_views = data.stack_views(config, views)
  view_index = np.asarray([views.index(v) for v in roster.views])
  num = eval_set_size(config)
  if eval_images is not None:
    num = min(num, len(eval_images.labels))
  eval_set = data.paired_set(config, jax.random.fold_in(eval_key, 0), eval_views, num,
                             eval_images)
  reference = losses.isotropic_reference(num, config.model.dim)

  main_process = jax.process_index() == 0  # one writer of event files and log lines
  writer = metrics_io.MetricWriter(workdir, enabled=main_process)
  if start == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  total = config.num_train_steps
  stop = total if config.max_steps_per_run <= 0 else min(total, start + config.max_steps_per_run)
  progress = metrics_io.Progress(total, enabled=main_process)
  last_logged = start

  # Loop.
  with writer:
    for step in range(start, stop):
      state, metrics = step_fn(state, stacked_views, keys, step, pixels)
      done = step + 1
      if done % config.log_every == 0 or done == stop:
        metrics = jax.device_get(host_local(metrics))
        check_finite(metrics, names, last_logged, done, mngr.latest_step())
        last_logged = done
        scalars = {f"train/agent_{v}/{k}": float(m[a])
                   for k, m in metrics.items() for a, v in enumerate(names)}
        rate = progress(done)  # after device_get: the steps have run, not just been queued
        if rate is not None:
          scalars["steps_per_sec"] = rate
        z = encode_all(host_local(state.params), eval_set.obs, view_index)
        scalars.update(spectrum_scalars(z, names, reference))
        if len(names) > 1:
          scalars.update(alignment_scores(z, names))
        writer.write_scalars(done, scalars)
      if done % config.checkpoint_every == 0 or done == stop:
        _save_if_finite(mngr, done, state, config, roster)
    mngr.wait_until_finished()

    report = {}
    if stop == total:
      num = e.probe_train + e.probe_test
      if eval_images is not None:  # a dataset: every image of its evaluation split at most
        num = min(num, len(eval_images.labels))
      probe_set = data.paired_set(config, jax.random.fold_in(eval_key, 1), eval_views, num,
                                  eval_images)
      report = probe_report(config, encode_all, state._replace(params=host_local(state.params)),
                            initial, probe_set, view_index, names)
      writer.write_scalars(total, {f"probe/agent_{v}/{k}": x
                                   for v, r in report.items() for k, x in r.items()})
      if jax.process_index() == 0:
        checkpointing.write_json(report, os.path.join(workdir, "probe.json"))
  mngr.close()
  return report


def _save_if_finite(mngr, step, state, config, roster: agents.Roster) -> None:
  """Saves a checkpoint only if every agent's parameters are finite."""
  finite = jax.vmap(lambda p: jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])))(state.params)
  finite = np.asarray(host_local(finite))
  if not finite.all():
    bad = int(np.flatnonzero(~finite)[0])
    raise FloatingPointError(
        f"Non-finite parameters for agent {bad} ({roster.names[bad]}) at step {step}; not saved, "
        f"training stopped. Last good checkpoint: {_step_or_none(mngr.latest_step())}.")
  checkpointing.save(mngr, step, state, config, roster.views, roster.seeds)


def _step_or_none(step: int | None) -> str:
  return "none yet" if step is None else f"step {step}"
