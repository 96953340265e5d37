"""The library as a notebook meets it: agents print in a line, loading says nothing, files
keep what they were given, and bad input is one class of error."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sjepa_jax as sj
from sjepa_jax import agents
from sjepa_jax import align
from sjepa_jax import checkpointing
from sjepa_jax import configs
from sjepa_jax import errors
from sjepa_jax import loading
from sjepa_jax import world
from tests.conftest import init_agents, tiny_config

VIEWS = ["mountain", "forest"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Two fresh agents saved as a training run would save them at step 3 (no training)."""
  workdir = str(tmp_path_factory.mktemp("saved") / "run")
  config = tiny_config()
  mngr = checkpointing.manager(workdir)
  checkpointing.save(mngr, 3, init_agents(config, VIEWS), config, VIEWS, [0, 0], VIEWS,
                     [{}, {}])
  mngr.wait_until_finished()
  mngr.close()
  return workdir


def test_an_agent_prints_in_one_line_naming_it_never_its_parameters(saved):
  agent = sj.load_agent(saved, "forest")
  text = repr(agent)
  assert text == ("Agent(name='forest', view='forest', seed=0, kind='jepa', step=3, dim=16, "
                  f"image=16x16, params={sum(x.size for x in jax.tree.leaves(agent.params)):,})")
  assert str(agent) == text and "\n" not in text and "Array" not in text
  swept = loading.Agent("forest_lr0.001", "forest", 0, "jepa", agent.model, agent.params, 16, 2,
                       hparams={"optim.lr": 0.001})
  assert repr(swept).endswith(", lr=0.001)")


def test_loading_agents_logs_nothing(saved, caplog, capfd):
  """Orbax warned eight times ("read only") for two agents loaded one by one."""
  with caplog.at_level(logging.INFO):
    loaded = [sj.load_agent(saved, v) for v in VIEWS] + sj.load_agents(saved)
  assert [a.name for a in loaded] == VIEWS + VIEWS
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
  assert capfd.readouterr() == ("", "")


def test_a_saved_map_keeps_everything_its_caller_said(tmp_path):
  x = jax.random.normal(jax.random.key(0), (40, 4))
  m = sj.fit_map("ridge", x, 2 * x)
  path = str(tmp_path / "forest_to_mountain.npz")
  meta = {"source": {"name": "forest", "seed": 0}, "target": "mountain", "n_fit": 40,
          "held_out_r2": np.float32(0.5), "rho": jnp.asarray([1.0, 0.5]), "note": None,
          "views": ["forest", "mountain"], "whitened": True}
  sj.save(path, m, **meta)
  assert sj.load_meta(path) == {"kind": "map", **meta, "held_out_r2": 0.5, "rho": [1.0, 0.5]}
  with pytest.raises(errors.UserError, match=r"meta keys \['kind'\] are the file's own"):
    sj.save(str(tmp_path / "other.npz"), m, kind="ridge")
  with pytest.raises(errors.UserError, match="meta agent=<object .* cannot be saved as JSON"):
    sj.save(str(tmp_path / "other.npz"), m, agent=object())
  assert sorted(p.name for p in tmp_path.iterdir()) == ["forest_to_mountain.npz"]


def _unknown_agent_map():
  config = tiny_config()
  config.agent_map = "pmap"
  configs.validate(config)


@pytest.mark.parametrize("bad_input", [
    lambda: world.parse_views("mountain,lake"),
    lambda: agents.parse_sweep(["model.dim=32,64"]),
    lambda: align.fit("affine", jnp.zeros((8, 2)), jnp.zeros((8, 2))),
    _unknown_agent_map,
])
def test_bad_input_raises_user_error_a_value_error(bad_input):
  with pytest.raises(errors.UserError) as info:
    bad_input()
  assert isinstance(info.value, ValueError) and "valid" in str(info.value)
  assert sj.UserError is errors.UserError
