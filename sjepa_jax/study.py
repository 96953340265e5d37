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

from sjepa_jax import agents
from sjepa_jax import align
from sjepa_jax import data
from sjepa_jax import errors
from sjepa_jax import exchange
from sjepa_jax import loading
from sjepa_jax import losses
from sjepa_jax import models
from sjepa_jax import probes
from sjepa_jax import shared

# DESIGN.md's goals: what "an approximate linear isometry that transfers" must mean. On the
# whole latent: R^2, the isometry gap, transfer (a fraction of native, and in absolute
# accuracy), and every null control at least a margin below the agents in transfer
# accuracy. On the shared part (docs/alignment.md, written before the runs): an isometric
# dimension k_iso of at least 16 on surface pairs, whose directions carry 90% of the
# source's native class accuracy and transfer 95% of the target's own; the decomposition
# accounting for the whole gap within 0.02.
GOALS = {"r2_min": 0.9, "isometry_gap_max": 0.05, "transfer_fraction_min": 0.95,
         "transfer_acc_min": 0.85, "control_margin_min": 0.1, "k_iso_min": 16,
         "shared_native_fraction_min": 0.9, "shared_transfer_fraction_min": 0.95,
         "gap_accounted_max": 0.02}
# Pairs where either view sees under this fraction of the other's pixels.
SCANT_OVERLAP = 0.1
CONTROL_FIELDS = ("r2_lstsq", "r2_identity", "r2_ridge", "r2_ridge_uniform", "r2_procrustes",
                  "isometry_gap", "isometry_gap_whitened", "cka_unbiased",
                  "native_acc", "transfer_acc", "native_position_r2", "transfer_position_r2")
# The maps of every studied pair that ``export`` writes as files.
EXPORTED_MAPS = ("ridge", "procrustes")
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


# --- Features ----------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("n_fit", "dim"))
def pixel_pca(obs_NxHxWx3: jax.Array, n_fit: int, dim: int, key: jax.Array) -> jax.Array:
  """Raw pixels projected on their top ``dim`` principal directions (fitted on the first
  ``n_fit`` rows): the no-learning baseline. Randomised range finder with power iterations.

  References: Halko, Martinsson and Tropp, arXiv 0909.4061.
  """
  x = obs_NxHxWx3.reshape(obs_NxHxWx3.shape[0], -1)
  mean = x[:n_fit].mean(0)
  fit = x[:n_fit] - mean
  q = jax.random.normal(key, (x.shape[1], dim + 16))
  for _ in range(4):
    q = jnp.linalg.qr(fit.T @ jnp.linalg.qr(fit @ q)[0])[0]
  components = jnp.linalg.svd(fit @ q, full_matrices=False)[2][:dim] @ q.T  # (dim, pixels)
  return (x - mean) @ components.T


@dataclasses.dataclass
class Space:
  """One set of features of the paired states, with its own probes already fitted."""
  z: jax.Array  # (N, D): the first n_fit rows fit maps and probes, the rest are held out
  probes: dict[str, probes.Probe]  # by label
  scores: dict[str, float]  # held-out: <label>_acc or <label>_r2, class_probe_grad_norm, ...


def make_space(z_NxD: jax.Array, labels: dict[str, jax.Array], n_fit: int,
               probe_steps: int, num_classes: dict[str, int], mlp: tuple[str, ...] = ()
               ) -> Space:
  """Fits every label's probe on the fitting rows and scores it on the held-out rows."""
  fitted, scores = probes.evaluate(z_NxD, labels, n_fit, num_classes, probe_steps, mlp=mlp)
  return Space(z_NxD, fitted, scores)


def _scored(prefix: str, name: str, probe: probes.Probe) -> str:
  """``<prefix>_acc`` for the class label (the headline), else ``<prefix>_<label>_<acc|r2>``
  (``native_position_r2``, ``transfer_joint_positions_r2``)."""
  return f"{prefix}_acc" if name == "class" else f"{prefix}_{probes.score_name(name, probe)}"


