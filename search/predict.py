"""`python -m search.predict OUT PATH...`: label images with a search's exported best model.

Prints one row per image (folders are searched recursively for image files): the file, the
prediction and the probability of each class, or with `--top-k K` the K likeliest classes.
An image that cannot be read gets its reason in `error` and the others are still labelled; a
missing or modified export is one `error:` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m search.predict",
                                     description="Label images with a search's exported best model.")
    parser.add_argument("out", type=Path, metavar="OUT", help="the search's --out folder (holds best/)")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    parser.add_argument("--top-k", type=int, metavar="K", help="show the K likeliest classes instead of all")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    return parser.parse_args(argv)


def predict(args: argparse.Namespace) -> pd.DataFrame:
    """The table for `args`; raises ValueError / FileNotFoundError with a one-line message."""
    from search.best.loader import load_best, top_k  # imports torch: after parsing, so --help is instant

    device = _device(args.device) if args.device else None
    predictor = load_best(args.out, device)
    table = predictor.predict(args.paths)
    if table.empty:
        raise ValueError(f"no image files in {', '.join(map(str, args.paths))}")
    return top_k(table, predictor.classes, args.top_k) if args.top_k is not None else table


def _device(name: str) -> torch.device:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} asked for, but torch sees no CUDA GPU; use cpu")
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table = predict(args)
        if args.csv:
            table.to_csv(args.csv, index=False)
    except (ValueError, OSError) as err:  # ExportError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.to_string(index=False, na_rep="", float_format=lambda p: f"{p:.3f}"))
    if args.csv:
        print(f"\nWrote {len(table)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
