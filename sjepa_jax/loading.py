"""Trained agents read back: ``load_agent(workdir, view)`` gives an ``Agent`` (its name,
view, seed, model and parameters, no optimiser state) with ``encode(obs)``; ``load_agents``
every agent of a run.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjepa_jax import agents
from sjepa_jax import checkpointing
from sjepa_jax import configs
from sjepa_jax import errors
from sjepa_jax import models

PyTree = Any


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """The config a saved run trained with; a setting added since reads as what the run did
  (``configs.ADDED``)."""
  config = ml_collections.ConfigDict(meta["config"])
  for field, value in configs.ADDED.items():
    group, name = field.split(".")
    if group in config and name not in config[group]:
      config[group][name] = value
  return config


@dataclasses.dataclass(frozen=True, repr=False)
class Agent:
  """One trained agent: who it is, its networks and their parameters (no optimiser state).

  ``encode(obs)`` gives its latents; ``initial_params()`` the same networks at
  initialisation (the random-init control). It prints in one line, never its parameters.
  """
  name: str
  view: str
  seed: int
  kind: str  # its objective: jepa, autoencoder or supervised
  model: models.WorldModel
  params: PyTree
  image_size: int
  action_dim: int
  workdir: str = ""
  step: int = 0
  hparams: dict = dataclasses.field(default_factory=dict, compare=False)  # its swept values
  # The run's config, for provenance (what trained it); nothing above reads it.
  config: ml_collections.ConfigDict | None = dataclasses.field(default=None, compare=False,
                                                               repr=False)

  def __repr__(self) -> str:
    size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
    return (f"Agent(name={self.name!r}, view={self.view!r}, seed={self.seed}, "
            f"kind={self.kind!r}, step={self.step}, dim={self.model.encoder.dim}, "
            f"image={self.image_size}x{self.image_size}, params={size:,}"
            f"{agents.hparams_label(self.hparams).replace(' ', ', ')})")

  def encode(self, obs: jax.Array, chunk: int = 256) -> jax.Array:
    """Latents of observations (N, H, W, 3) float in [0, 1] -> (N, D)."""
    return models.encode_chunked(self.model, self.params["encoder"], jnp.asarray(obs), chunk=chunk)

  def initial_params(self) -> PyTree:
    """Its parameters before training: a function of its seed and view alone."""
    key = agents.agent_keys(self.seed, [self.view])[0]
    return agents.init_params(self.model, key, self.image_size, self.action_dim)


def load_agents(workdir: str, step: int | None = None) -> list[Agent]:
  """Every agent of the training run in ``workdir`` at ``step`` (default: the newest intact
  checkpoint), in the run's order; only their parameters are read."""
  meta, step = checkpointing.read_meta(workdir, step)
  config = config_from_meta(meta)
  views, seeds, hparams = meta["views"], meta["seeds"], meta["hparams"]
  learner = configs.learner_from_config(agents.with_sweep_maxima(config, hparams))
  abstract = jax.eval_shape(lambda: agents.init_agents(learner, views, seeds).params)
  mngr = checkpointing.reader(workdir)
  params, _ = checkpointing.restore_params(mngr, abstract, step)
  mngr.close()
  return [Agent(name, v, s, config.objective.kind, learner.model,
                jax.tree.map(lambda x, a=a: x[a], params), learner.image_size,
                learner.action_dim, workdir=workdir, step=step, hparams=h, config=config)
          for a, (name, v, s, h) in enumerate(zip(meta["names"], views, seeds, hparams))]


def load_agent(workdir: str, view: str, seed: int | None = None, step: int | None = None
               ) -> Agent:
  """One trained agent by view (and ``seed`` where the run trained the view with several),
  or by its name (``mountain_s1_inverse_weight4`` in a sweep)."""
  meta, _ = checkpointing.read_meta(workdir, step)
  views, seeds, names = meta["views"], meta["seeds"], meta["names"]
  held = [i for i, (v, s) in enumerate(zip(views, seeds)) if v == view and seed in (None, s)]
  if view in names and view not in views:
    held = [names.index(view)]
  if len(held) != 1:
    have = ", ".join(names)
    what = "No agent" if not held else "Several agents (give seed=, or a name)"
    raise errors.UserError(f"{what} for view {view!r}{'' if seed is None else f' seed {seed}'} in "
                           f"{workdir!r}; it holds {have}.")
  return load_agents(workdir, step)[held[0]]
