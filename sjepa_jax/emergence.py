"""Emergence: the alignment study along training, from random init (step 0) to the end.

The preprint's title claim is that the isometry *emerges* from independent training. This
measures it: at each checkpoint step of a run (``keep_steps`` keeps them), every ordered pair
of views of each seed is decomposed (``shared.decompose``) on the same held-out paired
states, beside each agent's class and position probes. Step 0 is the agents' own
initialisation, rebuilt from their seeds. No controls: the full study (``study.run``) has
them at the end.

Shapes: N = paired states (fitting then held out), D = latent size.
"""

import itertools
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np

from sjepa_jax import checkpointing
from sjepa_jax import compare
from sjepa_jax import errors
from sjepa_jax import loading
from sjepa_jax import models
from sjepa_jax import shared
from sjepa_jax import study
from sjepa_jax import summaries

# The labels probed at each step: what the object is and where it is.
PROBED = ("class", "position")
# Figures of each pair followed along training, as ``summaries.shared_figures`` names them.
FOLLOWED = ("k_null", "k_iso", "r2_ridge", "gap", "gap_k_iso", "gap_k_null",
            "r2_procrustes_k_null", "gap_unshared_rotation", "gap_shared_not_rotation")
CURVE_K = 32


def saved_steps(workdir: str) -> list[int]:
  """The run's intact checkpoint steps, ascending."""
  return sorted(checkpointing.reader(workdir).all_steps())


def _figures(d: dict) -> dict[str, Any]:
  """One pair's followed figures from its ``shared.summary``."""
  at_iso, at_null = d["at_k_iso"] or {}, d["at_k_null"] or {}
  return {"k_null": d["k_null"], "k_iso": d["k_iso"], "r2_ridge": d["r2_ridge"],
          "r2_procrustes": d["r2_procrustes"], "gap": d["gap"],
          "gap_k_iso": at_iso.get("gap"), "gap_k_null": at_null.get("gap"),
          "r2_procrustes_k_null": at_null.get("r2_procrustes"),
          **{f"gap_{k}": v for k, v in d["gap_terms"].items()},
          "canonical_correlations": d["canonical_correlations"][:16],
          # The isometry against k on the spans' first CURVE_K directions (k = 1 ..).
          "gap_curve": d["curve"]["gap"][:CURVE_K],
          "r2_procrustes_curve": d["curve"]["r2_procrustes"][:CURVE_K]}


def at_step(all_agents: Sequence[loading.Agent], initial: bool, paired: Any, n_fit: int,
            probe_steps: int) -> dict[str, Any]:
  """Every studied pair's decomposition and every studied agent's probes, with the agents'
  trained parameters or (``initial``) their initial ones."""
  roles = study.assign_roles(all_agents)
  labels = {k: v for k, v in paired.labels.items() if k in PROBED}
  spaces, pairs = {}, []
  for (seed, _), main in roles.main.items():
    for a in main.values():
      params = a.initial_params() if initial else a.params
      z = models.encode_chunked(a.model, params["encoder"], paired.obs[(a.view, a.image_size)])
      spaces[a.name] = compare.make_space(z, labels, n_fit, probe_steps, paired.num_classes)
    views = [v for v in paired.views if v in main]
    for src, tgt in itertools.permutations(views, 2):
      y, x = spaces[main[src].name].z, spaces[main[tgt].name].z
      d = shared.summary(shared.decompose(x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:],
                                          jax.random.key(0)))
      pairs.append({"seed": seed, "source": src, "target": tgt,
                    "scant_overlap": study.scant_overlap(paired, src, tgt), **_figures(d)})
  probes = {name: s.scores for name, s in spaces.items()}
  return {"pairs": pairs, "agents": probes}


def run(workdir: str, steps: Sequence[int], n_fit: int = 3000, n_test: int = 1000,
        seed: int = 4321, probe_steps: int = 500, earlier: dict | None = None
        ) -> dict[str, Any]:
  """The study at each of ``steps`` (0: the agents' initialisation) of the run in
  ``workdir``; returns the JSON-ready report with its per-step summary. Steps that
  ``earlier`` (a previous report of the same run, pairs and seed) holds are taken from it,
  so a run still training can be followed step by step."""
  reuse = {}
  if earlier and all(earlier.get(k) == v for k, v in (
      ("workdir", workdir), ("n_fit", n_fit), ("n_test", n_test), ("seed", seed))):
    reuse = {e["step"]: e for e in earlier["by_step"] if e["step"] in steps}
  saved = saved_steps(workdir)
  missing = [s for s in steps if s != 0 and s not in saved]
  if missing:
    raise errors.UserError(
        f"No checkpoint at step(s) {missing} in {workdir!r}; saved steps: "
        f"{', '.join(map(str, saved))} (train with --config.keep_steps to keep more).")
  last = loading.load_agents(workdir)
  roles = study.assign_roles(last)
  used = roles.used()
  config = study.source_config(used, None)
  k_states, k_overlap = jax.random.split(jax.random.key(seed))
  paired = study.paired_states(config, roles, used, n_fit, n_test, k_states, k_overlap)
  by_step = []
  for step in sorted(steps):
    if step in reuse:
      by_step.append(reuse[step])
      continue
    logging.info("Emergence: step %d.", step)
    at = last if step == 0 else loading.load_agents(workdir, step)
    by_step.append({"step": step, **at_step(at, step == 0, paired, n_fit, probe_steps)})
  return {"workdir": workdir, "n_fit": n_fit, "n_test": n_test, "seed": seed,
          "steps": sorted(steps), "by_step": by_step, "summary": summarise(by_step)}


def summarise(by_step: Sequence[dict]) -> dict[str, Any]:
  """Per pair type and step: each followed figure as [mean, spread over seeds]; per step,
  the agents' probes as [mean, std] over agents."""
  out = {}
  for entry in by_step:
    for kind in sorted({summaries.pair_type(p) for p in entry["pairs"]}):
      group = [p for p in entry["pairs"] if summaries.pair_type(p) == kind]
      seeds = sorted({p["seed"] for p in group})
      row = {}
      for k in FOLLOWED:
        per_seed = [np.mean(v) for s in seeds
                    if (v := [p[k] for p in group if p["seed"] == s and p[k] is not None])]
        if per_seed:
          row[k] = [float(np.mean(per_seed)), float(np.std(per_seed))]
      out.setdefault(kind, {})[str(entry["step"])] = row
    scores = entry["agents"].values()
    out.setdefault("probes", {})[str(entry["step"])] = {
        k: [float(np.mean(v)), float(np.std(v))]
        for k in ("class_acc", "position_r2")
        if (v := [s[k] for s in scores if k in s])}
  return out
