"""The search service: experiment spec, search space, Ray orchestration, report and export.

`from search import run_search` runs a search from Python (`search.api`), as `python -m
search.run` does from a shell; `from search import load_best` loads a finished search's best
model in one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.api import SearchResult, run_search  # light: Ray and torch load when a search runs

if TYPE_CHECKING:
    from search.best.loader import Predictor

__all__ = ["SearchResult", "load_best", "run_search"]


def load_best(out: str, device: Any = None) -> Predictor:
    """Load the best model a search exported into `out/best/`; see `search.best.loader.load_best`."""
    from search.best.loader import load_best as _load_best  # torch loads only when asked for

    return _load_best(out, device)
