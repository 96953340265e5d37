"""The alignment and zero-shot probe-transfer study over trained agents, with its controls.

``run(workdirs, n_fit, n_test, seed)`` loads every agent the training runs in
``workdirs`` hold, renders the same held-out world states from each agent's view, and
for every ordered pair of views (source A, target B):

- fits maps from B's latents into A's space on ``n_fit`` pairs and scores them on
  ``n_test`` other pairs (``align.evaluate_pair``);
- trains A's probes (focal class: logistic; focal position: ridge) on A's latents of the
  fitting states and applies them to B's mapped held-out latents with zero gradient steps
  on B, beside B's own probe (``native``);
- repeats all of it for the controls: random-init encoders of the same architecture,
  maps fitted on shuffled pairs, the identity map, PCA of raw pixels to the same size,
  autoencoder agents (runs with ``objective.kind = 'autoencoder'``) and, as a ceiling,
  two JEPA agents on the same view (runs with another seed).

Roles come from the runs' saved configs: the first JEPA agent of each view is the main
agent; another JEPA agent on a view already taken is its same-view partner.

Shapes: N = paired states (fitting then held out), D = latent size, V = views.
"""

import dataclasses
import functools
import itertools
import os
from typing import Any, NamedTuple, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjepa_jax import align
from sjepa_jax import compare
from sjepa_jax import data
from sjepa_jax import errors
from sjepa_jax import evaluation
from sjepa_jax import exchange
from sjepa_jax import loading
from sjepa_jax import models
from sjepa_jax import probes
from sjepa_jax import shared
from sjepa_jax import summaries

# The labels the nonlinear (MLP) probe also reads, for the studied agents: a diagnostic.
MLP_PROBED = ("class",)
R2_CURVE_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


Agent = loading.Agent


@dataclasses.dataclass
class Roles:
  """Which agent plays which part. ``main[(seed, swept values)][view]``: the JEPA agents
  studied pair by pair, one group per seed and, in a sweep, per combination of values;
  ``partners[view]``: every JEPA agent of that view (same-view ceilings pair two of them);
  ``controls[kind][view]``: autoencoder and supervised agents, by view, in seed order."""
  main: dict[tuple[int, tuple], dict[str, Agent]]
  partners: dict[str, list[Agent]]
  controls: dict[str, dict[str, list[Agent]]]

  def used(self) -> list[Agent]:
    out = [a for group in self.partners.values() for a in group]
    return out + [a for kind in self.controls.values() for g in kind.values() for a in g]

  def control(self, kind: str, view: str, seed: int) -> Agent | None:
    """The ``kind`` agent of ``view`` with ``seed`` if there is one, else its first."""
    group = self.controls[kind].get(view, [])
    return next((a for a in group if a.seed == seed), group[0] if group else None)

  def partner(self, agent: Agent) -> Agent | None:
    """Another JEPA agent of the same view and swept values, preferring another seed (the
    ceiling)."""
    others = [a for a in self.partners[agent.view]
              if a is not agent and a.hparams == agent.hparams]
    return next((a for a in others if a.seed != agent.seed), others[0] if others else None)


def group_key(agent: Agent) -> tuple[int, tuple]:
  """An agent's group of the study: its seed and its swept values."""
  return agent.seed, tuple(sorted(agent.hparams.items()))


def assign_roles(all_agents: Sequence[Agent]) -> Roles:
  """Roles from the agents' kinds, views and seeds; names made unique where needed."""
  main, partners, controls = {}, {}, {"autoencoder": {}, "supervised": {}}
  names = set()
  for agent in all_agents:
    name = f"{agent.name}_{agent.kind}" if agent.kind in controls else agent.name
    while name in names:  # the same view and seed from another run
      name = f"{name}_seed{agent.seed}"
    names.add(name)
    agent = dataclasses.replace(agent, name=name)
    if agent.kind in controls:
      controls[agent.kind].setdefault(agent.view, []).append(agent)
    else:
      partners.setdefault(agent.view, []).append(agent)
      main.setdefault(group_key(agent), {}).setdefault(agent.view, agent)
  main = {s: group for s, group in sorted(main.items()) if len(group) >= 2}
  if not main:
    have = sorted({f"{a.view} (seed {a.seed})" for g in partners.values() for a in g})
    raise errors.UserError(f"Alignment needs JEPA agents on at least two views with one seed; "
                           f"the runs hold {have or 'none'}. Train more views "
                           "(--views=mountain,forest) or pass several --workdirs.")
  return Roles(main, partners, controls)


