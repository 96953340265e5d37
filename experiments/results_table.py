r"""The README's results table, made from the committed reports so it cannot drift from them.

  python -m experiments.results_table                  # prints the table
  python -m experiments.results_table --check=README.md   # fails if the README's is stale

Each row is a goal of DESIGN.md (docs/design.md), the figure the reports give for it (mean
+- std over seeds where there are several), whether it is met, and the report; below the
table, the command that made each report (as the report records it). The README holds the
table between ``<!-- results:begin -->`` and ``<!-- results:end -->``; the test suite
checks it.
"""

import glob
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

from sjepa_jax import summaries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
G = summaries.GOALS

_DOCS = flags.DEFINE_string("docs", os.path.join(ROOT, "docs"), "Where the reports are.")
_CHECK = flags.DEFINE_string("check", None, "A markdown file whose results block must equal "
                             "the table (exit status 1 and the difference if not).")


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _pm(values) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  mean, std = float(np.mean(values)), float(np.std(values))
  return f"{mean:.2f} +- {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def _row(goal: str, measured: str, met: bool | None, report: str) -> str:
  verdict = "-" if met is None else ("**met**" if met else "missed")
  return f"| {goal} | {measured} | {verdict} | [{report}]({report}) |"


def world_rows(report: dict, path: str) -> list[str]:
  """Rows of the world study: readability, what the agents learn, the alignment goals."""
  by_view, s = report["probes_by_view"], report["summary"]
  rows = []
  views = list(by_view)
  sup = {v: by_view[v].get("supervised", {}) for v in views}
  if all(sup.values()):
    worst = lambda k: min(sup[v][k][0] for v in views)
    rows.append(_row(f"Readable world: supervised ceiling class >= {G['ceiling_class_min']}, "
                     f"position R^2 >= {G['ceiling_position_r2_min']} on every view",
                     f"worst view {worst('class_acc'):.2f} / {worst('position_r2'):.2f}",
                     worst("class_acc") >= G["ceiling_class_min"]
                     and worst("position_r2") >= G["ceiling_position_r2_min"], path))
  jepa = {v: by_view[v]["jepa"] for v in views}
  low = lambda k: min(jepa, key=lambda v: jepa[v][k][0])
  c, p = low("class_acc"), low("position_r2")
  rows.append(_row(f"JEPA agents: class >= {G['jepa_class_min']} and position R^2 >= "
                   f"{G['jepa_position_r2_min']} on every view",
                   f"class {jepa[c]['class_acc'][0]:.2f} ({c}) to "
                   f"{max(j['class_acc'][0] for j in jepa.values()):.2f}; position "
                   f"{jepa[p]['position_r2'][0]:.2f} ({p}) to "
                   f"{max(j['position_r2'][0] for j in jepa.values()):.2f}",
                   jepa[c]["class_acc"][0] >= G["jepa_class_min"]
                   and jepa[p]["position_r2"][0] >= G["jepa_position_r2_min"],
                   path))
  sp = s["spread"]
  pm = lambda k: f"{s[k]:.2f} +- {sp.get(k, 0.0):.2f}"
  met = s["goals_met"]
  rows.append(_row(f"Linear map between agents: held-out R^2 >= {G['r2_min']} (all view pairs)",
                   pm("r2_ridge"), met["r2"], path))
  rows.append(_row(f"Isometry: gap (ridge R^2 - Procrustes R^2) <= {G['isometry_gap_max']}",
                   pm("isometry_gap"),
                   met["isometry_gap"], path))
  rows.append(_row(f"Zero-shot probe transfer >= {G['transfer_fraction_min']:.0%} of native and "
                   f">= {G['transfer_acc_min']}",
                   f"{pm('transfer_acc')} of native {s['native_acc']:.2f} "
                   f"({s['transfer_fraction']:.0%})", met["transfer"], path))
  margin = min(m["transfer_acc"] for m in s["control_margins"].values())
  rows.append(_row(f"Every null control at least {G['control_margin_min']} below in transfer",
                   f"smallest margin {margin:.2f}", met["controls_worse"], path))
  scant = [p for p in report["pairs"]
           if p.get("overlap") is not None and p["overlap"] < summaries.SCANT_OVERLAP]
  if scant:
    r2 = float(np.mean([p["r2_ridge"] for p in scant]))
    rows.append(_row(f"Alignment survives scant overlap: R^2 >= {G['scant_r2_min']} under "
                     f"{summaries.SCANT_OVERLAP:.0%} pixel overlap",
                     f"{r2:.2f} over {len(scant)} ordered pairs", r2 >= G["scant_r2_min"], path))
  return rows


