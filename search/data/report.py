"""`data_report.csv` in `--out`: every file's fate (used, skipped, ignored, leakage) and why."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from trainables.data import ArrayData

COLUMNS = ["path", "class", "split", "status", "reason"]


def _place(path: str, root: Path) -> tuple[str, str]:
    """(class, split) of a path under the data folder; class is "" outside class folders."""
    parts = Path(path).relative_to(root).parts
    return (parts[1] if len(parts) > 2 else ""), parts[0]


def data_report(arrays: ArrayData, leaks: list[tuple[str, str, int]], root: Path) -> pd.DataFrame:
    """One row per image used or skipped, per entry not read (non-image, nested folder),
    and per pair of splits sharing a picture."""
    rows = []
    for split in ("train", "val", "test"):
        part = getattr(arrays, split)
        rows += [(path, arrays.classes[label], split, "used", "") for path, label in zip(part.paths, part.labels)]
    for status, entries in (("skipped", arrays.skipped), ("ignored", arrays.ignored)):
        rows += [(path, *_place(path, root), status, reason) for path, reason in entries]
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
