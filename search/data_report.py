"""`data_report.csv` in `--out`: every image's fate (used, skipped, leakage) and why."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from trainables.data import ArrayData

COLUMNS = ["path", "class", "split", "status", "reason"]


def data_report(arrays: ArrayData, leaks: list[tuple[str, str, int]]) -> pd.DataFrame:
    """One row per image used or skipped, plus one per pair of splits sharing a picture."""
    rows = []
    for split in ("train", "val", "test"):
        part = getattr(arrays, split)
        rows += [(path, arrays.classes[label], split, "used", "") for path, label in zip(part.paths, part.labels)]
    rows += [(path, Path(path).parent.name, Path(path).parent.parent.name, "skipped", reason)
             for path, reason in arrays.skipped]
    split_of = {p: s for s in ("train", "val", "test") for p in getattr(arrays, s).paths}
    rows += [(a, Path(a).parent.name, split_of[a], "leakage",
              f"same picture as {b} in {split_of[b]} (hash distance {d})") for a, b, d in leaks]
    return pd.DataFrame(rows, columns=COLUMNS)


def leakage_warning(leaks: list[tuple[str, str, int]]) -> str:
    """A console warning naming a few of the shared pictures."""
    shown = "; ".join(f"{a} ~ {b}" for a, b, _ in leaks[:3])
    more = f" and {len(leaks) - 3} more" if len(leaks) > 3 else ""
    return (f"warning: {len(leaks)} pictures appear in two splits (leakage inflates validation and test "
            f"accuracy): {shown}{more}; see data_report.csv")