# --- The study ---------------------------------------------------------------------------

class PairedStates(NamedTuple):
  """The same N states seen from every view at every image size an agent uses."""
  obs: dict[tuple[str, int], jax.Array]  # (view, size) -> (N, H, W, 3)
  labels: dict[str, jax.Array]
  num_classes: dict[str, int]
  views: list[str]  # the studied views, in the registry's order
  overlap: np.ndarray | None  # (V, V) pixel overlap of the studied views (None: undefined)
  eval_images: Any  # a dataset's evaluation split or a recording's part; None for the world
  state: jax.Array | None  # (N, S) everything known of each state (None: images)
  source: data.Source


def paired_states(config, roles: Roles, used: Sequence[Agent], n_fit: int, n_test: int,
                  k_states, k_overlap) -> PairedStates:
  """The paired states every feature is computed on: the first ``n_fit`` fit, the rest are
  held out; fitted where ``config.eval.probe_fit`` says (``data.PROBE_FITS``)."""
  src = data.source(config)
  order = data.view_order(src)
  all_views = sorted({a.view for a in used}, key=order.index)
  stacked = data.stack_views(src, all_views)
  sizes = sorted({a.image_size for a in used})
  on_train = config.eval.probe_fit == "train"
  obs, paired, eval_images = {}, None, None
  for size in sizes:
    sized = src._replace(image_size=size,
                         options=src.options and src.options._replace(image_size=size))
    if size == sizes[0] or src.kind == data.RECORDING:  # a recording's frames load resized
      eval_images = data.load_images(sized, src.eval_split, all_views)
      fit_images = (data.load_images(sized, src.train_split, all_views)
                    if on_train and src.kind != data.WORLD else None)
    paired = data.fit_and_score_set(sized, k_states, stacked, n_fit, n_test, eval_images,
                                    fit_images)
    obs.update({(v, size): paired.obs[i] for i, v in enumerate(all_views)})
  views = sorted({v for group in roles.main.values() for v in group}, key=order.index)
  overlap = data.overlap_matrix(src, views, eval_images, k_overlap)
  # The labels are those of the same states at every size.
  return PairedStates(obs, paired.labels, paired.num_classes, views, overlap, eval_images,
                      paired.state, src)


class _Spaces(NamedTuple):
  """Every set of features with its probes: trained agents, their random-init encoders (the
  studied agents), and pixel PCA per studied view; and the studied agents' held-out latents
  as an MLP predicts them from the world's state (the state ceiling; empty without one)."""
  trained: dict[str, compare.Space]
  initial: dict[str, compare.Space]
  pca: dict[str, compare.Space]
  from_state: dict[str, jax.Array]


def _spaces(roles: Roles, used: Sequence[Agent], paired: PairedStates, n_fit: int,
            probe_steps: int, k_pca) -> _Spaces:
  space = functools.partial(compare.make_space, labels=paired.labels, n_fit=n_fit,
                            probe_steps=probe_steps, num_classes=paired.num_classes)
  obs = lambda a: paired.obs[(a.view, a.image_size)]
  latents = lambda a, params: models.encode_chunked(a.model, params["encoder"], obs(a))
  studied = [a for group in roles.main.values() for a in group.values()]
  names = {a.name for a in studied}
  trained = {a.name: space(latents(a, a.params), mlp=MLP_PROBED if a.name in names else ())
             for a in used}
  initial = {a.name: space(latents(a, a.initial_params())) for a in studied}
  pca = {}
  for a in studied:
    if a.view not in pca:
      pca[a.view] = space(compare.pixel_pca(obs(a), n_fit, a.model.encoder.dim, k_pca))
  state = paired.state
  from_state = {} if state is None else {
      a.name: probes.mlp_regress(state[:n_fit], trained[a.name].z[:n_fit], state[n_fit:])
      for a in studied}
  return _Spaces(trained, initial, pca, from_state)


def _shared_part(result: dict[str, Any], s: compare.Space, t: compare.Space, spans,
                 paired: PairedStates, from_state: jax.Array | None, n_fit: int, probe_steps: int
                 ) -> dict[str, Any]:
  """What the pair's shared part carries and what locates the rest: probes on the k_iso
  (Procrustes) and k_null (least squares) spans, an MLP map between the whole latents, and
  the state ceiling of the source's whole latent and of its k_null span."""
  d = result["shared"]
  out = {f"transfer_k_{which}": compare.shared_transfers(
      s, t, spans, paired.labels, n_fit, d[f"k_{which}"], kind, paired.num_classes,
      probe_steps) for which, kind in (("iso", "procrustes"), ("null", "lstsq"))}
  x, y = t.z, s.z
  out["mlp_map_r2"] = float(probes.mlp_r2(x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]))
  if from_state is not None:
    span = spans[1]
    k = max(d["k_null"], 1)
    out["state_r2"] = float(align.r2_score(from_state, y[n_fit:]))
    out["state_r2_shared"] = float(align.r2_score(span.coords(from_state, k),
                                                  span.coords(y[n_fit:], k)))
  return out


