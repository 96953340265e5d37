"""The library as a notebook meets it: bad input is one class of error."""

import jax.numpy as jnp
import pytest

import sjepa_jax as sj
from sjepa_jax import agents
from sjepa_jax import align
from sjepa_jax import errors
from sjepa_jax import world
from tests.conftest import tiny_config


def _unknown_agent_map():
  config = tiny_config()
  config.agent_map = "pmap"
  agents.validate(config)


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