def shared_rows(report: dict, path: str) -> list[str]:
  """Rows of the shared-part decomposition (docs/alignment.md), per pair type."""
  rows = []
  summary = report.get("shared_summary", {})
  for kind in sorted(summary, key=lambda k: k != "surface"):  # the claim's own pairs first
    g = summary[kind]
    f, met, worst = g["figures"], g["goals_met"], g["worst"]
    pm = lambda k: "-" if k not in f else f"{f[k][0]:.2f} +- {f[k][1]:.2f}"
    where = {"surface": "surface view pairs", "scant_overlap": "pairs under 10% overlap",
             "cameras": "camera pairs"}.get(kind, kind)
    rows.append(_row(f"Shared isometric part, {where}: k_iso >= {G['k_iso_min']} on every pair",
                     f"k_iso {pm('k_iso')} (worst pair {worst['k_iso_pair_mean']:.1f}) of "
                     f"k_null {pm('k_null')} shared directions", met["k_iso"], path))
    if met["shared_native"] is not None:  # a class label to read (not a recording's)
      rows.append(_row(f"It carries the object, {where}: class on the k_iso span >= "
                       f"{G['shared_native_fraction_min']:.0%} of native; through it >= "
                       f"{G['shared_transfer_fraction_min']:.0%} of the target's native",
                       f"{pm('native_fraction_k_iso')} / {pm('transfer_fraction_k_iso')}",
                       met["shared_native"] and met["shared_transfer"], path))
    rows.append(_row(f"The decomposition accounts for the gap, {where}: within "
                     f"{G['gap_accounted_max']}",
                     f"gap {pm('gap')} = beyond span {pm('gap_beyond_span')} + shared part "
                     f"{pm('gap_shared_not_rotation')} + unshared {pm('gap_unshared_rotation')}"
                     f"; whitened prediction off by up to "
                     f"{worst['whitened_prediction_error']:.2f}", met["gap_accounted"], path))
  return rows


def emergence_rows(report: dict, path: str) -> list[str]:
  """The decomposition at the last step of the emergence report (every pair and seed of the
  run), then whether the isometric part grew with training."""
  rows, last = [], report["by_step"][-1]
  where = {"surface": "surface view pairs", "scant_overlap": "pairs under 10% overlap",
           "cameras": "camera pairs"}
  for kind in [k for k in report["summary"] if k != "probes"]:
    pairs = [p for p in last["pairs"] if summaries.pair_type(p) == kind]
    by_pair, by_seed = {}, {}
    for p in pairs:
      by_pair.setdefault((p["source"], p["target"]), []).append(p["k_iso"])
      by_seed.setdefault(p["seed"], []).append(p)
    seed_mean = lambda k: [float(np.mean([p[k] for p in g])) for g in by_seed.values()]
    worst = min(float(np.mean(v)) for v in by_pair.values())
    beyond = max(abs(p["gap_beyond_span"]) for p in pairs)
    rows.append(_row(f"Shared isometric part, {where.get(kind, kind)}, step {last['step']}: "
                     f"k_iso >= {G['k_iso_min']} on every pair",
                     f"k_iso {_pm(seed_mean('k_iso'))} (worst pair {worst:.1f}) of k_null "
                     f"{_pm(seed_mean('k_null'))} shared directions",
                     worst >= G["k_iso_min"], path))
    rows.append(_row(f"The shared span accounts for the gap, {where.get(kind, kind)}: "
                     f"within {G['gap_accounted_max']}",
                     f"gap {_pm(seed_mean('gap'))} = beyond span "
                     f"{_pm(seed_mean('gap_beyond_span'))} + shared part not a rotation "
                     f"{_pm(seed_mean('gap_shared_not_rotation'))} + one rotation over "
                     f"unshared directions {_pm(seed_mean('gap_unshared_rotation'))}; largest "
                     f"beyond span {beyond:.2f}", beyond <= G["gap_accounted_max"], path))
  return rows + [emergence_row(report, path)]


def emergence_row(report: dict, path: str) -> str:
  """Does the isometric part grow with training beyond the seeds' spread?"""
  kind = "surface" if "surface" in report["summary"] else next(
      k for k in report["summary"] if k != "probes")
  by_step = report["summary"][kind]
  first, last = by_step[str(report["steps"][0])], by_step[str(report["steps"][-1])]
  grown = last["k_iso"][0] - first["k_iso"][0]
  spread = max(first["k_iso"][1], last["k_iso"][1])
  return _row("Emergence: the isometric part grows with training (k_iso, surface pairs, "
              "beyond twice the seeds' spread)",
              f"k_iso {first['k_iso'][0]:.1f} at step {report['steps'][0]} -> "
              f"{last['k_iso'][0]:.1f} at step {report['steps'][-1]}; k_null "
              f"{first['k_null'][0]:.1f} -> {last['k_null'][0]:.1f}",
              grown > 2 * spread, path)