def scant_overlap(paired: PairedStates, src: str, tgt: str) -> bool | None:
  """Whether either view sees under ``summaries.SCANT_OVERLAP`` of the other's pixels (None: a
  recording, overlap undefined)."""
  if paired.overlap is None:
    return None
  i, j = paired.views.index(src), paired.views.index(tgt)
  return bool(min(paired.overlap[i, j], paired.overlap[j, i]) < summaries.SCANT_OVERLAP)


def _pair(roles: Roles, spaces: _Spaces, paired: PairedStates, main: dict[str, Agent],
          group: tuple[int, tuple], src: str, tgt: str, n_fit: int, shuffle_key,
          probe_steps: int) -> dict[str, Any]:
  """One ordered pair (target -> source) of one group's agents, with its controls."""
  seed, swept = group
  views, labels = paired.views, paired.labels
  trained, initial, pca, from_state = spaces
  s, t = trained[main[src].name], trained[main[tgt].name]
  i, j = views.index(src), views.index(tgt)
  overlap = (None if paired.overlap is None  # undefined for a recording's cameras
             else float(paired.overlap[i, j]))
  scant = scant_overlap(paired, src, tgt)
  result = {"seed": seed, **({"hparams": dict(swept)} if swept else {}), "source": src,
            "target": tgt, "overlap": overlap, "scant_overlap": scant, "n_fit": n_fit,
            "n_test": s.z.shape[0] - n_fit, **compare.spaces(s, t, labels, n_fit)}
  result["shared"].update(_shared_part(result, s, t, result.pop("spans"), paired,
                                       from_state.get(main[src].name), n_fit, probe_steps))
  figures = lambda a, b, drop=(), key=None: compare.control_figures(
      compare.spaces(a, b, labels, n_fit, key), drop)
  controls = {
      "random_init": figures(initial[main[src].name], initial[main[tgt].name]),
      "shuffled_pairs": figures(s, t, drop=("cka_unbiased",), key=shuffle_key),  # needs no map
      "identity": compare.identity_control(s, t, labels, n_fit),
      "pixel_pca": figures(pca[src], pca[tgt]),
  }
  for kind in ("autoencoder", "supervised"):
    cs, ct = roles.control(kind, src, seed), roles.control(kind, tgt, seed)
    controls[kind] = None if cs is None or ct is None else {
        "agents": [ct.name, cs.name], **figures(trained[cs.name], trained[ct.name])}
  partner = roles.partner(main[src])
  if partner is not None:
    controls["same_view"] = {"agents": [main[src].name, partner.name],
                             **figures(s, trained[partner.name])}
  result["controls"] = controls
  logging.info("seed %d, %s->%s (target->source): R^2 ridge %.3f, Procrustes %.3f, "
               "transfer %s (native %s)", seed, tgt, src, result["r2_ridge"],
               result["r2_procrustes"], result.get("transfer_acc"), result.get("native_acc"))
  return result


