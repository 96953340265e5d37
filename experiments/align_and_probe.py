r"""Fits linear maps between trained agents and transfers probes through them, with controls.

  python -m experiments.align_and_probe --workdir=/tmp/sjepa
  python -m experiments.align_and_probe --workdirs=/tmp/sjepa,/tmp/sjepa_ae,/tmp/sjepa_seed1
  python -m experiments.align_and_probe --workdir=/tmp/mnist --pairs=1000 --test_pairs=500

Agents come from the runs' checkpoints: JEPA agents on distinct views are studied pair
by pair; a run trained with ``--config.objective.kind=autoencoder`` on the same views adds
the autoencoder control, and a JEPA run on a view already present (another ``--seed``)
adds the same-view ceiling. Runs on a dataset (``experiments.train --dataset``) pair its
evaluation images, seen through each agent's region, and probe its labels. Writes
``report.json`` and PNG figures (``figures/``) into the first workdir (or ``--out``) and
prints a short table; if that folder already holds a study, into a fresh ``study_<n>``
subfolder (said so; ``--overwrite`` replaces it instead). Pairs are written target->source
(the target's latents mapped into the source's space) in the table, log and figures. See
sjepa_jax/study.py for what is measured.
"""

import os

from absl import app
from absl import flags

from experiments import common
from sjepa_jax import agents
from sjepa_jax import data
from sjepa_jax import files
from sjepa_jax import figures
from sjepa_jax import study
from sjepa_jax import summaries

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Several runs' workdirs, comma-separated; "
                              "the report goes into the first.")
_PAIRS = flags.DEFINE_integer("pairs", 4000, "Paired states the maps and probes are fitted on.")
_TEST_PAIRS = flags.DEFINE_integer("test_pairs", 1000, "Held-out paired states they are "
                                   "scored on (never used in fitting).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of the first run (default: latest).")
_OUT = flags.DEFINE_string("out", None, "Where report.json and figures/ go (default: the "
                           "first workdir).")
_SEED = flags.DEFINE_integer("seed", 4321, "Seed of the paired states and the controls.")
_PROBE_STEPS = flags.DEFINE_integer("probe_steps", 500, "Most L-BFGS iterations of the logistic "
                                    "probes (they stop once converged).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "For runs on a dataset: the tfds data "
                                "directory holding it (default: the one they trained from).")
_PROBE_FIT = flags.DEFINE_enum("probe_fit", None, list(data.PROBE_FITS), "For runs on a dataset "
                               "or recording, where the maps and probes are fitted: eval (on "
                               "--pairs states of its evaluation split, scored on the next "
                               "--test_pairs) or train (on --pairs of its training split, "
                               "scored on --test_pairs of the evaluation split); default: the "
                               "run's eval.probe_fit.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a previous study's report.json "
                                "and figures/ in the output folder (default: write to a fresh "
                                "study_<n> subfolder beside them).")
_EXPORT = flags.DEFINE_string("export", None, "Also write each studied pair's maps and each "
                              "studied agent's probes as small files into this folder "
                              "(maps/, probes/; load one with sjepa_jax.load).")
flags.register_multi_flags_validator(
    ["workdir", "workdirs"], lambda f: (f["workdir"] is None) != (f["workdirs"] is None),
    message="Give exactly one of --workdir or --workdirs.")
flags.adopt_module_key_flags(common)  # --traceback (and shared flags) show in --help


def _pm(x, spread, width: int) -> str:
  """``x +- spread`` (the spread over seeds) in ``width`` characters; ``-`` when absent."""
  if x is None:
    return f"{'-':>{width}}"
  return f"{f'{x:.3f}+-{spread:.3f}' if spread else f'{x:.3f}':>{width}}"


