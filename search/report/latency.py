"""The top trials' serving cost in the report: leaderboard columns, accuracy against latency, and
why the exported trial was selected (`Experiment.select`; `search.best.select`).

All of it is read from the run's `best` (stored in report_inputs.json: `serving_top_k`, `selection`),
so `python -m search.report OUT` draws it again without measuring anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from search.report import plots
from search.report.render import Block, Heading, Picture
from search.report.stored import StoredRun

# report.csv's `serving.*` columns (`search.report.table.with_serving`) as the leaderboard shows
# them: its name there, the divisor to its unit, the format.
SHOWN = {"serving.batch1_p50_ms": ("p50_ms", 1, "{:.3g}"), "serving.batch1_p95_ms": ("p95_ms", 1, "{:.3g}"),
         "serving.batch32_images_per_s": ("img_per_s_b32", 1, "{:.0f}"),
         "serving.parameters": ("params_M", 1e6, "{:.3g}"), "serving.onnx_bytes": ("onnx_MB", 1e6, "{:.3g}")}


def leaderboard_columns(shown: pd.DataFrame) -> dict[str, pd.Series]:
    """The leaderboard's serving columns for these rows, as text (none for a run without the
    figures; empty for a trial not measured); a failed measurement reads "failed" in p50_ms."""
    columns = {}
    for column, (label, unit, style) in SHOWN.items():
        if column in shown and shown[column].notna().any():
            columns[label] = (shown[column].astype(float) / unit).map(lambda v, s=style: "" if pd.isna(v)
                                                                      else s.format(v))
    if "p50_ms" in columns and "serving.error" in shown:
        columns["p50_ms"] = columns["p50_ms"].where(shown["serving.error"].isna(), "failed")
    return columns


def selection_text(best: dict[str, Any]) -> str | None:
    """The sentence saying why the exported trial was chosen, for a rule other than plain "accuracy"
    (whose reason, the best objective, the verdict already gives); None otherwise."""
    selection = best.get("selection")
    if not selection or (selection["tolerance"] is None and not selection["fallback"]):
        return None
    return selection["reason"]


def chosen_over_best(best: dict[str, Any]) -> bool:
    """Whether the selection rule exported another trial than the one with the best objective."""
    selection = best.get("selection") or {}
    return bool(selection) and selection["chosen"]["trial_id"] != selection["best"]["trial_id"]


def latency_blocks(run: StoredRun, plots_dir: Path) -> list[Block]:
    """The accuracy-against-latency plot of the measured trials; none for a run without the figures."""
    best = run.best or {}
    measured = pd.DataFrame(best.get("serving_top_k") or [])
    if measured.empty or "batch1_p50_ms" not in measured:
        return []
    timed = measured[measured["batch1_p50_ms"].notna()]
    failed = measured.loc[measured["batch1_p50_ms"].isna(), "trial_id"].tolist()
    selection = best.get("selection") or {}
    objective, tolerance = run.facts.objective, selection.get("tolerance")
    limit = None
    if tolerance is not None and not selection.get("fallback"):
        limit = selection["best"]["objective"] + (-tolerance if run.facts.mode == "max" else tolerance)
    others = pd.DataFrame(best.get("serving_others") or [])
    if not others.empty and "batch1_p50_ms" in others:
        others = others[others["batch1_p50_ms"].notna()]
    ensemble = (best.get("ensemble") or {}) if (best.get("ensemble") or {}).get("exported") else None
    star = None if ensemble else best.get("trial_id")  # an exported ensemble is no trial's point
    path = plots.accuracy_vs_latency(timed, objective, run.facts.mode, star, limit,
                                     plots_dir / "accuracy_vs_latency.png", others=others)
    seconds = selection.get("measure_s")
    unmeasured = best.get("serving_unmeasured") or 0
    caption = (f"The top {len(measured)} trials of the leaderboard"
               + (f" and {len(others)} other finished trial{'s' * (len(others) != 1)} (grey)" if len(others) else "")
               + f": best {objective} against onnxruntime's "
               "CPU latency for one image (p50) on the machine that ran the export, each graph built with "
               "random weights (latency does not depend on them) and measured once"
               + (f", the top trials' in {seconds:.1f} s in all" if seconds is not None else "")
               + ("; the exported model is the ensemble of trials "
                  + ", ".join(m["trial_id"] for m in ensemble["members"]) + ", not a point of its own."
                  if ensemble else "; the star is the exported model.")
               + (f" Not shown: {unmeasured} other finished trial{'s' * (unmeasured != 1)} with a graph of its own "
                  "(measuring every graph would have taken longer than the export allows for this plot)."
                  if unmeasured else "")
               + (f" Not measured: {', '.join(failed)} (see `serving.error` in the leaderboard's csv)." if failed
                  else ""))
    return [Heading(f"{objective} against serving latency"), Picture(path, caption)]
