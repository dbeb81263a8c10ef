"""Lays a data set out as train/ and test/ class folders (`python -m search.data`).

    flat  SRC OUT --counts 1000,500,500   Kaggle's cats-vs-dogs style: one folder whose
                                          file names carry the class (cat.1.jpg, dog.1.jpg);
                                          counts per class for train, test[, val]
    split SRC OUT --test-fraction 0.2     a class-folder tree (SRC/<class>/*.jpg) split
                                          into train/ and test/ by a ratio, per class

Seeded; copies files (or hard-links them with --link); never moves or deletes a source
file; refuses to write into a non-empty OUT.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from trainables.folders import image_files, is_image_file

EXIT_USAGE = 2
DEFAULT_CLASS_PATTERN = r"^([^._-]+)[._-]"  # "cat.1.jpg" -> "cat", "dog_001.png" -> "dog"


class LayoutError(ValueError):
    """A bad source, target or option; the message names it."""


def _classes_from_names(source: Path, pattern: str) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    regex = re.compile(pattern)
    for path in sorted(p for p in source.iterdir() if is_image_file(p)):
        match = regex.search(path.name)
        if match:
            groups[match.group(1).lower()].append(path)
    if len(groups) < 2:
        raise LayoutError(f"{source}: found {len(groups)} classes in the file names with pattern {pattern!r}; "
                           "need at least 2 (e.g. cat.1.jpg, dog.1.jpg)")
    return dict(groups)


def _classes_from_folders(source: Path) -> dict[str, list[Path]]:
    groups = {d.name: image_files(d) for d in sorted(source.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if len(groups) < 2:
        raise LayoutError(f"{source}: found {len(groups)} class subfolders; need at least 2")
    return groups


def _shuffled(files: list[Path], seed: int, name: str) -> list[Path]:
    # Seeded per class by its name, so adding a class never reshuffles the others.
    order = np.random.default_rng([seed, *name.encode()]).permutation(len(files))
    return [files[i] for i in order]


def plan_flat(groups: dict[str, list[Path]], counts: dict[str, int], seed: int) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> files: the first `counts[split]` of each class's shuffled files."""
    need = sum(counts.values())
    plan: dict[str, dict[str, list[Path]]] = {split: {} for split in counts}
    for name, files in groups.items():
        if len(files) < need:
            raise LayoutError(f"class {name!r} has {len(files)} images; the counts ask for {need}")
        shuffled, start = _shuffled(files, seed, name), 0
        for split, count in counts.items():
            plan[split][name] = shuffled[start:start + count]
            start += count
    return plan


def plan_split(groups: dict[str, list[Path]], test_fraction: float, seed: int) -> dict[str, dict[str, list[Path]]]:
    """train/test per class by ratio; each split keeps at least one image of every class."""
    plan: dict[str, dict[str, list[Path]]] = {"train": {}, "test": {}}
    for name, files in groups.items():
        if len(files) < 2:
            raise LayoutError(f"class {name!r} has {len(files)} images; need at least 2 to split")
        shuffled = _shuffled(files, seed, name)
        n_test = min(max(1, round(test_fraction * len(files))), len(files) - 1)
        plan["test"][name], plan["train"][name] = shuffled[:n_test], shuffled[n_test:]
    return plan


def write(plan: dict[str, dict[str, list[Path]]], target: Path, link: bool) -> int:
    """Copy (or hard-link) the planned files into target/<split>/<class>/; returns the count."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LayoutError(f"{target}: exists and is not an empty folder; give a new or empty target")
    written = 0
    for split, classes in plan.items():
        for name, files in classes.items():
            folder = target / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in files:
                (os.link if link else shutil.copy2)(path, folder / path.name)
                written += 1
    return written


def _counts(text: str) -> dict[str, int]:
    values = [int(v) for v in text.split(",")]
    if not 2 <= len(values) <= 3 or min(values) < 1:
        raise argparse.ArgumentTypeError("give train,test[,val] counts per class, each >= 1, e.g. 1000,500,500")
    return dict(zip(("train", "test", "val"), values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    flat = sub.add_parser("flat", help="one folder, class in each file name")
    flat.add_argument("--counts", type=_counts, required=True, help="per class: train,test[,val], e.g. 1000,500,500")
    flat.add_argument("--class-pattern", default=DEFAULT_CLASS_PATTERN, help="regex whose group 1 is the class")
    split = sub.add_parser("split", help="class folders, split by a ratio")
    split.add_argument("--test-fraction", type=float, default=0.2, help="share of each class for test/ (default 0.2)")
    for p in (flat, split):
        p.add_argument("source", type=Path)
        p.add_argument("target", type=Path)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--link", action="store_true", help="hard-link instead of copying (same file system)")
    args = parser.parse_args(argv)
    try:
        if not args.source.is_dir():
            raise LayoutError(f"{args.source}: not a folder")
        if args.mode == "flat":
            plan = plan_flat(_classes_from_names(args.source, args.class_pattern), args.counts, args.seed)
        else:
            if not 0 < args.test_fraction < 1:
                raise LayoutError(f"--test-fraction {args.test_fraction}: must lie strictly between 0 and 1")
            plan = plan_split(_classes_from_folders(args.source), args.test_fraction, args.seed)
        written = write(plan, args.target, args.link)
    except (LayoutError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    for split_name, classes in plan.items():
        print(f"{split_name:<5} " + ", ".join(f"{name} {len(files)}" for name, files in classes.items()))
    print(f"{'linked' if args.link else 'copied'} {written} files into {args.target}")
    return 0