def _num(x, width: int, digits: int = 3) -> str:
  return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def print_table(report: dict) -> None:
  s = report["summary"]
  native, transfer, what = summaries.headline_transfer(report)
  print("\nA pair 'target->source' maps the target agent's latents into the source's space "
        f"and applies the source's probes there (zero gradient steps on the target); native "
        f"and transfer: {what}.")
  if report["overlap"].get("undefined"):
    print(f"Overlap undefined: {report['overlap']['undefined']}.")
  print(f"{'seed':<5}{'pair (target->source)':<22}{'overlap':>8}{'R2 lstsq':>9}{'R2 ridge':>9}"
        f"{'R2 Procr':>9}{'gap':>7}{'CKA-u':>7}{'native':>8}{'transfer':>9}")
  for p in report["pairs"]:
    swept = agents.hparams_label(p.get("hparams", {}))
    print(f"{p['seed']:<5}{p['target'] + '->' + p['source'] + swept:<22}{_num(p['overlap'], 8)}"
          f"{p['r2_lstsq']:>9.3f}{p['r2_ridge']:>9.3f}{p['r2_procrustes']:>9.3f}"
          f"{p['isometry_gap']:>7.3f}{p['cka_unbiased']:>7.3f}{_num(p.get(native), 8)}"
          f"{_num(p.get(transfer), 9)}")
  sp = s["spread"]
  print(f"\nMeans over pairs, +- the spread (std) of the per-seed means over {len(s['seeds'])} "
        f"seed(s) {s['seeds']}:")
  shown = ("r2_ridge", "r2_ridge_uniform", "r2_ridge_whitened", "r2_procrustes",
           "isometry_gap", "cka_unbiased", "native_acc", "transfer_acc", "native_position_r2",
           "transfer_position_r2")
  labelled = sorted(k for k in s if k.startswith(("native_", "transfer_")) and k not in shown
                    and not k.endswith("_procrustes"))
  for k in (*shown, *labelled):
    if s.get(k) is not None:
      print(f"  {k:<32}{_pm(s[k], sp.get(k, 0.0), 16)}")
  print_controls(report, labelled)
  print_probes(report)
  for group in report.get("summary_by_hparams", ()):
    g = group["summary"]
    values = ", ".join(f"{k}={v:g}" for k, v in group["hparams"].items())
    print(f"\n{values}: R2 ridge {g['r2_ridge']:.3f}, gap {g['isometry_gap']:.3f}, "
          f"native {_num(g.get('native_acc'), 0)}, transfer {_num(g.get('transfer_acc'), 0)}")
  print_shared(report)
  print(f"\nGoals {s['goals']}: met {s['goals_met']}")


_SHARED_ROWS = (
    ("k_null", "shared directions above the shuffled null (k_null)"),
    ("k_iso", "isometric dimension (k_iso)"),
    ("r2_procrustes_k_iso", "Procrustes R^2 on the k_iso span"),
    ("gap_k_null", "gap on the k_null span"),
    ("sv_ratio_k_null", "map's singular values max/min, k_null span"),
    ("gap", "whole-latent gap"),
    ("gap_beyond_span", "  = linear map beyond the k_null span"),
    ("gap_shared_not_rotation", "  + shared part not a rotation"),
    ("gap_unshared_rotation", "  + one rotation over unshared directions"),
    ("gap_whitened", "whitened gap, measured"),
    ("gap_predicted_whitened", "whitened gap the spectrum predicts, var(rho)"),
    ("r2_ridge", "whole-latent ridge R^2"),
    ("mlp_map_r2", "MLP map R^2"),
    ("state_r2", "state ceiling R^2 (source latent)"),
    ("state_r2_shared", "state ceiling R^2 (its k_null span)"),
    ("native_fraction_k_iso", "class on k_iso span / source native"),
    ("transfer_fraction_k_iso", "class through k_iso span / target native"),
    ("transfer_fraction", "class through whole map / target native"),
    ("random_init_k_null", "random-init k_null"),
    ("shuffled_pairs_k_null", "shuffled-pairs k_null"),
    ("pixel_pca_k_null", "pixel PCA k_null"),
    ("pixel_pca_k_iso", "pixel PCA k_iso"),
    ("same_view_k_iso", "same view, two seeds: k_iso"),
    ("supervised_k_iso", "supervised agents: k_iso"))


def print_shared(report: dict) -> None:
  """The shared-part decomposition per pair type: means +- the spread over seeds."""
  summary = report.get("shared_summary", {})
  if not summary:
    return
  kinds = list(summary)
  print("\nThe shared part (sjepa_jax/shared.py), per pair type; mean +- spread over seeds "
        "(pairs):")
  headings = [f"{k} ({summary[k]['pairs']})" for k in kinds]
  print(f"{'':<50}" + "".join(f"{h:>20}" for h in headings))
  for key, label in _SHARED_ROWS:
    cells = [summary[k]["figures"].get(key) for k in kinds]
    if any(c is not None for c in cells):
      print(f"{label:<50}" + "".join(_pm(c[0], c[1], 20) if c else f"{'-':>20}"
                                     for c in cells))
  for k in kinds:
    print(f"{k}: goals met {summary[k]['goals_met']}; worst {summary[k]['worst']}")


