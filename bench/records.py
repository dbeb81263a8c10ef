"""A run's records: one per case, its ratio to a baseline, and the table they print as.

Every claim about speed should be a ratio between cases of one run: the machine is the same,
its load is the same.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

Record = dict[str, Any]

NAIVE = "naive"  # every baseline case has this word in its name; ratios are against them
ONE_OFF = ("cache reuse", "cache load")  # not a pass over the data: no ratio to an epoch


def record(case: str, rounds: list[tuple[int, float]], **fields: Any) -> Record:
    """The case's fastest round (noise from other processes only ever adds time), all rounds kept."""
    rates = [images / seconds for images, seconds in rounds]
    images, seconds = rounds[int(np.argmax(rates))]
    print(f"  {case} {fields.get('arch') or ''}: " + ", ".join(f"{r:.1f}" for r in rates) + " images/s",
          file=sys.stderr, flush=True)
    return {"case": case, "images_per_s": images / seconds, "images": images, "seconds": seconds,
            "images_per_s_rounds": rates, **fields}


def vs_baseline(records: list[Record], baseline: str) -> list[Record]:
    """Each record's images/s as a multiple of the `baseline` case's (1.0 for itself)."""
    base = next(r for r in records if r["case"] == baseline)
    for r in records:
        r["baseline"], r["ratio_vs_baseline"] = baseline, r["images_per_s"] / base["images_per_s"]
    return records


def add_ratios(records: list[Record]) -> list[Record]:
    """Ratio of each case to its naive baseline: the faster naive data epoch for the data cases
    (the fairer, harder one to beat), the naive train step of the same arch for training cases;
    ours train step also as a fraction of the model-only ceiling."""
    for arch in {r["arch"] for r in records}:
        group = [r for r in records if r["arch"] == arch]
        naive = max((r for r in group if NAIVE in r["case"]), key=lambda r: r["images_per_s"], default=None)
        ceiling = next((r for r in group if r["case"].startswith("model only")), None)
        for r in group:
            if naive and not r["case"].startswith(ONE_OFF):
                r["baseline"] = naive["case"]
                r["ratio_vs_naive"] = r["images_per_s"] / naive["images_per_s"]
            if ceiling and r["case"].startswith("ours"):
                r["fraction_of_model_only"] = r["images_per_s"] / ceiling["images_per_s"]
    return records


def table(records: list[Record]) -> str:
    """The records as a fixed-width table, one row a case."""
    arch_w = max([18, *(len(r["arch"] or "-") for r in records)])  # efficientnet_b0_partial: 23
    head = f"{'case':<68} {'arch':<{arch_w}} {'px':>4} {'images':>6} {'seconds':>8} {'images/s':>9} " \
           f"{'vs baseline':>11} {'of model-only':>13}"
    rows = [head, "-" * len(head)]
    for r in records:
        ratio = r.get("ratio_vs_naive", r.get("ratio_vs_baseline"))
        share = f"{r['fraction_of_model_only']:.0%}" if "fraction_of_model_only" in r else ""
        rate = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"  # startup: seconds only
        rows.append(f"{r['case']:<68} {r['arch'] or '-':<{arch_w}} {r['size_px']:>4} {r.get('images', '-'):>6} "
                    f"{r['seconds']:>8.2f} {rate:>9} {'' if ratio is None else f'{ratio:.2f}x':>11} {share:>13}")
    notes = sorted({r["note"] for r in records if r.get("note")})
    return "\n".join(rows + [f"note: {note}" for note in notes])
