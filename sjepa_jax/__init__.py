"""sjepa-jax: independent JEPA agents on views of one world, and the maps between them.

The entry points a notebook needs::

  import sjepa_jax as sj
  mountain = sj.load_agent("/tmp/mf", "mountain")         # a trained agent: .encode(obs)
  fit = sj.world_pairs(["mountain", "forest"], 3000)      # paired states, with labels
  m = sj.fit_map("ridge", forest.encode(fit.obs[1]), mountain.encode(fit.obs[0]))
  probe = sj.fit_classifier(mountain.encode(fit.obs[0]), fit.labels["class"], 9)
  sj.save("forest_to_mountain.npz", m)                    # the translation key, as a file

Submodules hold the rest: ``agents``, ``align``, ``probes``, ``study``, ``migrate``,
``world``, ``data``, ``exchange``. Bad input (a view name, a config value, a file) raises
``sj.UserError``, a ``ValueError`` whose message names the valid choices.
"""

from sjepa_jax.loading import Agent, load_agent, load_agents
from sjepa_jax.align import MAPS, LinearMap
from sjepa_jax.align import fit as fit_map
from sjepa_jax.data import world_pairs
from sjepa_jax.errors import UserError
from sjepa_jax.exchange import load, load_meta, save
from sjepa_jax.probes import Probe, fit_classifier, fit_regressor

__version__ = "0.1.0"