def print_controls(report: dict, labelled: list[str]) -> None:
  """Each control's means over the pairs it was measured on: map R^2 and the transferred
  class accuracy, position R^2 and every other label's score (``labelled``)."""
  s, chance = report["summary"], report["chance_acc"]
  sp = s["spread"]
  print("\nControls, means over the pairs each was measured on"
        f"{'' if chance is None else f' (class chance {chance:.3f})'}:")
  columns = [k for k in ("transfer_acc", "transfer_position_r2", *labelled)
             if k.startswith("transfer_") and any(k in c for c in s["controls"].values())]
  headings = {k: ("class" if k == "transfer_acc" else k[len("transfer_"):]) + " transfer"
              for k in columns}
  widths = {k: max(18, len(h) + 2) for k, h in headings.items()}
  print(f"{'control':<16}{'pairs':>6}{'R2 ridge':>16}{'R2 Procr':>16}"
        + "".join(f"{headings[k]:>{widths[k]}}" for k in columns))
  for name, c in s["controls"].items():
    cs = sp["controls"].get(name, {})
    r2 = "r2_ridge" if "r2_ridge" in c else "r2_identity"
    print(f"{name:<16}{c['pairs']:>6}{_pm(c.get(r2), cs.get(r2, 0.0), 16)}"
          f"{_pm(c.get('r2_procrustes'), cs.get('r2_procrustes', 0.0), 16)}"
          + "".join(_pm(c.get(k), cs.get(k, 0.0), widths[k]) for k in columns))


_HEADINGS = {"class_acc": "class", "shape_acc": "shape", "size_acc": "size",
             "position_r2": "pos R2",
             "distractor_centroid_r2": "pucks R2", "class_mlp_acc": "class MLP"}


def print_probes(report: dict) -> None:
  """Per view, each kind of latent's held-out probes, floors first and ceiling last."""
  by_view = report["probes_by_view"]
  present = {k for kinds in by_view.values() for row in kinds.values() for k in row}
  scores = [k for k in _HEADINGS if k in present] + sorted(present - set(_HEADINGS))
  heading = lambda k: _HEADINGS.get(k, k)
  width = max([14] + [len(heading(k)) + 2 for k in scores])
  print("\nHeld-out probes per view (accuracy or R^2; mean+-std over seeds where several):")
  print(f"{'view / latents':<24}" + "".join(f"{heading(k):>{width}}" for k in scores))
  for view, kinds in by_view.items():
    for kind, row in kinds.items():
      print(f"{view + ' ' + kind:<24}" + "".join(
          _pm(row[k][0], row[k][1], width) if k in row else f"{'-':>{width}}" for k in scores))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_library_logs()
  common.enable_compilation_cache()
  workdirs = [_WORKDIR.value] if _WORKDIR.value else _WORKDIRS.value
  report, extras = study.run(workdirs, _PAIRS.value, _TEST_PAIRS.value, _SEED.value,
                             _PROBE_STEPS.value, _STEP.value,
                             _DATA_DIR.value and os.path.abspath(
                                 os.path.expanduser(_DATA_DIR.value)), _PROBE_FIT.value)
  report = {"command": common.command_line(), **report}
  out = files.fresh_folder(_OUT.value or workdirs[0], _OVERWRITE.value)
  common.write_json(report, os.path.join(out, "report.json"))
  paths = figures.write_all(report, extras, os.path.join(out, "figures"))
  print_table(report)
  print(f"\nWrote {os.path.join(out, 'report.json')} and {len(paths)} figures in "
        f"{os.path.join(out, 'figures')}.")
  if _EXPORT.value:
    sizes = study.export(report, extras, _EXPORT.value)
    maps = [size for path, size in sizes.items() if "/maps/" in path]
    frames = report["n_fit"] * extras["frame_bytes"]
    print(f"Exported {len(maps)} maps and {len(sizes) - len(maps)} probes to {_EXPORT.value}: "
          f"a map is {max(maps)} bytes; the {report['n_fit']} paired frames per agent it was "
          f"fitted from are {frames} bytes (uint8).")


if __name__ == "__main__":
  common.run(main)
