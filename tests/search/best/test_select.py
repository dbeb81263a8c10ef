"""`Experiment.select`'s rule over made-up candidates, and the top trials' measurement it reads."""

from __future__ import annotations

import json

import pytest

from search.best import candidates
from search.best.candidates import Trial, measure_graph, measure_top
from search.best.select import Candidate, choose
from trainables.hparams import HParams
from trainables.models import graph_key

FAST, MID, SLOW = 1.0, 3.0, 10.0


def by_accuracy(*rows: tuple[str, float, float | None]) -> list[Candidate]:
    """Candidates in the leaderboard's order from (trial id, objective, p50 ms)."""
    return [Candidate(trial_id, number, objective, p50) for number, (trial_id, objective, p50) in
            enumerate(rows, start=1)]


def test_accuracy_exports_the_best_objective_however_slow() -> None:
    picked = choose(by_accuracy(("a", 0.80, SLOW), ("b", 0.79, FAST)), "accuracy", None, "val_acc", "max")
    assert picked.chosen.trial_id == picked.best.trial_id == "a" and picked.fallback is None


def test_fastest_within_takes_the_fastest_inside_the_tolerance_boundary_included() -> None:
    # 0.80 - 0.79 is 0.010000000000000009 in floats: still within 0.01.
    rows = by_accuracy(("a", 0.80, SLOW), ("b", 0.79, MID), ("c", 0.75, FAST))
    picked = choose(rows, "fastest_within=0.01", 0.01, "val_acc", "max")
    assert (picked.best.trial_id, picked.chosen.trial_id) == ("a", "b")
    assert "trial b (#2) is exported" in picked.reason and "best trial a (#1)" in picked.reason
    assert "0.01 below the best" in picked.reason and "2 of 3 measured trials" in picked.reason
    assert choose(rows, "fastest_within=0.05", 0.05, "val_acc", "max").chosen.trial_id == "c"
    alone = choose(rows, "fastest_within=0.009", 0.009, "val_acc", "max")
    assert alone.chosen.trial_id == "a"
    assert "the best trial a (#1) is exported, also the fastest of the 1 of 3" in alone.reason


def test_equal_latencies_go_to_the_better_objective_then_the_earlier_trial() -> None:
    rows = by_accuracy(("a", 0.80, SLOW), ("b", 0.78, MID), ("c", 0.79, MID), ("d", 0.79, MID))
    assert choose(rows, "fastest_within=0.05", 0.05, "val_acc", "max").chosen.trial_id == "c"


def test_equal_best_objectives_make_the_earlier_trial_the_best_and_zero_keeps_only_those() -> None:
    rows = by_accuracy(("a", 0.80, SLOW), ("b", 0.80, FAST), ("c", 0.799, FAST / 2))
    picked = choose(rows, "fastest_within=0", 0.0, "val_acc", "max")
    assert (picked.best.trial_id, picked.chosen.trial_id) == ("a", "b")


def test_for_a_min_objective_within_means_above_the_best() -> None:
    rows = [Candidate("slowest", 7, 0.29, 20.0), Candidate("mid", 3, 0.30, MID), Candidate("fast", 5, 0.305, FAST)]
    picked = choose(rows, "fastest_within=0.01", 0.01, "val_loss", "min")
    assert (picked.best.trial_id, picked.chosen.trial_id) == ("slowest", "mid")
    assert "0.01 above the best" in picked.reason
    assert choose(rows, "fastest_within=0.02", 0.02, "val_loss", "min").chosen.trial_id == "fast"


def test_a_failed_measurement_falls_back_to_accuracy_and_says_which() -> None:
    rows = by_accuracy(("a", 0.80, SLOW), ("b", 0.79, FAST), ("c", 0.70, None))
    picked = choose(rows, "fastest_within=0.05", 0.05, "val_acc", "max")
    assert picked.chosen.trial_id == "a" and picked.fallback and "trial c (#3)" in picked.fallback
    assert picked.reason.startswith("select='fastest_within=0.05' fell back to the best val_acc")
    assert json.loads(json.dumps(picked.to_dict()))["chosen"]["batch1_p50_ms"] == SLOW  # as meta.json keeps it


def test_no_candidate_is_our_bug() -> None:
    with pytest.raises(ValueError):
        choose([], "accuracy", None, "val_acc", "max")


SMALL = HParams(arch="small_cnn", optimizer="adam", lr=1e-3, batch_size=16, cnn_width=4, cnn_depth=1)


def test_each_graph_is_measured_once(monkeypatch) -> None:
    # Training-only choices (dropout, lr, unfrozen blocks) share a graph; its shape does not.
    frozen = HParams(arch="inception_partial", optimizer="sgd", lr=1e-2, batch_size=8, unfrozen_blocks=1,
                     head_units=64, weights="imagenet")
    assert graph_key(frozen) == graph_key(frozen.replace(unfrozen_blocks=3, dropout=0.4, momentum=0.9))
    assert graph_key(frozen) != graph_key(frozen.replace(head_units=128))
    measured: list[HParams] = []
    monkeypatch.setattr(candidates, "measure_graph",
                        lambda hp, classes, size: measured.append(hp) or {"batch1_p50_ms": float(hp.cnn_width)})
    trials = [Trial("a", 1, 0.9, SMALL), Trial("b", 2, 0.8, SMALL.replace(dropout=0.5, lr=1e-2)),
              Trial("c", 3, 0.7, SMALL.replace(cnn_width=8))]
    rows, _ = measure_top(trials, 4, 16)
    assert measured == [SMALL, SMALL.replace(cnn_width=8)]
    assert [(r["trial_id"], r["objective"], r["batch1_p50_ms"]) for r in rows] == [("a", 0.9, 4.0), ("b", 0.8, 4.0),
                                                                                  ("c", 0.7, 8.0)]


def test_a_graph_is_measured_with_random_weights_and_a_failure_is_recorded() -> None:
    figures = measure_graph(SMALL, 3, 16)
    assert figures["parameters"] > 0 and figures["onnx_bytes"] > 0
    assert 0 < figures["batch1_p50_ms"] <= figures["batch1_p95_ms"] and figures["batch32_images_per_s"] > 0
    assert "error" in measure_graph(SMALL.replace(arch="no_such_arch"), 3, 16)


def test_the_other_finished_trials_reuse_measured_graphs_and_stop_at_the_budget(monkeypatch) -> None:
    """For the plot only: a graph the top trials measured costs nothing; new graphs only while
    the budget lasts, and the trials left out are simply not listed."""
    calls = []
    monkeypatch.setattr(candidates, "measure_graph",
                        lambda hp, n, px: calls.append(hp.cnn_width) or {"batch1_p50_ms": float(hp.cnn_width)})
    base = Trial("t0", 1, 0.9, SMALL.replace(cnn_width=8))
    by_graph: dict = {}
    candidates.measure_top([base], 4, 16, by_graph)
    others = [Trial(f"t{i}", i + 1, 0.5, SMALL.replace(cnn_width=w)) for i, w in enumerate((8, 16, 32), 1)]
    rows = candidates.measure_others(others, 4, 16, by_graph, budget_s=0.0)
    assert [r["trial_id"] for r in rows] == ["t1"] and calls == [8]  # t1 shares the top trial's graph
    rows = candidates.measure_others(others, 4, 16, by_graph, budget_s=60.0)
    assert [r["trial_id"] for r in rows] == ["t1", "t2", "t3"] and calls == [8, 16, 32]