def _transfers(source: Space, outputs_of, labels: dict[str, jax.Array], n_fit: int,
               suffix: str = "") -> dict[str, float]:
  """The source's probe of every label scored on the target's held-out latents,
  ``outputs_of(probe)`` giving each probe's outputs there."""
  out = {}
  for name, p in source.probes.items():
    y = labels[name][n_fit:]
    got = outputs_of(p)
    out[_scored("transfer", name, p) + suffix] = float(
        jnp.mean(jnp.argmax(got, -1) == y) if p.classes
        else align.r2_score(got, y.reshape(y.shape[0], -1)))
  return out


def compare(source: Space, target: Space, labels: dict[str, jax.Array], n_fit: int,
            shuffle_key: jax.Array | None = None) -> dict[str, Any]:
  """Maps target -> source, then transfers the source's probes to the target's latents.

  With ``shuffle_key`` the maps are fitted on pairs shuffled at random (a null control).
  The fitted ``maps`` (``EXPORTED_MAPS``) come back under that key, the shared-part
  decomposition (``shared.decompose``) under ``shared`` and its two spans under ``spans``.
  """
  x, y = target.z, source.z
  x_fit = x[:n_fit]
  if shuffle_key is not None:
    x_fit = x_fit[jax.random.permutation(shuffle_key, n_fit)]
  ev = align.evaluate_pair(x_fit, y[:n_fit], x[n_fit:], y[n_fit:])
  fitted = ev.pop("maps")
  out = {k: float(v) for k, v in ev.items() if jnp.ndim(v) == 0}
  decomposed = shared.decompose(x_fit, y[:n_fit], x[n_fit:], y[n_fit:], jax.random.key(0))
  out["shared"] = shared.summary(decomposed)
  out["spans"] = decomposed["spans"]
  out["singular_values"] = np.asarray(ev["singular_values"]).tolist()
  for name, p in target.probes.items():
    out[_scored("native", name, p)] = target.scores[probes.score_name(name, p)]
  if "class_acc" in source.scores:
    out["source_acc"] = source.scores["class_acc"]
  for suffix, kind in (("", "ridge"), ("_procrustes", "procrustes")):
    m = fitted[kind]
    out.update(_transfers(source, lambda p, m=m: probes.transfer(p, m, x[n_fit:]), labels,
                          n_fit, suffix))
  out["maps"] = {k: fitted[k] for k in EXPORTED_MAPS}
  return out


def identity_control(source: Space, target: Space, labels: dict[str, jax.Array],
                     n_fit: int) -> dict[str, float] | None:
  """The source's probes applied to the target's latents as they are (no map)."""
  if source.z.shape[1] != target.z.shape[1]:
    return None
  x, y = target.z[n_fit:], source.z[n_fit:]
  return {"r2_identity": float(align.r2_score(x, y)),
          **_transfers(source, lambda p: p.outputs(x), labels, n_fit)}


