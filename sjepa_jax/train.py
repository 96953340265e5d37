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
from typing import Any, NamedTuple, Sequence

from absl import logging
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjepa_jax import agents
from sjepa_jax import checkpointing
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import errors
from sjepa_jax import evaluation
from sjepa_jax import files
from sjepa_jax import loading
from sjepa_jax import losses
from sjepa_jax import metrics_io

def _flatten(d: dict) -> dict:
  return traverse_util.flatten_dict(d, sep=".")


# Config keys that may change between a run and its resumption; any other change is an error.
_RESUMABLE_CHANGES = ("num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                      "keep_steps", "max_steps_per_run", "eval.", "data.data_dir")


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
  if (list(meta["views"]) != roster.views or meta["seeds"] != roster.seeds
      or meta["hparams"] != roster.hparams):
    raise errors.UserError(f"Workdir {workdir!r} holds a run of views {meta['views']} with seeds "
                           f"{meta['seeds']} (swept values "
                           f"{meta['hparams']}), not {roster.views} with seeds "
                           f"{roster.seeds} ({roster.hparams}); use another workdir or the same "
                           "views, seeds and sweep.")
  old = _flatten(loading.config_from_meta(meta).to_dict())
  new = _flatten(config.to_dict())
  changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                   and not k.startswith(_RESUMABLE_CHANGES))
  if changed:
    raise errors.UserError(f"Workdir {workdir!r} holds a run with other settings for {changed}; "
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
  raise errors.UserError(f"Cannot split {num_agents} agents or a batch of {batch_size} over {n} "
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


def make_step(learner: agents.Learner, how: str, agent_sharding=None, batch_sharding=None,
              num_agents: int = 2):
  """The jitted step over all agents: (state, views, keys, step[, pixels[, hparams]]) ->
  (state, metrics); ``pixels`` is a dataset's train split on the device
  (``data.on_device``: its images, or a recording's frames and actions), shared by every
  agent (None: world); ``hparams`` each agent's swept values (``agents.stacked_hparams``).
  ``how`` is ``vmap`` or ``lax_map`` (``configs.agent_map``); ``step_function`` says more."""
  step = step_function(learner, how, batch_sharding, num_agents)
  if agent_sharding is None:
    jitted = jax.jit(step, donate_argnums=0)
  else:
    jitted = jax.jit(step, donate_argnums=0,
                     in_shardings=(agent_sharding,) * 3 + (None, None, agent_sharding),
                     out_shardings=(agent_sharding, agent_sharding))
  return lambda state, views, keys, step, pixels=None, hparams=None: jitted(
      state, views, keys, step, pixels, hparams or {})


def step_function(learner: agents.Learner, how: str = "vmap", batch_sharding=None,
                  num_agents: int = 2):
  """The step over all agents before jitting: (state, views, keys, step, pixels[,
  hparams]) -> (state, metrics); every argument but ``step`` and ``pixels`` has a leading
  agent axis.

  One agent skips the vmap: XLA's CPU backend runs a batched matmul with a batch of one
  slower than the plain matmul (benchmarks/vmap_agents.py, A = 1). Several agents run
  ``lax_map`` (one after another inside the program; faster on CPU) or ``vmap`` (batched;
  for GPU and TPU, and agents split over devices).
  """
  one = functools.partial(agents.train_step, learner, batch_sharding=batch_sharding)
  if num_agents == 1:
    squeeze = lambda t: jax.tree.map(lambda x: x[0], t)
    expand = lambda t: jax.tree.map(lambda x: x[None], t)
    return lambda s, v, k, i, p, h=None: expand(one(squeeze(s), squeeze(v), k[0], i, pixels=p,
                                                    hparams=squeeze(h or {})))
  if how == "lax_map":  # one at a time
    return lambda s, v, k, i, p, h=None: jax.lax.map(
        lambda a: one(*a[:3], i, pixels=p, hparams=a[3]), (s, v, k, h or {}))
  return lambda s, v, k, i, p, h=None: jax.vmap(
      lambda s, v, k, h: one(s, v, k, i, pixels=p, hparams=h))(s, v, k, h or {})


class NonFiniteError(errors.UserError, FloatingPointError):
  """A run whose losses or parameters became NaN or inf: a setting to change (a learning
  rate, a loss weight), not a bug, so a ``UserError``; a ``FloatingPointError`` too."""


def check_finite(metrics: dict[str, np.ndarray], names: Sequence[str], first: int,
                 last: int, latest_checkpoint: int | None) -> None:
  """Raises if any agent's metric is NaN or inf, naming the steps, agent and checkpoint."""
  bad = errors.first_nonfinite(metrics)
  if bad is not None:
    name, a = bad
    raise NonFiniteError(
        f"Non-finite {name} for agent {a} ({names[a]}) between steps {first} and {last}; "
        f"training stopped. Last good checkpoint: {_step_or_none(latest_checkpoint)}.")


def keep_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The steps ``config.keep_steps`` names, checked: integers from 1 to num_train_steps."""
  text = config.get("keep_steps", "") or ""
  steps = []
  for part in (p.strip() for p in str(text).split(",") if p.strip()):
    if not part.isdigit() or not 1 <= int(part) <= config.num_train_steps:
      raise errors.UserError(
          f"keep_steps={text!r}: {part!r} is not a step; give comma-separated integers from "
          f"1 to num_train_steps ({config.num_train_steps}).")
    steps.append(int(part))
  return tuple(sorted(set(steps)))


# --- The loop ----------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       views: Sequence[str] | str, seeds: int | Sequence[int] = 0,
                       sweep: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
  """Trains one agent per (view, seed, swept values) in ``workdir`` (resuming if it holds a
  checkpoint). ``sweep`` ({field: values}, ``agents.parse_sweep``) puts every combination
  of values of numeric fields on the agent axis of the same program.

  Returns the end-of-training probe report (also written to ``<workdir>/probe.json``).
  """
  configs.validate(config)
  keep_steps(config)
  views = data.parse_views(config, views)
  roster = agents.roster(views, seeds, sweep)
  if sweep:  # each swept value must make sense on its own
    for values in roster.hparams[:len(roster.hparams) // len(roster.views) or 1]:
      one = ml_collections.ConfigDict(config.to_dict())
      for field, value in values.items():
        group, name = field.split(".")
        one[group][name] = value
      configs.validate(one)
  config = data.resolve(config)
  # The data is read and checked before the workdir is touched: bad data leaves nothing.
  source = _source(config, roster)
  check_workdir(workdir)
  with hold_workdir(workdir):
    return _train_and_evaluate(config, workdir, views, roster, source)


class _Source(NamedTuple):
  """What the agents see: the source, their stacked views and keys, and a dataset's train
  split on the device (None for the world)."""
  source: data.Source
  views: Any
  keys: jax.Array
  pixels: Any  # images (N, H, W, 3), or a recording's recordings.OnDevice; every agent's
  eval_images: Any  # the evaluation split: images.Images or recordings.Recording
  described: dict | None  # a recording's parts, as source.json states them


def _source(config, roster: agents.Roster) -> _Source:
  src = data.source(config)
  train = data.load_images(src, src.train_split, roster.views)
  evaluation = data.load_images(src, src.eval_split, roster.views)
  described = None
  if src.kind == data.RECORDING:
    described = {"train": train.summary(), "eval": evaluation.summary()}
  return _Source(src, data.stack_views(src, roster.views),
                 agents.agent_keys(roster.seeds, roster.views), data.on_device(train),
                 evaluation, described)


def _restore_or_init(config, workdir: str, roster: agents.Roster,
                     initial: agents.AgentState, agent_sharding):
  """(checkpoint manager, state, first step): resumed from the newest intact checkpoint,
  damaged ones set aside, or fresh."""
  if jax.process_index() == 0:
    checkpointing.set_aside_damaged(workdir)
  if jax.process_count() > 1:  # every process sees the same checkpoints from here on
    multihost_utils.sync_global_devices("sjepa_checkpoints_checked")
  mngr = checkpointing.manager(workdir, config.keep_checkpoints, keep_steps(config))
  if mngr.latest_step() is None:
    return mngr, jax.tree.map(jnp.copy, initial), 0
  meta, _ = checkpointing.read_meta(workdir)
  check_resumable(meta, config, roster, workdir)
  abstract = jax.eval_shape(lambda: initial)
  if jax.process_count() > 1:  # each process reads only its own shards
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=agent_sharding), abstract)
  state, start = checkpointing.restore(mngr, abstract)
  logging.info("Resumed from step %d in %s.", start, workdir)
  return mngr, state, start


def _paired_states(src: data.Source, seed: int, views: Sequence[str], eval_images, which: int,
                   num: int) -> data.PairedSet:
  """Fixed paired states, the same for every run (``eval.seed``): ``which`` 0 for the
  running evaluation, 1 for the end-of-run probes; a dataset's at most its whole split."""
  if eval_images is not None:
    num = min(num, data.num_states(eval_images))
  key = jax.random.fold_in(jax.random.key(seed), which)
  return data.paired_set(src, key, data.stack_views(src, views), num, eval_images)


def _probe_states(config, source: _Source, views: Sequence[str]
                  ) -> tuple[data.PairedSet, int]:
  """The end-of-run probes' fixed paired states and how many of them fit the probes
  (``eval.probe_fit``): ``eval.probe_train`` fitting and ``eval.probe_test`` scoring states,
  each at most what its split holds. The training split is read again here rather than
  kept on the host through training beside its copy on the device."""
  e, src = config.eval, source.source
  if e.probe_fit != "train" or src.kind == data.WORLD:
    probe_set = _paired_states(src, e.seed, views, source.eval_images, 1,
                               e.probe_train + e.probe_test)
    return probe_set, evaluation.probe_train_size(config, probe_set.obs.shape[1])
  fit_images = data.load_images(src, src.train_split, views)
  n_fit = min(e.probe_train, data.num_states(fit_images))
  n_test = min(e.probe_test, data.num_states(source.eval_images))
  key = jax.random.fold_in(jax.random.key(e.seed), 1)
  return data.fit_and_score_set(src, key, data.stack_views(src, views), n_fit, n_test,
                                source.eval_images, fit_images), n_fit


def _train_and_evaluate(config, workdir, views, roster: agents.Roster, source: _Source
                        ) -> dict[str, Any]:
  """The run, once the config is checked, the data read and the workdir held."""
  # Setup: the learner (built once), devices, what the agents see.
  names = roster.names
  learner = configs.learner_from_config(agents.with_sweep_maxima(config, roster.hparams))
  hparams = agents.stacked_hparams(roster.hparams)
  agent_sharding, batch_sharding = shardings(len(names), config.data.batch_size)
  if source.described is not None and jax.process_index() == 0:
    files.write_json(source.described, os.path.join(workdir, data.SOURCE_FILE))

  # State: resumed from the newest intact checkpoint, or fresh.
  initial = agents.init_agents(learner, roster.views, roster.seeds)
  mngr, state, start = _restore_or_init(config, workdir, roster, initial, agent_sharding)
  stacked_views, keys, pixels = source.views, source.keys, source.pixels
  if agent_sharding is not None:
    state, stacked_views, keys, hparams = to_global((state, stacked_views, keys, hparams),
                                                    agent_sharding)
  if pixels is not None and jax.device_count() > 1:  # once, not a copy per step
    pixels = to_global(pixels, replicated(agent_sharding or batch_sharding))
  how = configs.agent_map(config, agent_sharding is not None)
  step_fn = make_step(learner, how, agent_sharding, batch_sharding, len(names))
  encode_all = evaluation.make_encoder(learner.model)

  # Evaluation: fixed paired states rendered once per view, on which the running
  # cross-agent CKA and every agent's latent spectrum are measured.
  view_index = np.asarray([views.index(v) for v in roster.views])
  eval_set = _paired_states(source.source, config.eval.seed, views, source.eval_images, 0,
                            evaluation.eval_set_size(config))
  reference = losses.isotropic_reference(eval_set.obs.shape[1], config.model.dim)

  main_process = jax.process_index() == 0  # one writer of event files and log lines
  writer = metrics_io.MetricWriter(workdir, enabled=main_process)
  if start == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  total = config.num_train_steps
  stop = total if config.max_steps_per_run <= 0 else min(total, start + config.max_steps_per_run)
  progress = metrics_io.Progress(total, enabled=main_process)
  last_logged = start
  kept = set(keep_steps(config))

  # Loop.
  with writer:
    for step in range(start, stop):
      state, metrics = step_fn(state, stacked_views, keys, step, pixels, hparams)
      done = step + 1
      if done % config.log_every == 0 or done == stop:
        metrics = jax.device_get(host_local(metrics))
        check_finite(metrics, names, last_logged, done, mngr.latest_step())
        last_logged = done
        scalars = {f"train/agent_{v}/{k}": float(m[a])
                   for k, m in metrics.items() for a, v in enumerate(names)}
        # After device_get: the steps have run, not just been queued.
        rate = progress(done, dict(zip(names, metrics["loss"].tolist())))
        if rate is not None:
          scalars["steps_per_sec"] = rate
        z = encode_all(host_local(state.params), eval_set.obs, view_index)
        scalars.update(evaluation.spectrum_scalars(z, names, reference))
        if len(names) > 1:
          scalars.update(evaluation.alignment_scores(z, names))
        writer.write_scalars(done, scalars)
      if done % config.checkpoint_every == 0 or done == stop or done in kept:
        _save_if_finite(mngr, done, state, config, roster)
    mngr.wait_until_finished()

    # The end-of-run probes, trained against random-init.
    report = {}
    if stop == total:
      probe_set, n_fit = _probe_states(config, source, views)
      report = evaluation.probe_report(
          config, encode_all, state._replace(params=host_local(state.params)), initial,
          probe_set, n_fit, view_index, names)
      writer.write_scalars(total, {f"probe/agent_{v}/{k}": x
                                   for v, r in report.items() for k, x in r.items()})
      if main_process:
        files.write_json(report, os.path.join(workdir, "probe.json"))
  mngr.close()
  return report


def _save_if_finite(mngr, step, state, config, roster: agents.Roster) -> None:
  """Saves a checkpoint only if every agent's parameters are finite."""
  finite = jax.vmap(lambda p: jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])))(state.params)
  bad = errors.first_nonfinite({"parameters": np.where(np.asarray(host_local(finite)), 0.0, np.nan)})
  if bad is not None:
    raise NonFiniteError(
        f"Non-finite parameters for agent {bad[1]} ({roster.names[bad[1]]}) at step {step}; "
        f"not saved, training stopped. Last good checkpoint: "
        f"{_step_or_none(mngr.latest_step())}.")
  checkpointing.save(mngr, step, state, config, roster.views, roster.seeds, roster.names,
                     roster.hparams)


def _step_or_none(step: int | None) -> str:
  return "none yet" if step is None else f"step {step}"
