"""A study's pairs summarised: means and seed spreads of the headline figures and the
controls, the goals' verdicts, per-view probe tables, and the shared part per pair type.
"""

from typing import Any, Sequence

import numpy as np

from sjepa_jax import agents
from sjepa_jax import probes

# DESIGN.md's goals: what "an approximate linear isometry that transfers" must mean. On the
# whole latent: R^2, the isometry gap, transfer (a fraction of native, and in absolute
# accuracy), and every null control at least a margin below the agents in transfer
# accuracy; R^2 kept under scant overlap; the world readable (the supervised ceiling) and
# read (the JEPA agents' probes). On the shared part (docs/alignment.md, written before the
# runs): an isometric dimension k_iso of at least 16 on surface pairs, whose directions
# carry 90% of the source's native class accuracy and transfer 95% of the target's own; the
# decomposition accounting for the whole gap within 0.02. Migration: FLOPs to the target at
# most 0.28x scratch (the preprint's figure); the null teachers' at least 0.9x (no saving
# from the extra loss term alone).
GOALS = {"r2_min": 0.9, "isometry_gap_max": 0.05, "transfer_fraction_min": 0.95,
         "transfer_acc_min": 0.85, "control_margin_min": 0.1, "scant_r2_min": 0.8,
         "ceiling_class_min": 0.9, "ceiling_position_r2_min": 0.95, "jepa_class_min": 0.85,
         "jepa_position_r2_min": 0.9, "k_iso_min": 16, "shared_native_fraction_min": 0.9,
         "shared_transfer_fraction_min": 0.95, "gap_accounted_max": 0.02,
         "migration_flops_ratio_max": 0.28, "migration_null_ratio_min": 0.9,
         # A label pixel PCA reads: R^2 above this, or accuracy this far above random init.
         "pixels_read_r2_min": 0.2, "pixels_read_acc_margin": 0.05}


def pixels_read(score: str, pca: float, random_init: float) -> bool:
  """Whether pixel PCA reads a label: R^2 (``score`` ending ``_r2``) above
  ``pixels_read_r2_min``, or accuracy ``pixels_read_acc_margin`` above random init."""
  if score.endswith("_r2"):
    return pca > GOALS["pixels_read_r2_min"]
  return pca >= random_init + GOALS["pixels_read_acc_margin"]


# Pairs where either view sees under this fraction of the other's pixels.
SCANT_OVERLAP = 0.1


PROBE_SCORES = tuple(probes.SCORE_HEADINGS)


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
