"""PNG figures of a study's report (matplotlib, no display needed).

Each function takes what ``study.run`` returns and writes one file; ``write_all`` writes
them all into a directory and returns their paths.
"""

import os
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from sjepa_jax.summaries import CONTROLS as _CONTROLS
from sjepa_jax.summaries import headline_transfer


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _label(pair: dict) -> str:
  return f"{pair['target']}->{pair['source']} s{pair.get('seed', 0)}"


def alignment_scatter(report: dict, extras: dict, path: str) -> str:
  """Held-out latents of the source agent against the target's latents mapped into its
  space, on the source's top principal components: points on the diagonal are aligned."""
  pairs = report["pairs"]
  cols = extras["scatter"][(pairs[0]["source"], pairs[0]["target"])][0].shape[1]
  fig, axes = plt.subplots(len(pairs), cols, figsize=(2.6 * cols, 2.4 * len(pairs)),
                           squeeze=False)
  for r, pair in enumerate(pairs):
    true, mapped = extras["scatter"][(pair["source"], pair["target"])]
    for c in range(cols):
      ax = axes[r, c]
      ax.scatter(true[:, c], mapped[:, c], s=3, alpha=0.5)
      lim = np.abs(true[:, c]).max()
      ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
      ax.set_title(f"{_label(pair)} PC{c + 1}", fontsize=8)
      if c == 0:
        ax.set_ylabel("mapped", fontsize=8)
      if r == len(pairs) - 1:
        ax.set_xlabel("true", fontsize=8)
  return _save(fig, path)


def singular_values(report: dict, path: str) -> str:
  """Singular values of each pair's ridge map, divided by their mean (an isometry is flat)."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for pair in report["pairs"]:
    s = np.asarray(pair["singular_values"])
    ax.semilogy(s / s.mean(), label=f"{_label(pair)} (cond {pair['condition_number']:.0e})")
  ax.axhline(1.0, color="k", ls="--", lw=0.8)
  ax.set_xlabel("index")
  ax.set_ylabel("singular value / mean")
  ax.legend(fontsize=6)
  return _save(fig, path)


def r2_against_pairs(report: dict, path: str) -> str:
  """Held-out R^2 of the ridge (solid) and Procrustes (dashed) maps against fitting pairs."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for i, (name, curve) in enumerate(report["r2_vs_pairs"].items()):
    color = f"C{i}"
    ax.plot(curve["n"], curve["r2_ridge"], "-o", color=color, ms=3,
            label=name.replace("_to_", "->"))
    ax.plot(curve["n"], curve["r2_procrustes"], "--", color=color)
  ax.set_xscale("log")
  ax.set_xlabel("fitting pairs N")
  ax.set_ylabel("held-out R^2 (solid ridge, dashed Procrustes)")
  ax.legend(fontsize=6)
  return _save(fig, path)


def _cell(x, digits: int) -> str:
  return "-" if x is None else f"{x:.{digits}f}"


def transfer_table(report: dict, path: str) -> str:
  """The transfer table: per pair, native and transferred class accuracy (a recording
  without classes: its first label's score) and map R^2, and each control's transferred
  score and R^2."""
  native, transfer, what = headline_transfer(report)
  head = ["pair", "overlap", "R2 ridge", "R2 Procr.", "native", "transfer"]
  head += [c.replace("_", " ") for c in _CONTROLS]
  rows = []
  for p in report["pairs"]:
    row = [_label(p), _cell(p["overlap"], 2), f"{p['r2_ridge']:.2f}",
           f"{p['r2_procrustes']:.2f}", _cell(p.get(native), 3), _cell(p.get(transfer), 3)]
    for c in _CONTROLS:
      ctl = p["controls"].get(c)
      row.append("-" if not ctl else
                 f"{_cell(ctl.get(transfer), 3)} / "
                 f"{ctl.get('r2_ridge', ctl.get('r2_identity')):.2f}")
    rows.append(row)
  fig, ax = plt.subplots(figsize=(1.25 * len(head), 0.25 * len(rows) + 0.6))
  ax.axis("off")
  table = ax.table(cellText=rows, colLabels=head, bbox=[0, 0, 1, 1])
  table.auto_set_font_size(False)
  table.set_fontsize(7)
  chance = report.get("chance_acc")
  ax.set_title(f"{what}{'' if chance is None else f' (chance {chance:.3f})'}; controls: "
               "transfer / R^2", fontsize=8)
  return _save(fig, path)


