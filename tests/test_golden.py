"""Golden numbers: one agent's train step on a fixed batch and key, against committed values.

Equivalence tests (vmap equals a loop, a resumed run equals a straight one) hold however a
loss is scaled; these numbers do not. A change that moves one is either a bug or a change
of the objective on purpose: then regenerate them (``python -m tests.test_golden``, which
prints the dict to paste) and say why in the commit.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sjepa_jax import agents
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import world
from tests.conftest import tiny_config

# Every JEPA term on: prediction, inverse dynamics, VICReg, token and seq-JEPA prediction
# (online target); then SIGReg, the EMA target and a masked token block. Weighed so that each
# term is at least 4% of the loss: a term 1% larger moves the loss by 4e-4 of itself or more,
# far past the tolerance (the test checks this for every weight).
CASES = {
    "vicreg": {"objective.inverse_weight": 1.0, "objective.covariance_weight": 4.0,
               "objective.token_weight": 1.0, "objective.seq_weight": 1.0},
    "sigreg": {"objective.regularizer": "sigreg", "objective.target": "ema",
               "objective.sigreg_directions": 16, "objective.inverse_weight": 1.0,
               "objective.token_weight": 1.0, "objective.mask_blocks": 1},
}
RTOL, ATOL = 1e-5, 1e-8

# From ``python -m tests.test_golden`` (jax 0.10.2, CPU).
GOLDEN = {
    'vicreg': {
        'copy_prediction': 0.715618371963501,
        'embedding_std': 0.5632661581039429,
        'grad_norm': 34.3644905090332,
        'inverse_dynamics': 2.00028657913208,
        'loss': 7.09421968460083,
        'masked_fraction': 1.0,
        'prediction': 0.92029869556427,
        'seq_prediction': 1.1887935400009155,
        'target_update_norm': 0.00033750099828466773,
        'token_prediction': 2.2186057567596436,
        'update_norm': 0.1305236667394638,
        'vicreg_covariance': 0.08239780366420746,
        'vicreg_variance': 0.43664389848709106,
    },
    'sigreg': {
        'copy_prediction': 0.715618371963501,
        'embedding_std': 0.5632661581039429,
        'grad_norm': 11.761724472045898,
        'inverse_dynamics': 2.00028657913208,
        'loss': 5.523628234863281,
        'masked_fraction': 0.25,
        'prediction': 0.92029869556427,
        'sigreg': 11.656777381896973,
        'target_update_norm': 0.0003378940746188164,
        'token_prediction': 2.0202038288116455,
        'update_norm': 0.11545167118310928,
    },
}


def _config(case: str):
  config = tiny_config()
  config.optim.warmup_steps = 0  # the first step updates at the peak learning rate
  for field, value in CASES[case].items():
    group, name = field.split(".")
    config[group][name] = value
  return config


def _batch(config) -> data.Batch:
  """A fixed batch, from NumPy's generator: no rendering, so only the step is pinned."""
  rng = np.random.default_rng(0)
  d = config.data
  obs = rng.random((d.batch_size, d.frames, d.image_size, d.image_size, 3), np.float32)
  actions = rng.normal(size=(d.batch_size, d.frames - 1, 2)).astype(np.float32)
  return data.Batch(jnp.asarray(obs), jnp.asarray(actions))


def _weights(config) -> dict[str, float]:
  """The case's loss weights that are on, by their sweepable field names."""
  fields = [f for f in agents.SWEEPABLE if f.endswith("_weight")]
  o = config.objective
  weights = {f: o[f.split(".")[1]] for f in fields if o[f.split(".")[1]] > 0}
  if o.regularizer != "vicreg":
    weights = {f: w for f, w in weights.items() if "variance" not in f and "covariance" not in f}
  if o.regularizer != "sigreg":
    weights.pop("objective.sigreg_weight", None)
  return weights


def step_numbers(case: str):
  """``(numbers(weights), weights)``: every metric of a fresh agent's first train step with
  the loss weights ``weights`` (values, so one compiled step serves any), and how far it
  moved the online networks and the target."""
  config = _config(case)
  batch = _batch(config)
  learner = dataclasses.replace(configs.learner_from_config(config),
                                sample=lambda key, view, pixels: batch)
  key = agents.agent_keys(0, ["forest"])[0]
  state = agents.init_agent(learner, key)
  step = jax.jit(lambda s, hparams: agents.train_step(
      learner, s, world.get_view("forest"), key, jnp.int32(0), hparams=hparams))
  moved = lambda a, b: float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))

  def numbers(weights):
    new, metrics = step(state, {k: jnp.float32(v) for k, v in weights.items()})
    out = {k: float(v) for k, v in metrics.items()}
    out["update_norm"] = moved(new.params, state.params)
    out["target_update_norm"] = moved(new.target, state.target)
    return out

  return numbers, _weights(config)


@pytest.mark.parametrize("case", list(CASES))
def test_one_train_step_gives_the_committed_numbers(case):
  numbers, weights = step_numbers(case)
  got = numbers(weights)
  assert sorted(got) == sorted(GOLDEN[case])  # no term gained or lost
  for name, expected in GOLDEN[case].items():
    np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)
  # ... and would catch any one term weighed 1% more.
  for field, weight in weights.items():
    scaled = numbers({**weights, field: 1.01 * weight})
    assert not all(np.isclose(scaled[k], v, rtol=RTOL, atol=ATOL)
                   for k, v in GOLDEN[case].items()), f"{field} x 1.01 goes unnoticed"


if __name__ == "__main__":
  print("GOLDEN = {")
  for c in CASES:
    print(f"    {c!r}: {{")
    numbers, weights = step_numbers(c)
    for k, v in sorted(numbers(weights).items()):
      print(f"        {k!r}: {v!r},")
    print("    },")
  print("}")
