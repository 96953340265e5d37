r"""The README's results table, made from the committed reports so it cannot drift from them.

  python -m experiments.results_table                  # prints the table
  python -m experiments.results_table --check=README.md   # fails if the README's is stale

Each row is a goal of DESIGN.md (docs/design.md), the figure the reports give for it (mean
+- std over seeds where there are several), whether it is met, and the report and the
command that made it (the command each report records). The README holds the table between
``<!-- results:begin -->`` and ``<!-- results:end -->``; the test suite checks it.
"""

import glob
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

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


def _row(goal: str, measured: str, met: bool | None, report: str, command: str) -> str:
  verdict = "-" if met is None else ("**met**" if met else "missed")
  return f"| {goal} | {measured} | {verdict} | [{report}]({report}) | `{command}` |"


def world_rows(report: dict, path: str) -> list[str]:
  """Rows of the world study: readability, what the agents learn, the alignment goals."""
  by_view, s = report["probes_by_view"], report["summary"]
  cmd, rows = report.get("command", "python -m experiments.align_and_probe"), []
  views = list(by_view)
  sup = {v: by_view[v].get("supervised", {}) for v in views}
  if all(sup.values()):
    worst = lambda k: min(sup[v][k][0] for v in views)
    rows.append(_row("Readable world: supervised ceiling class >= 0.9, position R^2 >= 0.95 "
                     "on every view", f"worst view {worst('class_acc'):.2f} / "
                     f"{worst('position_r2'):.2f}",
                     worst("class_acc") >= 0.9 and worst("position_r2") >= 0.95, path, cmd))
  jepa = {v: by_view[v]["jepa"] for v in views}
  low = lambda k: min(jepa, key=lambda v: jepa[v][k][0])
  c, p = low("class_acc"), low("position_r2")
  rows.append(_row("JEPA agents: class >= 0.85 and position R^2 >= 0.9 on every view",
                   f"class {jepa[c]['class_acc'][0]:.2f} ({c}) to "
                   f"{max(j['class_acc'][0] for j in jepa.values()):.2f}; position "
                   f"{jepa[p]['position_r2'][0]:.2f} ({p}) to "
                   f"{max(j['position_r2'][0] for j in jepa.values()):.2f}",
                   jepa[c]["class_acc"][0] >= 0.85 and jepa[p]["position_r2"][0] >= 0.9,
                   path, cmd))
  sp = s["spread"]
  pm = lambda k: f"{s[k]:.2f} +- {sp.get(k, 0.0):.2f}"
  met = s["goals_met"]
  rows.append(_row("Linear map between agents: held-out R^2 >= 0.9 (all view pairs)",
                   pm("r2_ridge"), met["r2"], path, cmd))
  rows.append(_row("Isometry: gap (ridge R^2 - Procrustes R^2) <= 0.05", pm("isometry_gap"),
                   met["isometry_gap"], path, cmd))
  rows.append(_row("Zero-shot probe transfer >= 95% of native and >= 0.85",
                   f"{pm('transfer_acc')} of native {s['native_acc']:.2f} "
                   f"({s['transfer_fraction']:.0%})", met["transfer"], path, cmd))
  margin = min(m["transfer_acc"] for m in s["control_margins"].values())
  rows.append(_row("Every null control at least 0.1 below in transfer",
                   f"smallest margin {margin:.2f}", met["controls_worse"], path, cmd))
  scant = [p for p in report["pairs"] if p.get("overlap") is not None and p["overlap"] < 0.1]
  if scant:
    r2 = float(np.mean([p["r2_ridge"] for p in scant]))
    rows.append(_row("Alignment survives scant overlap: R^2 >= 0.8 under 10% pixel overlap",
                     f"{r2:.2f} over {len(scant)} ordered pairs", r2 >= 0.8, path, cmd))
  return rows


def migration_row(reports: list[tuple[str, dict]]) -> str:
  """The migration goal over the student seeds' reports."""
  ratios = [r["ratio"] for _, r in reports]
  first = reports[0][1]
  target = first["target_acc"]
  reached = [x for x in ratios if x is not None]
  measured = (f"{_pm(reached)}x over {len(reached)} of {len(ratios)} seeds"
              if reached else f"target {target} not reached")
  met = bool(reached) and len(reached) == len(ratios) and float(np.mean(reached)) <= 0.25
  folder = os.path.dirname(reports[0][0])
  return _row(f"Migration from a {first['teacher_kind']} teacher: FLOPs to class accuracy "
              f"{target} <= 0.25x scratch", measured, met, folder,
              first.get("command", "python -m experiments.migrate"))


def table(docs: str) -> str:
  """The markdown table of every goal with a committed report under ``docs``."""
  rows = ["| goal | measured | verdict | report | command |", "|---|---|---|---|---|"]
  study = os.path.join(docs, "align", "report.json")
  if os.path.exists(study):
    rows += world_rows(_load(study), os.path.relpath(study, ROOT))
  for folder in sorted(glob.glob(os.path.join(docs, "migrate*"))):
    seeds = sorted(glob.glob(os.path.join(folder, "seed*", "report.json")))
    if seeds:
      rows.append(migration_row([(os.path.relpath(p, ROOT), _load(p)) for p in seeds]))
  return "\n".join(rows)


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
