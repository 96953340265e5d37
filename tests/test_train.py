"""The training loop end to end: resume exactly, survive a kill, stop on NaN, clear errors."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common
from sjepa_jax import agents
from sjepa_jax import checkpointing
from sjepa_jax import configs
from sjepa_jax import data
from sjepa_jax import evaluation
from sjepa_jax import loading
from sjepa_jax import losses
from sjepa_jax import metrics_io
from sjepa_jax import models
from sjepa_jax import train
from tests.conftest import init_agents

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = ["mountain", "forest"]


def _final_state_of(config, workdir, views, seed=0):
  abstract = jax.eval_shape(lambda: init_agents(config, views, seed))
  mngr = checkpointing.manager(workdir)
  state, step = checkpointing.restore(mngr, abstract)
  mngr.close()
  return state, step


def _final_state(config, workdir, seed=0):
  return _final_state_of(config, workdir, VIEWS, seed)


@pytest.mark.parametrize("recipe", ["default", "long"])
def test_training_rank_metrics_see_enough_states_for_isotropic_latents_to_score_near_d(recipe):
  """The evaluation set the rank metrics are logged on (the next test) is large enough: one
  batch's first frames (64 samples of 128 dimensions) capped the effective rank of Gaussian
  latents at about 49. Isotropic Gaussian latents of the same N and D are logged beside."""
  config = importlib.import_module(f"experiments.configs.{recipe}").get_config()
  n, d = evaluation.eval_set_size(config), config.model.dim
  z = jax.random.normal(jax.random.key(0), (2, n, d))
  reference = {"effective_rank": 0.0}
  scalars = evaluation.spectrum_scalars(z, VIEWS, reference)
  assert scalars["train/isotropic_reference/effective_rank"] == 0.0
  for view in VIEWS:
    for k in ("effective_rank", "participation_ratio", "rankme"):
      assert 0.85 * d < scalars[f"train/agent_{view}/{k}"] <= d, (k, scalars)


def test_training_logs_rank_metrics_of_the_evaluation_states(config, tmp_path, monkeypatch):
  """What the loop logs as each agent's rank metrics is ``spectrum_stats`` of its latents of
  the whole evaluation set (8 D = 128 states, where a batch holds 8), at the logged step."""
  logged = {}
  monkeypatch.setattr(metrics_io.MetricWriter, "write_scalars",
                      lambda self, step, scalars: logged.setdefault(step, dict(scalars)))
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, VIEWS)
  state, step = _final_state(config, workdir)
  eval_set = train._paired_states(  # pylint: disable=protected-access
      data.source(config), config.eval.seed, VIEWS, None, 0, evaluation.eval_set_size(config))
  assert eval_set.obs.shape[1] == 8 * config.model.dim > config.data.batch_size
  z = evaluation.make_encoder(configs.model_from_config(config))(state.params, eval_set.obs, [0, 1])
  for a, view in enumerate(VIEWS):
    expected = losses.spectrum_stats(z[a])
    for k in ("effective_rank", "participation_ratio", "rankme"):
      np.testing.assert_allclose(logged[step][f"train/agent_{view}/{k}"], expected[k],
                                 rtol=1e-4, err_msg=f"{view} {k}")


def test_chunked_encoding_equals_one_pass_alone_and_for_stacked_agents(config):
  """``models.encode_chunked``, the one chunked encoder of training, migration and study."""
  roster = agents.roster(VIEWS, [0, 1])  # 4 agents: views x seeds
  model = configs.model_from_config(config)
  state = init_agents(config, roster.views, roster.seeds)
  obs = jax.random.uniform(jax.random.key(0), (2, 20, 16, 16, 3))
  index = [0, 0, 1, 1]
  stacked = models.encode_chunked(model, state.params["encoder"], obs, index, chunk=8)
  for a, u in enumerate(index):
    one = jax.tree.map(lambda x: x[a], state.params["encoder"])
    np.testing.assert_allclose(stacked[a], models.encode(model, one, obs[u]), atol=1e-5)
    np.testing.assert_allclose(models.encode_chunked(model, one, obs[u], chunk=8),
                               stacked[a], atol=1e-5)


def test_probe_report_scores_each_agent_on_its_own_latents(config):
  """Planted latents with known answers: agent 0 reads class and position, agent 1 class
  only, the random-init agents neither (3 classes, 48 probe-training and 16 test states)."""
  k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
  labels = {"class": jax.random.randint(k1, (64,), 0, 3),
            "position": jax.random.normal(k2, (64, 2))}
  noise = jax.random.normal(k3, (64, 2))
  readable = {"class": 4.0 * jax.nn.one_hot(labels["class"], 3), "position": labels["position"],
              "noise": noise}
  latents = {"trained": [("class", "position"), ("class", "noise")],
             "initial": [("noise",), ("noise",)]}
  encode_all = lambda params, obs, index: jnp.stack([
      jnp.concatenate([readable[k] for k in latents[params][a]] + [jnp.zeros((64, 1))], 1)
      for a in index])
  # Pixels: view 0's show the position, view 1's are noise (pixel PCA reads it from 0 only).
  pixels = jnp.stack([labels["position"], jax.random.normal(jax.random.key(5), (64, 2))])
  obs = jnp.broadcast_to(pixels[:, :, None, :, None], (2, 64, 3, 2, 3))
  probe_set = data.PairedSet(obs, labels, num_classes={"class": 3})
  state = lambda params: types.SimpleNamespace(params=params)
  report = evaluation.probe_report(config, encode_all, state("trained"), state("initial"),
                              probe_set, 48, np.array([0, 1]), VIEWS)
  assert report["mountain"]["trained/class_acc"] == report["forest"]["trained/class_acc"] == 1
  assert report["mountain"]["trained/position_r2"] > 0.99
  assert report["forest"]["trained/position_r2"] < 0.2
  for view in VIEWS:
    assert report[view]["random_init/class_acc"] < 0.7
    assert report[view]["random_init/position_r2"] < 0.2
  assert report["mountain"]["pixel_pca/position_r2"] > 0.99
  assert report["forest"]["pixel_pca/position_r2"] < 0.2
  # Forest's agent reads no position and its pixels hold none: nothing to warn of.
  assert evaluation.below_pixels(report) == []


def _scores(trained: float, random_init: float, pca: float, score: str) -> dict:
  return {f"trained/{score}": trained, f"random_init/{score}": random_init,
          f"pixel_pca/{score}": pca}


@pytest.mark.parametrize("score,trained,random_init,pca,warns", [
    ("position_r2", 0.30, 0.10, 0.60, True),  # pixels read it better
    ("position_r2", 0.60, 0.10, 0.60, True),  # no better
    ("position_r2", 0.70, 0.10, 0.60, False),
    ("position_r2", 0.05, 0.00, 0.15, False),  # pixels do not read it (R^2 <= 0.2)
    ("class_acc", 0.45, 0.40, 0.46, True),  # pixels 0.06 above random init: they read it
    ("class_acc", 0.40, 0.40, 0.44, False),  # pixels under 0.05 above random init
    ("class_acc", 0.995, 0.90, 1.00, False),  # read fully: nothing more to learn
    ("class_mlp_acc", 0.50, 0.40, 0.90, False),  # a diagnostic, not a label
])
def test_below_pixels_names_labels_pixels_read_and_the_agent_reads_no_better(
    score, trained, random_init, pca, warns):
  report = {"front": {**_scores(0.9, 0.1, 0.5, "size_r2"),
                      **_scores(trained, random_init, pca, score)}}
  assert evaluation.below_pixels(report) == ([("front", score, trained, pca)] if warns else [])


def test_interrupted_and_resumed_run_equals_a_straight_run(config, tmp_path):
  report = train.train_and_evaluate(config, str(tmp_path / "straight"), VIEWS)
  assert set(report) == set(VIEWS)
  config.max_steps_per_run = 2
  split = str(tmp_path / "split")
  assert train.train_and_evaluate(config, split, VIEWS) == {}  # stopped at step 2 of 4
  assert _final_state(config, split)[1] == 2
  # The same command again resumes, and scores the same final agents the same: the probe
  # set and the probes depend on the config, never on how the run was split.
  assert train.train_and_evaluate(config, split, VIEWS) == report
  straight, step = _final_state(config, str(tmp_path / "straight"))
  resumed, step_resumed = _final_state(config, split)
  assert step == step_resumed == 4
  chex.assert_trees_all_equal(straight, resumed)
  assert os.path.exists(os.path.join(split, "probe.json"))


@pytest.mark.slow
def test_seeds_are_agents_of_one_program_equal_to_runs_of_their_own(config, tmp_path):
  """``seeds=[0, 1]`` puts every (view, seed) on the agent axis; each agent trains exactly
  as a run of its own view and seed would (its keys depend on nothing else)."""
  config.optim.eps = 1e-3  # keeps float reordering between programs at the 1e-6 level
  both = str(tmp_path / "both")
  report = train.train_and_evaluate(config, both, VIEWS, seeds=[0, 1])
  assert list(report) == ["mountain_s0", "mountain_s1", "forest_s0", "forest_s1"]
  alone = str(tmp_path / "alone")
  train.train_and_evaluate(config, alone, "forest", seeds=1)
  params = loading.load_agent(both, "forest", seed=1).params
  chex.assert_trees_all_close(params, loading.load_agent(alone, "forest").params, atol=1e-5)
  other = loading.load_agent(both, "forest", seed=0).params
  assert not np.allclose(other["encoder"]["Dense_0"]["kernel"],
                         params["encoder"]["Dense_0"]["kernel"])
  with pytest.raises(ValueError, match="Several agents.*give seed"):
    loading.load_agent(both, "forest")
  # Resuming with other seeds:
  with pytest.raises(ValueError, match="holds a run of views.*with seeds"):
    train.train_and_evaluate(config, both, VIEWS, seeds=[0, 2])


_CHILD = """
import sys
sys.path.insert(0, {root!r})
from tests.conftest import tiny_config
from sjepa_jax import train
c = tiny_config()
c.num_train_steps, c.checkpoint_every, c.log_every = {steps}, {every}, {every}
train.train_and_evaluate(c, {workdir!r}, {views!r})
"""


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_parameters(config, tmp_path):
  steps, every = 300, 100
  config.num_train_steps, config.checkpoint_every, config.log_every = steps, every, every
  killed = str(tmp_path / "killed")
  child = subprocess.Popen(
      [sys.executable, "-c", _CHILD.format(root=ROOT, steps=steps, every=every, workdir=killed,
                                           views=VIEWS)],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = os.path.join(killed, "checkpoints", str(every))
  deadline = time.time() + 900  # a guard against a hung child; a loaded machine is slow
  while not os.path.isdir(first) and child.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert os.path.isdir(first)
  interrupted_at = _final_state(config, killed)[1]
  assert interrupted_at < steps, "the child finished before it was killed"
  train.train_and_evaluate(config, killed, VIEWS)
  train.train_and_evaluate(config, str(tmp_path / "straight"), VIEWS)
  chex.assert_trees_all_equal(_final_state(config, killed)[0],
                              _final_state(config, str(tmp_path / "straight"))[0])


def test_nan_stops_training_naming_step_and_agent_and_saves_nothing(config, tmp_path,
                                                                    monkeypatch):
  monkeypatch.setattr(configs, "RANGES", {})  # a NaN learning rate is refused up front
  config.optim.lr = float("nan")
  config.log_every = config.checkpoint_every = 1
  # The loss at step 1 is computed before the NaN update, so the save-time check catches it.
  with pytest.raises(FloatingPointError,
                     match=r"agent 0 \(mountain\) at step 1.*Last good checkpoint: none yet"):
    train.train_and_evaluate(config, str(tmp_path), VIEWS)
  assert checkpointing.manager(str(tmp_path)).latest_step() is None


def test_check_finite_names_the_bad_agent():
  metrics = {"loss": np.asarray([0.5, np.nan])}
  with pytest.raises(FloatingPointError,
                     match=r"loss for agent 1 \(forest\) between steps 100 and 200.*: step 100"):
    train.check_finite(metrics, VIEWS, 100, 200, 100)


def test_bad_input_is_a_clear_error(config, tmp_path):
  with pytest.raises(ValueError, match="Unknown view 'lake'"):
    train.train_and_evaluate(config, str(tmp_path / "a"), ["mountain", "lake"])
  with pytest.raises(ValueError, match="Duplicate views"):
    train.train_and_evaluate(config, str(tmp_path / "a"), "forest,forest")
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(PermissionError, match="Cannot create workdir"):
    train.train_and_evaluate(config, str(blocker / "run"), VIEWS)
  config.max_steps_per_run = 2
  train.train_and_evaluate(config, str(tmp_path / "b"), VIEWS)
  with pytest.raises(ValueError, match="holds a run of views"):
    train.train_and_evaluate(config, str(tmp_path / "b"), ["mountain", "drone"])
  config.model.dim = 24
  with pytest.raises(ValueError, match=r"other settings for \['model.dim'\]"):
    train.train_and_evaluate(config, str(tmp_path / "b"), VIEWS)


_TINY_FLAGS = [
    "--config=experiments/configs/smoke.py", "--config.num_train_steps=4",
    "--config.log_every=2", "--config.checkpoint_every=2", "--config.data.image_size=16",
    "--config.model.patch=4", "--config.data.batch_size=8", "--config.eval.probe_train=48",
    "--config.eval.probe_test=16", "--config.eval.alignment_pairs=16",
    "--config.eval.probe_steps=10"]


@pytest.mark.slow
def test_train_command_end_to_end_then_load_one_agent_by_view(tmp_path):
  workdir = str(tmp_path / "run")
  out = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--views=mountain,forest",
       f"--workdir={workdir}", *_TINY_FLAGS], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Probes on frozen latents" in out.stdout
  assert set(json.load(open(os.path.join(workdir, "probe.json")))) == set(VIEWS)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  agent = loading.load_agent(workdir, "forest")
  assert (agent.name, agent.view, agent.seed, agent.kind) == ("forest", "forest", 0, "jepa")
  state, _ = _final_state(agent.config, workdir)
  chex.assert_trees_all_equal(agent.params, jax.tree.map(lambda x: x[1], state.params))
  z = agent.encode(np.zeros((2, 16, 16, 3), np.float32))
  assert z.shape == (2, agent.config.model.dim)
  with pytest.raises(ValueError, match=r"No agent for view 'river'.*holds mountain, forest"):
    loading.load_agent(workdir, "river")


def test_train_command_rejects_bad_flags(tmp_path):
  both = subprocess.run([sys.executable, "-m", "experiments.train", "--view=forest",
                         "--views=mountain,forest", f"--workdir={tmp_path}"],
                        cwd=ROOT, capture_output=True, text=True)
  assert both.returncode != 0 and "exactly one of --view" in both.stderr
  typo = subprocess.run([sys.executable, "-m", "experiments.train", "--view=forest",
                         f"--workdir={tmp_path}", "--config.model.dimm=3"],
                        cwd=ROOT, capture_output=True, text=True)
  assert typo.returncode != 0 and "dimm" in typo.stderr


def test_compilation_cache_is_on_by_default_and_configurable(monkeypatch, tmp_path):
  before = jax.config.jax_compilation_cache_dir
  assert before  # conftest turned it on, as every command does
  try:
    monkeypatch.setenv(common.CACHE_ENV, str(tmp_path / "xla"))
    assert common.enable_compilation_cache() == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    assert jax.config.jax_persistent_cache_min_compile_time_secs < 1  # JAX's default: 1 s
    monkeypatch.setenv(common.CACHE_ENV, "off")
    assert common.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    monkeypatch.delenv(common.CACHE_ENV)
    assert common.enable_compilation_cache() == os.path.expanduser(common.DEFAULT_CACHE)
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.slow
def test_the_long_recipe_trains_checkpoints_and_resumes_on_cpu(tmp_path):
  """configs/long.py, the accelerator recipe, for a few steps: its shapes (64x64 frames, 8x8
  patches, D = 128), its state's size, a checkpoint, and a resume that continues to the end
  with finite metrics. Only the evaluation is shrunk."""
  config = importlib.import_module("experiments.configs.long").get_config()
  config.num_train_steps, config.log_every, config.checkpoint_every = 4, 2, 2
  config.max_steps_per_run = 2
  config.eval.update(probe_train=48, probe_test=16, probe_steps=10)
  workdir = str(tmp_path / "long")
  assert train.train_and_evaluate(config, workdir, "mountain") == {}  # stopped at step 2
  assert _final_state_of(config, workdir, ["mountain"])[1] == 2
  report = train.train_and_evaluate(config, workdir, "mountain")  # resumes, finishes
  state, step = _final_state_of(config, workdir, ["mountain"])
  assert step == 4 and np.isfinite(report["mountain"]["trained/class_acc"])
  chex.assert_tree_all_finite(state)
  agent = loading.load_agent(workdir, "mountain")
  assert agent.image_size == 64 and agent.model.encoder.patch == 8
  assert agent.encode(np.zeros((3, 64, 64, 3), np.float32)).shape == (3, 128)
  params = sum(x.size for x in jax.tree.leaves(agent.params))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  # Parameters, the EMA encoder and Adam's two moments, all float32: under 4 copies.
  assert 3 * 4 * params < state_bytes < 4 * 4 * params, (params, state_bytes)


def test_an_agent_of_a_sweep_equals_a_run_of_its_own_values(config, tmp_path):
  """``--sweep`` puts every combination of values on the agent axis of one program; each
  agent trains as a run with its values alone would (a learning rate below the sweep's
  largest scales its updates; a weight enters as a value)."""
  config.optim.eps = 1e-3  # see test_seeds_are_agents...
  sweep = agents.parse_sweep(["objective.inverse_weight=0,4", "config.optim.lr=0.001,0.003"])
  swept = str(tmp_path / "swept")
  report = train.train_and_evaluate(config, swept, "forest", sweep=sweep)
  assert list(report) == ["forest_inverse_weight0_lr0.001", "forest_inverse_weight0_lr0.003",
                          "forest_inverse_weight4_lr0.001", "forest_inverse_weight4_lr0.003"]
  config.objective.inverse_weight, config.optim.lr = 4.0, 0.001
  alone = str(tmp_path / "alone")
  train.train_and_evaluate(config, alone, "forest")
  agent = loading.load_agent(swept, "forest_inverse_weight4_lr0.001")
  assert agent.hparams == {"objective.inverse_weight": 4.0, "optim.lr": 0.001}
  chex.assert_trees_all_close(agent.params, loading.load_agent(alone, "forest").params,
                              atol=1e-5)
  other = loading.load_agent(swept, "forest_inverse_weight4_lr0.003")
  assert not np.allclose(other.params["encoder"]["Dense_0"]["kernel"],
                         agent.params["encoder"]["Dense_0"]["kernel"])
  with pytest.raises(ValueError, match="Cannot sweep 'model.dim'.*optim.lr"):
    agents.parse_sweep(["model.dim=32,64"])
  with pytest.raises(ValueError, match="other settings|swept values"):  # resume, other sweep
    train.train_and_evaluate(config, swept, "forest", sweep={"optim.lr": [0.001]})


def test_a_run_saved_before_a_setting_existed_resumes_and_reads_as_it_trained(config):
  """A saved config without data.stride and eval.probe_fit reads them as configs.ADDED
  says (what such a run did), so resuming it with today's defaults changes nothing; a real
  change is still refused, by name."""
  saved = config.to_dict()
  del saved["data"]["stride"], saved["eval"]["probe_fit"]
  roster = agents.roster(["mountain"], 0)
  meta = {"config": saved, "views": roster.views, "seeds": roster.seeds,
          "hparams": roster.hparams}
  old = loading.config_from_meta(meta)
  assert (old.data.stride, old.eval.probe_fit) == (1, "eval")
  config.eval.probe_fit = "train"  # an evaluation setting: resumable
  train.check_resumable(meta, config, roster, "w")
  config.data.stride = 2
  with pytest.raises(ValueError, match=r"other settings for \['data.stride'\]"):
    train.check_resumable(meta, config, roster, "w")
