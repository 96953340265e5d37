"""Checkpoints kept for the study along training, and the study at each of them."""

import os

import jax
import numpy as np
import pytest

from sjepa_jax import emergence
from sjepa_jax import loading
from sjepa_jax import models
from sjepa_jax import shared
from sjepa_jax import study
from sjepa_jax import train
from tests.conftest import tiny_config


@pytest.mark.slow
def test_keep_steps_are_saved_and_never_deleted_and_emergence_reads_them(tmp_path,
                                                                        monkeypatch):
  config = tiny_config()
  config.num_train_steps, config.checkpoint_every, config.keep_checkpoints = 4, 4, 1
  config.keep_steps = "1,2"
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, "mountain,forest")
  assert emergence.saved_steps(workdir) == [1, 2, 4]

  report = emergence.run(workdir, [0, 2, 4], n_fit=64, n_test=32, probe_steps=5)
  assert [e["step"] for e in report["by_step"]] == [0, 2, 4]
  for entry in report["by_step"]:
    assert {(p["source"], p["target"]) for p in entry["pairs"]} == {
        ("mountain", "forest"), ("forest", "mountain")}
    assert set(entry["agents"]) == {"mountain", "forest"}
  # Step 0 is the agents' own initialisation: the same decomposition from their initial
  # parameters, on the same paired states.
  last = loading.load_agents(workdir)
  roles = study.assign_roles(last)
  k_states, k_overlap = jax.random.split(jax.random.key(report["seed"]))
  paired = study.paired_states(study.source_config(roles.used(), None), roles, roles.used(),
                               64, 32, k_states, k_overlap)
  z = {a.view: models.encode_chunked(a.model, a.initial_params()["encoder"],
                                     paired.obs[(a.view, a.image_size)]) for a in last}
  d = shared.summary(shared.decompose(z["forest"][:64], z["mountain"][:64],
                                      z["forest"][64:], z["mountain"][64:], jax.random.key(0)))
  first = next(p for p in report["by_step"][0]["pairs"]
               if (p["source"], p["target"]) == ("mountain", "forest"))
  assert first["k_null"] == d["k_null"]
  np.testing.assert_allclose(first["r2_ridge"], d["r2_ridge"], atol=1e-5)
  np.testing.assert_allclose(first["gap_curve"], d["curve"]["gap"][:emergence.CURVE_K],
                             atol=1e-5)
  if first["k_iso"]:
    assert first["gap_curve"][first["k_iso"] - 1] == pytest.approx(first["gap_k_iso"])
  trained = next(p for p in report["by_step"][2]["pairs"]
                 if (p["source"], p["target"]) == ("mountain", "forest"))
  assert trained["r2_ridge"] != pytest.approx(first["r2_ridge"], abs=1e-4)
  assert set(report["summary"]["probes"]) == {"0", "2", "4"}

  with pytest.raises(ValueError, match=r"No checkpoint at step\(s\) \[3\].*saved steps: 1, 2, 4"):
    emergence.run(workdir, [0, 3], n_fit=64, n_test=32)

  # A rerun reuses the steps an earlier report of the same run holds, and studies the rest.
  studied, original = [], emergence.at_step
  monkeypatch.setattr(emergence, "at_step",
                      lambda *a, **k: studied.append(1) or original(*a, **k))
  again = emergence.run(workdir, [0, 1, 4], n_fit=64, n_test=32, probe_steps=5,
                        earlier=report)
  assert len(studied) == 1 and [e["step"] for e in again["by_step"]] == [0, 1, 4]
  assert again["by_step"][0] == report["by_step"][0]


@pytest.mark.parametrize("bad", ["0", "5", "2,x", "-1"])
def test_bad_keep_steps_are_one_line_and_leave_nothing(tmp_path, bad):
  config = tiny_config()
  config.keep_steps = bad
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"keep_steps=.*integers from 1 to num_train_steps"):
    train.train_and_evaluate(config, str(workdir), "mountain")
  assert not os.path.exists(workdir)