def migration_rows(reports: list[tuple[str, dict]]) -> list[str]:
  """The migration goals over the student seeds' reports: the migrating student's FLOPs to
  the target against scratch, the null teachers' (no saving from the loss term alone), and
  its final accuracy against scratch's."""
  first, folder = reports[0][1], os.path.dirname(os.path.dirname(reports[0][0]))
  target = first["target_acc"]

  def ratios(role):
    values = [r["students"][role]["ratio"] for _, r in reports]
    reached = [x for x in values if x is not None]
    return reached, (f"{_pm(reached)}x over {len(reached)} of {len(values)} seeds" if reached
                     else f"target {target} not reached")

  reached, text = ratios("migrate")
  rows = [_row(f"Migration from a {first['teacher_kind']} teacher: FLOPs to class accuracy "
               f"{target} <= {G['migration_flops_ratio_max']}x scratch", text,
               len(reached) == len(reports)
               and float(np.mean(reached)) <= G["migration_flops_ratio_max"], folder)]
  texts, met = [], True
  for role in ("random_teacher", "shuffled_pairs"):
    reached, text = ratios(role)
    texts.append(f"{role.replace('_', ' ')} {text}")
    # A null teacher's student that never reaches the target saved nothing: the goal holds.
    met &= not reached or float(np.mean(reached)) >= G["migration_null_ratio_min"]
  rows.append(_row(f"Null teachers (random init, shuffled pairs): FLOPs ratio >= "
                   f"{G['migration_null_ratio_min']}", "; ".join(texts), met, folder))
  final = [r["students"]["migrate"]["final_acc"] for _, r in reports]
  scratch = [r["scratch_final_acc"] for _, r in reports]
  rows.append(_row("The migrating student ends at or above the scratch student (class)",
                   f"{_pm(final)} against {_pm(scratch)}",
                   float(np.mean(final)) >= float(np.mean(scratch)), folder))
  return rows


def table(docs: str) -> str:
  """The markdown table of every goal with a committed report under ``docs``, then the
  command behind each report."""
  rows = ["| goal | measured | verdict | report |", "|---|---|---|---|"]
  commands = {}
  study_path = os.path.join(docs, "align", "report.json")
  study = _load(study_path) if os.path.exists(study_path) else None
  if study is not None:
    path = os.path.relpath(study_path, ROOT)
    rows += world_rows(study, path)
    commands[path] = study.get("command")
  recorded = sorted(glob.glob(os.path.join(docs, "recordings", "*", "report.json")))
  studies = ([(study_path, study)] if study is not None else []) + [(p, _load(p)) for p in recorded]
  for decomposed, report in studies:
    if "shared_summary" in report:
      path = os.path.relpath(decomposed, ROOT)
      rows += shared_rows(report, path)
      commands[path] = report.get("command")
  emergence = os.path.join(docs, "align", "emergence.json")
  if os.path.exists(emergence):
    report, path = _load(emergence), os.path.relpath(emergence, ROOT)
    # Where the study itself is decomposed, its rows are the final step's; the emergence
    # report adds only whether the isometric part grew.
    world_decomposed = study is not None and "shared_summary" in study
    rows += [emergence_row(report, path)] if world_decomposed else emergence_rows(report, path)
    commands[path] = report.get("command")
  for folder in sorted(glob.glob(os.path.join(docs, "migrate*"))):
    seeds = [(os.path.relpath(p, ROOT), _load(p))
             for p in sorted(glob.glob(os.path.join(folder, "seed*", "report.json")))]
    if seeds:
      rows += migration_rows(seeds)
      commands[seeds[0][0]] = seeds[0][1].get("command")
  lines = [f"- `{path}`: `{cmd}`" for path, cmd in commands.items() if cmd]
  return "\n".join(rows) + ("\n\nMade by:\n\n" + "\n".join(lines) if lines else "")


def block(text: str) -> str:
  """The results block of a markdown text (between the markers)."""
  if BEGIN not in text or END not in text:
    raise ValueError(f"No {BEGIN} ... {END} block in the file.")
  return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip()


def main(argv):
  del argv
  made = table(_DOCS.value)
  if _CHECK.value is None:
    print(made)
    return
  with open(_CHECK.value) as f:
    held = block(f.read())
  if held != made:
    print(f"{_CHECK.value}'s results table is not the reports' (run `python -m "
          f"experiments.results_table` and paste it between the markers):\n\n{made}")
    sys.exit(1)
  print(f"{_CHECK.value}'s results table matches the reports.")


if __name__ == "__main__":
  app.run(main)