def overlap_vs_alignment(report: dict, path: str) -> str | None:
  """Alignment scores of every ordered view pair against the views' pixel overlap; None
  (no file) where the overlap is undefined (a recording's cameras)."""
  pairs = [p for p in report["pairs"] if p["overlap"] is not None]
  if not pairs:
    return None
  fig, ax = plt.subplots(figsize=(5, 3.5))
  x = [p["overlap"] for p in pairs]
  for key, marker in (("r2_ridge", "o"), ("r2_procrustes", "s"), ("cka_unbiased", "^")):
    ax.scatter(x, [p[key] for p in pairs], marker=marker, label=key)
  for p in pairs:
    ax.annotate(_label(p), (p["overlap"], p["r2_ridge"]), fontsize=6)
  ax.set_xlabel("pixel overlap (source pixels the target also sees)")
  ax.set_ylabel("held-out score")
  ax.legend(fontsize=7)
  return _save(fig, path)


def write_all(report: dict, extras: dict[str, Any], out_dir: str) -> list[str]:
  """Writes every figure into ``out_dir``; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  j = lambda name: os.path.join(out_dir, name)
  paths = [alignment_scatter(report, extras, j("alignment_scatter.png")),
           singular_values(report, j("singular_values.png")),
           r2_against_pairs(report, j("r2_vs_pairs.png")),
           transfer_table(report, j("transfer_table.png")),
           overlap_vs_alignment(report, j("overlap_vs_alignment.png"))]
  return [p for p in paths if p is not None]


def accuracy_against_flops(report: dict, path: str) -> str:
  """Probe accuracy (class) and position R^2 against each student's cumulative training
  FLOPs: the scratch student, the migrating one and every control, with the target."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for i, (role, student) in enumerate(report["students"].items()):
    curve = student["curve"]
    f = [p["flops"] for p in curve]
    style = "k-o" if role == "scratch" else ("-s" if role == "migrate" else ":.")
    kw = {} if role == "scratch" else {"color": f"C{i}"}
    axes[0].plot(f, [p["class_acc"] for p in curve], style, ms=3, label=role, **kw)
    axes[1].plot(f, [p.get("position_r2", np.nan) for p in curve], style, ms=3, label=role,
                 **kw)
  axes[0].axhline(report["target_acc"], color="k", ls="--", lw=0.8, label="target")
  axes[0].set_ylabel("focal class accuracy (held out)")
  axes[1].set_ylabel("focal position R^2 (held out)")
  for ax in axes:
    ax.set_xlabel("cumulative training FLOPs (this student's)")
    ax.legend(fontsize=6)
  fig.suptitle(f"{report['teachers']['trained']['view']} teacher -> {report['student_view']} "
               f"student, seed {report['seed']}", fontsize=9)
  return _save(fig, path)


def emergence(report: dict, path: str) -> str:
  """The shared part along training, per pair type: k_null and k_iso, the whole-latent R^2
  and gap, the gap on the k_null span; and the agents' probes. Mean +- spread over seeds."""
  kinds = [k for k in report["summary"] if k != "probes"]
  panels = (("k_null", "k_iso"), ("r2_ridge", "gap", "gap_k_null"))
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
  steps = report["steps"]
  x = [max(s, 1) for s in steps]  # step 0 drawn at 1 on the log axis
  for ax, names in zip(axes[:2], panels):
    for kind in kinds:
      for name, style in zip(names, ("-o", "--s", ":^")):
        rows = [report["summary"][kind][str(s)].get(name) for s in steps]
        if all(r is None for r in rows):
          continue
        mean = [r[0] if r else float("nan") for r in rows]
        spread = [r[1] if r else 0.0 for r in rows]
        ax.errorbar(x, mean, yerr=spread, fmt=style, ms=3, capsize=2,
                    label=f"{name} ({kind})")
  probes = report["summary"]["probes"]
  for name, style in (("class_acc", "-o"), ("position_r2", "--s")):
    rows = [probes[str(s)].get(name) for s in steps]
    axes[2].errorbar(x, [r[0] for r in rows], yerr=[r[1] for r in rows], fmt=style, ms=3,
                     capsize=2, label=name)
  titles = ("shared dimensions", "whole-latent R^2 and gaps", "agents' probes")
  for ax, title in zip(axes, titles):
    ax.set_xscale("log")
    ax.set_xlabel("training step (0 drawn at 1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
  return _save(fig, path)
