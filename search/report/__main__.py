"""`python -m search.report OUT`: rebuild the report of the search stored in OUT, without training again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.report.page import build
from search.report.stored import MissingRun, load

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Rebuild the report (md, html, plots, csv/parquet) of the search stored in OUT; 2 when there is none."""
    parser = argparse.ArgumentParser(prog="python -m search.report",
                                     description="Rebuild the report (md, html, plots, csv/parquet) of a finished "
                                                 "search from what it stored, without training again.")
    parser.add_argument("out", help="the search's --out folder")
    args = parser.parse_args(argv)
    try:
        run = load(Path(args.out))
    except MissingRun as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    page = build(Path(args.out), run)
    print(f"Report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
