"""Which trial is exported: `Experiment.select`'s rule over the top trials' measured serving cost.

"accuracy" exports the best objective. "fastest_within=D" exports the candidate with the lowest
batch-1 p50 latency whose objective is within D of the best (below it for "max" objectives,
above it for "min"); equal latencies go to the better objective. Without every candidate's
latency the comparison would be unfair, so a failed measurement falls back to "accuracy".
A pure function of its inputs: `search.finish` measures, this decides.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Objectives are averages over a few hundred images stored as floats: 0.75 - 0.74 is
# 0.010000000000000009, which must still count as within 0.01.
SLACK = 1e-9
TOP_K = 5  # the leaderboard's top trials a rule other than "accuracy" chooses among


@dataclass(frozen=True)
class Candidate:
    """One measured trial: its objective and batch-1 p50 latency (None when the measurement failed)."""

    trial_id: str
    trial_number: int
    objective: float
    batch1_p50_ms: float | None


@dataclass(frozen=True)
class Selection:
    """The chosen trial, the best one, and why (`reason`: one sentence for the report and the console)."""

    rule: str
    tolerance: float | None
    best: Candidate
    chosen: Candidate
    fallback: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(candidates: Sequence[Candidate], rule: str, tolerance: float | None, objective: str,
           mode: str) -> Selection:
    """Apply `rule` ("accuracy", or "fastest_within=D" with `tolerance` D) to `candidates` (at
    least one; the leaderboard's order, so equal objectives go to the earlier one)."""
    if not candidates:
        raise ValueError("no candidate to choose from")
    sign = 1.0 if mode == "max" else -1.0
    best = max(enumerate(candidates), key=lambda item: (sign * item[1].objective, -item[0]))[1]
    if tolerance is None:
        return Selection(rule, None, best, best, None, f"select={rule!r}: the best {objective} is exported.")
    failed = [c for c in candidates if c.batch1_p50_ms is None]
    if failed:
        why = f"the latency of trial {failed[0].trial_id} (#{failed[0].trial_number}) could not be measured"
        return Selection(rule, tolerance, best, best, why,
                         f"select={rule!r} fell back to the best {objective}: {why}.")
    within = [(i, c) for i, c in enumerate(candidates) if sign * (best.objective - c.objective) <= tolerance + SLACK]
    chosen = min(within, key=lambda item: (item[1].batch1_p50_ms, -sign * item[1].objective, item[0]))[1]
    side = "below" if mode == "max" else "above"
    among = (f"the fastest of the {len(within)} of {len(candidates)} measured trials whose {objective} is at most "
             f"{tolerance:g} {side} the best")
    if chosen == best:
        reason = (f"select={rule!r}: the best trial {best.trial_id} (#{best.trial_number}) is exported, also {among} "
                  f"({_figures(best, objective)}).")
    else:
        reason = (f"select={rule!r}: trial {chosen.trial_id} (#{chosen.trial_number}) is exported, {among} "
                  f"({_figures(chosen, objective)}; best trial {best.trial_id} (#{best.trial_number}): "
                  f"{_figures(best, objective)}).")
    return Selection(rule, tolerance, best, chosen, None, reason)


def _figures(candidate: Candidate, objective: str) -> str:
    return f"{objective} {candidate.objective:.4g}, batch-1 p50 {candidate.batch1_p50_ms:.3g} ms"


@dataclass(frozen=True)
class Reach:
    """Which ended trials `Experiment.select` could still export: those with fewer than `top_k`
    strictly better, and (`within`) not more than that far from the best. An ended trial's
    objective is final and a running trial's only improves: one out of reach stays out."""

    top_k: int
    within: float | None = None


def reach(tolerance: float | None, ensemble: bool = False) -> Reach:
    """The reach of `Experiment.select`: "accuracy" (`tolerance` None) exports the best trial;
    "fastest_within=D" one of the top `TOP_K` within D of the best. With `ensemble`
    (`Experiment.ensemble="auto"`), any of the top `TOP_K` may be a member of the exported model."""
    if ensemble:
        return Reach(TOP_K)
    return Reach(1) if tolerance is None else Reach(TOP_K, tolerance)


def exportable(values: dict[str, float], mode: str, rule: Reach) -> set[str]:
    """The ended trials (id -> objective) that `rule` could still export."""
    if not values:
        return set()
    sign = 1.0 if mode == "max" else -1.0
    ranked = sorted(sign * v for v in values.values())
    return {trial_id for trial_id, value in values.items()
            if len(ranked) - bisect.bisect_right(ranked, sign * value) < rule.top_k
            and (rule.within is None or ranked[-1] - sign * value <= rule.within + SLACK)}