def run(workdirs: Sequence[str], n_fit: int = 4000, n_test: int = 1000, seed: int = 4321,
        probe_steps: int = 500, step: int | None = None, data_dir: str | None = None,
        probe_fit: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """The study (see the module docstring) over the runs in ``workdirs``.

  ``step`` picks a checkpoint of the first run (the others use their latest). For runs on
  a dataset, the held-out paired states are images of its evaluation split, read from
  ``data_dir`` (default: where the runs read it); the fitting ones come from where
  ``probe_fit`` says (``data.PROBE_FITS``; default: the first run's ``eval.probe_fit``).
  Returns (the JSON-ready report, extras: arrays for the figures, the studied agents and
  their fitted maps and probes for ``export``, and the paired states ``obs[(view, size)]``
  with their ``labels``: the first ``n_fit`` fitted everything, the rest are held out).
  """
  if n_fit < 8 or n_test < 8:
    raise errors.UserError(f"Need at least 8 fitting and 8 held-out pairs, got n_fit={n_fit}, "
                           f"n_test={n_test}.")
  if probe_fit is not None and probe_fit not in data.PROBE_FITS:
    raise errors.UserError(f"Unknown probe_fit {probe_fit!r}; valid: {', '.join(data.PROBE_FITS)}.")
  # Agents and their roles; the paired states every feature is computed on.
  all_agents = [a for i, w in enumerate(workdirs)
                for a in loading.load_agents(w, step if i == 0 else None)]
  roles = assign_roles(all_agents)
  used = roles.used()
  logging.info("Agents: %s", ", ".join(a.name for a in used))
  config = source_config(used, data_dir)
  if probe_fit:
    config.eval.probe_fit = probe_fit
  k_states, k_overlap, k_pca, k_shuffle = jax.random.split(jax.random.key(seed), 4)
  paired = paired_states(config, roles, used, n_fit, n_test, k_states, k_overlap)
  spaces = _spaces(roles, used, paired, n_fit, probe_steps, k_pca)
  trained, initial, pca, _ = spaces

  # Every ordered pair of every seed, with its controls.
  views = paired.views
  pairs, curves, scatter, maps = [], {}, {}, {}
  for g, (group, main) in enumerate(roles.main.items()):
    gpa = _shared_space_r2(main, trained, n_fit)
    group_views = [v for v in views if v in main]
    for src, tgt in itertools.permutations(group_views, 2):
      i, j = views.index(src), views.index(tgt)
      shuffle_key = jax.random.fold_in(k_shuffle, (g * len(views) + i) * len(views) + j)
      result = _pair(roles, spaces, paired, main, group, src, tgt, n_fit, shuffle_key,
                     probe_steps)
      maps[(main[src].name, main[tgt].name)] = result.pop("maps")
      if gpa is not None:
        result["r2_shared_space"] = gpa[(src, tgt)]
      pairs.append(result)
      if g == 0:  # the figures show the first seed's pairs
        s, t = trained[main[src].name], trained[main[tgt].name]
        sizes = tuple(m for m in R2_CURVE_SIZES if m < n_fit) + (n_fit,)
        curve = align.r2_against_pairs(t.z[:n_fit], s.z[:n_fit], t.z[n_fit:], s.z[n_fit:],
                                       sizes)
        for name in ("r2_ridge", "r2_procrustes"):
          curve[f"{name}_unlimited"] = shared.extrapolate_r2(curve["n"], curve[name],
                                                             t.z.shape[1])
        curves[f"{tgt}_to_{src}"] = curve
        scatter[(src, tgt)] = principal_scatter(t.z, s.z, n_fit)

  # The report.
  labels = paired.labels
  chance = (float(np.bincount(np.asarray(labels["class"][n_fit:])).max() / n_test)
            if "class" in labels else None)  # a recording may have no class label
  without_grad = lambda scores, prefix="": {f"{prefix}{k}": x for k, x in scores.items()
                                            if k != "class_probe_grad_norm"}
  report = {
      "workdirs": list(workdirs), "seed": seed, "n_fit": n_fit, "n_test": n_test,
      "probe_fit": config.eval.probe_fit,
      "source": data.describe(paired.source, paired.eval_images, used[0].workdir),
      "chance_acc": chance,
      "agents": {a.name: {"view": a.view, "kind": a.kind, "seed": a.seed,
                          **({"hparams": a.hparams} if a.hparams else {}),
                          "workdir": a.workdir, "step": a.step, **trained[a.name].scores,
                          **evaluation.spectrum(trained[a.name].z[n_fit:]),
                          **(without_grad(initial[a.name].scores, "random_init_")
                             if a.name in initial else {})}
                 for a in used},
      "floors": {v: without_grad(p.scores, "pixel_pca_") for v, p in pca.items()},
      "overlap": {"views": views, "matrix": None if paired.overlap is None else
                  paired.overlap.tolist(), **({} if paired.overlap is not None else {
                      "undefined": "a recording's cameras: their poses and depth are not "
                                   "recorded, so which pixels two cameras share is unknown"})},
      "pairs": pairs, "r2_vs_pairs": curves, "summary": summaries.summarise(pairs, chance),
      "shared_summary": summaries.summarise_shared(pairs),
  }
  swept = sorted({tuple(sorted(p["hparams"].items())) for p in pairs if "hparams" in p})
  if swept:  # a sweep: the summary of each combination of values on its own
    report["summary_by_hparams"] = [
        {"hparams": dict(h), "summary": summaries.summarise(
            [p for p in pairs if tuple(sorted(p.get("hparams", {}).items())) == h], chance)}
        for h in swept]
  report["probes_by_view"] = summaries.probes_by_view(report)
  studied = {a.name: a for group in roles.main.values() for a in group.values()}
  frame = next(iter(paired.obs.values())).shape[1:]
  return report, {"scatter": scatter, "maps": maps, "agents": studied,
                  "probes": {name: trained[name].probes for name in studied},
                  "frame_bytes": int(np.prod(frame)), "obs": paired.obs,
                  "labels": paired.labels}


def export(report: dict[str, Any], extras: dict[str, Any], folder: str) -> dict[str, int]:
  """Writes every studied pair's maps (``maps/<target>_to_<source>.<map>.npz``) and every
  studied agent's probes (``probes/<agent>.<label>.npz``) as ``exchange`` files, each with
  who it joins or reads, its dimensions, its fitting pairs and the study's held-out score.
  Returns each file's size in bytes."""
  n_fit = report["n_fit"]
  studied = extras["agents"]
  who = lambda a: {"name": a.name, "view": a.view, "seed": a.seed, "kind": a.kind,
                   "workdir": a.workdir, "step": a.step, "dim": a.model.encoder.dim}
  results = {(p["seed"], p["source"], p["target"]): p for p in report["pairs"]}
  sizes = {}
  for (src_name, tgt_name), maps in extras["maps"].items():
    src, tgt = studied[src_name], studied[tgt_name]
    p = results[(src.seed, src.view, tgt.view)]
    for kind, m in maps.items():
      path = os.path.join(folder, "maps", f"{tgt_name}_to_{src_name}.{kind}.npz")
      sizes[path] = exchange.save(
          path, m, source=who(src), target=who(tgt), map=kind, n_fit=n_fit,
          held_out_r2=p[f"r2_{kind}"],
          transfer_acc=p.get("transfer_acc" + ("" if kind == "ridge" else f"_{kind}")))
  for name, fitted in extras["probes"].items():
    for label, probe in fitted.items():
      path = os.path.join(folder, "probes", f"{name}.{label}.npz")
      score = probes.score_name(label, probe)
      sizes[path] = exchange.save(path, probe, agent=who(studied[name]), label=label,
                                  n_fit=n_fit, score=score,
                                  held_out=report["agents"][name][score])
  return sizes


def source_config(used: Sequence[Agent], data_dir: str | None) -> ml_collections.ConfigDict:
  """The data settings every agent shares (a copy), with ``data_dir`` overriding theirs.

  Agents on different sources (the world and a dataset, two datasets, two region sizes,
  or a recording's episodes held out or turned differently) see different things, so their
  latents have no pairs to align.
  """
  fields = ("dataset", "eval_split", "region_size", "holdout_fraction", "flip")
  seen = {tuple(a.config.data[f] for f in fields) for a in used}
  if len(seen) > 1:
    raise errors.UserError(f"The runs use different data sources ({', '.join(fields)}): "
                           f"{sorted(seen)}; align agents trained on one source.")
  config = ml_collections.ConfigDict(used[0].config.to_dict())
  if data_dir:
    config.data.data_dir = data_dir
  return config


def principal_scatter(x_NxD: jax.Array, y_NxE: jax.Array, n_fit: int, components: int = 3,
                      points: int = 400) -> tuple[np.ndarray, np.ndarray]:
  """Held-out target latents and the ridge-mapped source latents on the target's top
  principal components: ((points, components) true, (points, components) mapped)."""
  m = align.fit_ridge(x_NxD[:n_fit], y_NxE[:n_fit])
  y_test = y_NxE[n_fit:][:points]
  mapped = m.apply(x_NxD[n_fit:][:points])
  mean = y_NxE[:n_fit].mean(0)
  axes = jnp.linalg.svd(y_NxE[:n_fit] - mean, full_matrices=False)[2][:components].T
  return np.asarray((y_test - mean) @ axes), np.asarray((mapped - mean) @ axes)


def _shared_space_r2(main: dict, trained: dict, n_fit: int) -> dict | None:
  """Held-out R^2 of every pair's map through one generalized-Procrustes space (V >= 3)."""
  zs = [trained[a.name].z for a in main.values()]
  if len(zs) < 3 or len({z.shape[1] for z in zs}) > 1:
    return None
  z = jnp.stack(zs)
  space = align.fit_generalized_procrustes(z[:, :n_fit])
  views = list(main)
  return {(src, tgt): float(align.r2_score(
      align.shared_space_map(space, j, i).apply(z[j, n_fit:]), z[i, n_fit:]))
          for i, src in enumerate(views) for j, tgt in enumerate(views) if i != j}