def _pick(result: dict[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
  """A control's figures: ``CONTROL_FIELDS``, every label's native and transferred score, and
  the shared-part decomposition without its curves."""
  labelled = [k for k in result if k.startswith(("native_", "transfer_"))
              and not k.endswith("_procrustes")]
  out = {k: result[k] for k in (*CONTROL_FIELDS, *labelled) if k in result and k not in drop}
  out["shared"] = {k: v for k, v in result["shared"].items()
                   if k not in ("curve", "canonical_correlations_validation")}
  return out


def shared_transfers(source: Space, target: Space, spans: tuple[shared.Span, shared.Span],
                     labels: dict[str, jax.Array], n_fit: int, k: int, kind: str,
                     num_classes: dict[str, int], probe_steps: int) -> dict[str, Any] | None:
  """Probes of every label on the source's first ``k`` shared directions (``native_*``) and
  the target's through the ``kind`` map between the spans (``transfer_*``): what the shared
  part carries, and what crosses through it. None when ``k`` is 0."""
  if k < 1:
    return None
  span_t, span_s = spans
  cx, cy = span_t.coords(target.z, k), span_s.coords(source.z, k)
  m = shared.span_maps(cx[:n_fit], cy[:n_fit], k)[kind]
  on_span = make_space(cy, labels, n_fit, probe_steps, num_classes)
  out = {"k": k, "map": kind}
  out.update({_scored("native", name, p): on_span.scores[probes.score_name(name, p)]
              for name, p in on_span.probes.items()})
  out.update(_transfers(on_span, lambda p: p.outputs(m.apply(cx[n_fit:])), labels, n_fit))
  return out


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


def paired_states(config, roles: Roles, used: Sequence[Agent], n: int, k_states, k_overlap
                  ) -> PairedStates:
  order = data.view_order(config)
  all_views = sorted({a.view for a in used}, key=order.index)
  stacked = data.stack_views(config, all_views)
  sizes = sorted({a.image_size for a in used})
  obs, paired, eval_images = {}, None, None
  for size in sizes:
    config.data.image_size = size
    if size == sizes[0] or data.is_recording(config):  # a recording's frames load resized
      eval_images = data.load_images(config, config.data.eval_split, all_views)
    paired = data.paired_set(config, k_states, stacked, n, eval_images)
    obs.update({(v, size): paired.obs[i] for i, v in enumerate(all_views)})
  views = sorted({v for group in roles.main.values() for v in group}, key=order.index)
  overlap = data.overlap_matrix(config, views, eval_images, k_overlap)
  # The labels are those of the same states at every size.
  return PairedStates(obs, paired.labels, paired.num_classes, views, overlap, eval_images,
                 paired.state)


class _Spaces(NamedTuple):
  """Every set of features with its probes: trained agents, their random-init encoders (the
  studied agents), and pixel PCA per studied view; and the studied agents' held-out latents
  as an MLP predicts them from the world's state (the state ceiling; empty without one)."""
  trained: dict[str, Space]
  initial: dict[str, Space]
  pca: dict[str, Space]
  from_state: dict[str, jax.Array]


def _spaces(roles: Roles, used: Sequence[Agent], paired: PairedStates, n_fit: int,
            probe_steps: int, k_pca) -> _Spaces:
  space = functools.partial(make_space, labels=paired.labels, n_fit=n_fit,
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
      pca[a.view] = space(pixel_pca(obs(a), n_fit, a.model.encoder.dim, k_pca))
  state = paired.state
  from_state = {} if state is None else {
      a.name: probes.mlp_regress(state[:n_fit], trained[a.name].z[:n_fit], state[n_fit:])
      for a in studied}
  return _Spaces(trained, initial, pca, from_state)


def _shared_part(result: dict[str, Any], s: Space, t: Space, spans, paired: PairedStates,
                 from_state: jax.Array | None, n_fit: int, probe_steps: int
                 ) -> dict[str, Any]:
  """What the pair's shared part carries and what locates the rest: probes on the k_iso
  (Procrustes) and k_null (least squares) spans, an MLP map between the whole latents, and
  the state ceiling of the source's whole latent and of its k_null span."""
  d = result["shared"]
  out = {f"transfer_k_{which}": shared_transfers(
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
  """Whether either view sees under ``SCANT_OVERLAP`` of the other's pixels (None: a
  recording, overlap undefined)."""
  if paired.overlap is None:
    return None
  i, j = paired.views.index(src), paired.views.index(tgt)
  return bool(min(paired.overlap[i, j], paired.overlap[j, i]) < SCANT_OVERLAP)


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
            "n_test": s.z.shape[0] - n_fit, **compare(s, t, labels, n_fit)}
  result["shared"].update(_shared_part(result, s, t, result.pop("spans"), paired,
                                       from_state.get(main[src].name), n_fit, probe_steps))
  controls = {
      "random_init": _pick(compare(initial[main[src].name], initial[main[tgt].name],
                                   labels, n_fit)),
      "shuffled_pairs": _pick(compare(s, t, labels, n_fit, shuffle_key),
                              drop=("cka_unbiased",)),  # needs no map
      "identity": identity_control(s, t, labels, n_fit),
      "pixel_pca": _pick(compare(pca[src], pca[tgt], labels, n_fit)),
  }
  for kind in ("autoencoder", "supervised"):
    cs, ct = roles.control(kind, src, seed), roles.control(kind, tgt, seed)
    controls[kind] = None if cs is None or ct is None else {
        "agents": [ct.name, cs.name],
        **_pick(compare(trained[cs.name], trained[ct.name], labels, n_fit))}
  partner = roles.partner(main[src])
  if partner is not None:
    controls["same_view"] = {"agents": [main[src].name, partner.name], **_pick(
        compare(s, trained[partner.name], labels, n_fit))}
  result["controls"] = controls
  logging.info("seed %d, %s->%s (target->source): R^2 ridge %.3f, Procrustes %.3f, "
               "transfer %s (native %s)", seed, tgt, src, result["r2_ridge"],
               result["r2_procrustes"], result.get("transfer_acc"), result.get("native_acc"))
  return result


def run(workdirs: Sequence[str], n_fit: int = 4000, n_test: int = 1000, seed: int = 4321,
        probe_steps: int = 500, step: int | None = None, data_dir: str | None = None
        ) -> tuple[dict[str, Any], dict[str, Any]]:
  """The study (see the module docstring) over the runs in ``workdirs``.

  ``step`` picks a checkpoint of the first run (the others use their latest). For runs on
  a dataset, the paired states are images of its evaluation split, read from ``data_dir``
  (default: where the runs read it).
  Returns (the JSON-ready report, extras: arrays for the figures, the studied agents and
  their fitted maps and probes for ``export``, and the paired states ``obs[(view, size)]``
  with their ``labels``: the first ``n_fit`` fitted everything, the rest are held out).
  """
  if n_fit < 8 or n_test < 8:
    raise errors.UserError(f"Need at least 8 fitting and 8 held-out pairs, got n_fit={n_fit}, "
                           f"n_test={n_test}.")
  # Agents and their roles; the paired states every feature is computed on.
  all_agents = [a for i, w in enumerate(workdirs)
                for a in loading.load_agents(w, step if i == 0 else None)]
  roles = assign_roles(all_agents)
  used = roles.used()
  logging.info("Agents: %s", ", ".join(a.name for a in used))
  config = source_config(used, data_dir)
  k_states, k_overlap, k_pca, k_shuffle = jax.random.split(jax.random.key(seed), 4)
  paired = paired_states(config, roles, used, n_fit + n_test, k_states, k_overlap)
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
      "source": data.describe(config, paired.eval_images, used[0].workdir),
      "chance_acc": chance,
      "agents": {a.name: {"view": a.view, "kind": a.kind, "seed": a.seed,
                          **({"hparams": a.hparams} if a.hparams else {}),
                          "workdir": a.workdir, "step": a.step, **trained[a.name].scores,
                          **spectrum(trained[a.name].z[n_fit:]),
                          **(without_grad(initial[a.name].scores, "random_init_")
                             if a.name in initial else {})}
                 for a in used},
      "floors": {v: without_grad(p.scores, "pixel_pca_") for v, p in pca.items()},
      "overlap": {"views": views, "matrix": None if paired.overlap is None else
                  paired.overlap.tolist(), **({} if paired.overlap is not None else {
                      "undefined": "a recording's cameras: their poses and depth are not "
                                   "recorded, so which pixels two cameras share is unknown"})},
      "pairs": pairs, "r2_vs_pairs": curves, "summary": summarise(pairs, chance),
      "shared_summary": summarise_shared(pairs),
  }
  swept = sorted({tuple(sorted(p["hparams"].items())) for p in pairs if "hparams" in p})
  if swept:  # a sweep: the summary of each combination of values on its own
    report["summary_by_hparams"] = [
        {"hparams": dict(h), "summary": summarise(
            [p for p in pairs if tuple(sorted(p.get("hparams", {}).items())) == h], chance)}
        for h in swept]
  report["probes_by_view"] = probes_by_view(report)
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


PROBE_SCORES = ("class_acc", "shape_acc", "size_acc", "position_r2",
                "distractor_centroid_r2", "class_mlp_acc")


def probes_by_view(report: dict[str, Any]) -> dict[str, dict[str, dict[str, list[float]]]]:
  """Each view's held-out probe scores by what was probed: the pixel-PCA and random-init
  floors, the JEPA agents, the autoencoder control and the supervised ceiling, each as
  [mean, std, count] over the agents (seeds) of that kind: ``{view: {kind: {score: ...}}}``."""
  rows: dict[str, dict[str, list[dict]]] = {}
  for a in report["agents"].values():
    by_kind = rows.setdefault(a["view"], {})
    by_kind.setdefault(a["kind"] + agents.hparams_label(a.get("hparams", {})), []).append(a)
    if any(k.startswith("random_init_") for k in a):
      by_kind.setdefault("random_init", []).append(
          {k[len("random_init_"):]: v for k, v in a.items() if k.startswith("random_init_")})
  for view, floor in report["floors"].items():
    rows.setdefault(view, {})["pixel_pca"] = [
        {k[len("pixel_pca_"):]: v for k, v in floor.items()}]
  order = ("pixel_pca", "random_init", "jepa", "autoencoder", "supervised")
  # The world's labels first, then any other probed label (a recording's observation fields).
  others = sorted({k for by_kind in rows.values() for group in by_kind.values() for g in group
                   for k in g if k.endswith(("_acc", "_r2")) and not k.startswith(
                       ("random_init_", "isotropic_")) and k not in PROBE_SCORES})
  out = {}
  rank = lambda k: order.index(k.split(" ")[0]) if k.split(" ")[0] in order else len(order)
  for view, by_kind in rows.items():
    out[view] = {}
    for kind in sorted(by_kind, key=rank):
      group = by_kind[kind]
      out[view][kind] = {k: [float(np.mean(v)), float(np.std(v)), len(v)]
                         for k in (*PROBE_SCORES, *others)
                         if (v := [g[k] for g in group if g.get(k) is not None])}
  return out


def spectrum(z_NxD: jax.Array) -> dict[str, float]:
  """Effective rank, participation ratio and RankMe of held-out latents, and under
  ``isotropic_<name>`` those of isotropic Gaussian latents of the same N and D: what fully
  used latents score on so many states."""
  out = {k: float(v) for k, v in losses.spectrum_stats(z_NxD).items()}
  reference = losses.isotropic_reference(*z_NxD.shape)
  return {**out, **{f"isotropic_{k}": v for k, v in reference.items()}}


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


HEADLINE = ("r2_lstsq", "r2_ridge", "r2_procrustes", "isometry_gap", "r2_ridge_uniform",
            "r2_procrustes_uniform", "r2_ridge_whitened",
            "r2_procrustes_whitened", "isometry_gap_whitened", "cka_unbiased",
            "native_acc", "transfer_acc", "transfer_acc_procrustes", "native_position_r2",
            "transfer_position_r2")
CONTROLS = ("random_init", "shuffled_pairs", "identity", "pixel_pca", "autoencoder",
            "supervised", "same_view")


def _headline(pairs: Sequence[dict]) -> tuple[str, ...]:
  """``HEADLINE`` and every other label's native and transferred score in ``pairs``."""
  labelled = sorted({k for p in pairs for k in p if k.startswith(("native_", "transfer_"))})
  return HEADLINE + tuple(k for k in labelled if k not in HEADLINE)


def headline_transfer(report: dict[str, Any]) -> tuple[str, str, str]:
  """(native key, transfer key, what it scores) of the transfer tables show: class accuracy,
  or (a recording without a class label) its first label's."""
  if report.get("chance_acc") is not None:
    return "native_acc", "transfer_acc", "class accuracy"
  first = next(k for k in report["pairs"][0] if k.startswith("transfer_")
               and not k.endswith("_procrustes"))
  label = first[len("transfer_"):]
  what = label[:-len("_r2")] + " R^2" if label.endswith("_r2") else label[:-4] + " accuracy"
  return "native_" + label, first, what


def _means(pairs: Sequence[dict]) -> dict[str, Any]:
  """Means over ``pairs`` of the headline figures and of each control's figures; a control
  also records over how many pairs it was measured."""
  mean = lambda xs: float(np.mean(xs)) if xs else None
  out = {k: mean([p[k] for p in pairs if k in p]) for k in _headline(pairs)}
  out["controls"] = {}
  for name in CONTROLS:
    present = [p["controls"][name] for p in pairs if p["controls"].get(name)]
    if name == "same_view":  # one per view with a second seed, repeated for each target
      present = list({tuple(c["agents"]): c for c in present}.values())
    if present:
      out["controls"][name] = {k: mean([c[k] for c in present if k in c])
                               for k in present[0] if k not in ("agents", "shared")}
      out["controls"][name]["pairs"] = len(present)
  return out


def summarise(pairs: Sequence[dict], chance_acc: float | None) -> dict[str, Any]:
  """Means over ordered pairs of the headline figures and controls, their spread over
  seeds, and the goals' verdict.

  Each seed's agents give one mean over pairs; ``spread`` is the standard deviation of those
  means across seeds (0 with one seed: then the figure is one seed's, not a result).
  ``transfer_fraction`` is transferred over native accuracy; near chance that ratio says
  little, so ``transfer_fraction_above_chance`` divides what each gains over chance. Without
  a ``class`` label (a recording's states only) the class figures and goals are None.
  """
  out = _means(pairs)
  seeds = sorted({p.get("seed", 0) for p in pairs})
  per_seed = [_means([p for p in pairs if p.get("seed", 0) == s]) for s in seeds]
  std = lambda xs: float(np.std(xs)) if len(xs) > 1 else 0.0
  out["seeds"] = seeds
  out["spread"] = {k: std([m[k] for m in per_seed if m.get(k) is not None])
                   for k in _headline(pairs) if out[k] is not None}
  out["spread"]["controls"] = {
      name: {k: std([m["controls"][name][k] for m in per_seed
                     if name in m["controls"] and m["controls"][name].get(k) is not None])
             for k, v in c.items() if k != "pairs" and v is not None}
      for name, c in out["controls"].items()}
  classes = out["transfer_acc"] is not None and chance_acc is not None
  out["transfer_fraction"] = out["transfer_acc"] / out["native_acc"] if classes else None
  out["transfer_fraction_above_chance"] = ((out["transfer_acc"] - chance_acc)
                                           / max(out["native_acc"] - chance_acc, 1e-6)
                                           if classes else None)
  # How far each null control falls below the real result (the ceilings are not nulls).
  out["control_margins"] = {
      name: {"r2": out["r2_ridge"] - c.get("r2_ridge", c.get("r2_identity")),
             "transfer_acc": out["transfer_acc"] - c["transfer_acc"] if classes else None}
      for name, c in out["controls"].items() if name not in ("same_view", "supervised")}
  out["goals"] = dict(GOALS)
  out["goals_met"] = {
      "r2": out["r2_ridge"] >= GOALS["r2_min"],
      "isometry_gap": out["isometry_gap"] <= GOALS["isometry_gap_max"],
      "transfer": (min(out["transfer_fraction"], out["transfer_fraction_above_chance"])
                   >= GOALS["transfer_fraction_min"]
                   and out["transfer_acc"] >= GOALS["transfer_acc_min"]) if classes else None,
      "controls_worse": all(m["transfer_acc"] >= GOALS["control_margin_min"]
                            for m in out["control_margins"].values()) if classes else None,
  }
  return out


# --- The shared part, summarised ---------------------------------------------------------

def pair_type(p: dict) -> str:
  """``cameras`` (a recording: overlap undefined), ``scant_overlap`` or ``surface``."""
  if p.get("scant_overlap") is None:
    return "cameras"
  return "scant_overlap" if p["scant_overlap"] else "surface"


def shared_figures(p: dict) -> dict[str, float | None]:
  """One pair's shared-part figures, flat: the dimensions, the span maps at k_iso and
  k_null, the whole gap and its terms, the whitened prediction, the ceilings, and the
  probes on the shared part as fractions of the whole-latent native accuracies (the
  source's, for what the span carries; the target's own, for what crosses)."""
  d = p["shared"]
  at_iso, at_null = d["at_k_iso"] or {}, d["at_k_null"] or {}
  t_iso, t_null = d.get("transfer_k_iso") or {}, d.get("transfer_k_null") or {}
  frac = lambda a, b: None if a is None or not b else a / b
  out = {"k_null": d["k_null"], "k_iso": d["k_iso"],
         "r2_procrustes_k_iso": at_iso.get("r2_procrustes"), "gap_k_iso": at_iso.get("gap"),
         "r2_lstsq_k_null": at_null.get("r2_lstsq"),
         "r2_procrustes_k_null": at_null.get("r2_procrustes"), "gap_k_null": at_null.get("gap"),
         "sv_ratio_k_null": frac(at_null.get("sv_max"), at_null.get("sv_min")),
         "gap": d["gap"], **{f"gap_{k}": v for k, v in d["gap_terms"].items()},
         "gap_whitened": p.get("isometry_gap_whitened"),
         "gap_predicted_whitened": d["gap_predicted_whitened"],
         "mlp_map_r2": d.get("mlp_map_r2"), "r2_ridge": p.get("r2_ridge"),
         "state_r2": d.get("state_r2"), "state_r2_shared": d.get("state_r2_shared")}
  for name, t in (("k_iso", t_iso), ("k_null", t_null)):
    out[f"native_acc_{name}"] = t.get("native_acc")
    out[f"transfer_acc_{name}"] = t.get("transfer_acc")
    out[f"native_fraction_{name}"] = frac(t.get("native_acc"), p.get("source_acc"))
    out[f"transfer_fraction_{name}"] = frac(t.get("transfer_acc"), p.get("native_acc"))
    for k, v in t.items():
      if k.startswith(("native_", "transfer_")) and k not in ("native_acc", "transfer_acc"):
        out[f"{k}_{name}"] = v
  out["transfer_fraction"] = frac(p.get("transfer_acc"), p.get("native_acc"))
  for k in (key for key in p if key.startswith("transfer_") and key.endswith("_r2")):
    out[f"{k[len('transfer_'):]}_transfer_over_native"] = frac(
        p[k], p.get("native_" + k[len("transfer_"):]))
  for name, c in p["controls"].items():
    if c and "shared" in c:
      out[f"{name}_k_null"] = c["shared"]["k_null"]
      out[f"{name}_k_iso"] = c["shared"]["k_iso"]
  return out


def summarise_shared(pairs: Sequence[dict]) -> dict[str, Any]:
  """Per pair type (``pair_type``): every ``shared_figures`` entry as [mean, spread over
  seeds, pairs], and the shared-part goals' verdict."""
  out = {}
  for kind in sorted({pair_type(p) for p in pairs}):
    group = [p for p in pairs if pair_type(p) == kind]
    rows = [(p.get("seed", 0), shared_figures(p)) for p in group]
    seeds = sorted({s for s, _ in rows})
    keys = list(dict.fromkeys(k for _, r in rows for k in r))
    figures = {}
    for k in keys:
      values = [r[k] for _, r in rows if r.get(k) is not None]
      per_seed = [np.mean(v) for s in seeds
                  if (v := [r[k] for t, r in rows if t == s and r.get(k) is not None])]
      if values:
        figures[k] = [float(np.mean(values)),
                      float(np.std(per_seed)) if len(per_seed) > 1 else 0.0, len(values)]
    mean = lambda k: figures.get(k, [None])[0]
    by_pair = {}
    for p, (_, r) in zip(group, rows):
      by_pair.setdefault((p["source"], p["target"]), []).append(r["k_iso"])
    k_iso_worst_pair = min(float(np.mean(v)) for v in by_pair.values())
    worst = lambda k, f: f([r[k] for _, r in rows if r.get(k) is not None], default=None)
    accounted = worst("gap_beyond_span", lambda v, default: max(map(abs, v), default=default))
    whitened = [abs(r["gap_whitened"] - r["gap_predicted_whitened"]) for _, r in rows
                if r.get("gap_whitened") is not None]
    out[kind] = {
        "pairs": len(group), "seeds": seeds, "figures": figures,
        "worst": {"k_iso": worst("k_iso", min), "k_iso_pair_mean": k_iso_worst_pair,
                  "gap_beyond_span": accounted,
                  "whitened_prediction_error": max(whitened, default=None)},
        "goals_met": {
            "k_iso": k_iso_worst_pair >= GOALS["k_iso_min"],
            "shared_native": _at_least(mean("native_fraction_k_iso"),
                                       GOALS["shared_native_fraction_min"]),
            "shared_transfer": _at_least(mean("transfer_fraction_k_iso"),
                                         GOALS["shared_transfer_fraction_min"]),
            "gap_accounted": accounted is not None and accounted <= GOALS["gap_accounted_max"]
                             and max(whitened, default=0.0) <= GOALS["gap_accounted_max"]},
    }
  return out


def _at_least(x: float | None, goal: float) -> bool | None:
  return None if x is None else x >= goal
