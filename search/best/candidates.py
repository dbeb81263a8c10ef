"""The serving cost of the leaderboard's top trials, measured before one of them is exported.

Latency and size depend on the graph alone (the architecture's shape and the image size), not
on the trained weights, so each distinct graph is built once with random weights (no checkpoint
is loaded), exported to ONNX in a temporary folder and timed with onnxruntime on the CPU; trials
sharing a graph share its figures. `Experiment.select` chooses among them (`search.best.select`).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from search.best import serving
from search.best.onnx import export_onnx
from trainables.hparams import HParams
from trainables.models import create_model, graph_key

# The exported model gets `serving.BUDGET_S` per measurement; a candidate only needs its p50
# to rank against the others, which 1 s of batch-1 runs gives for models up to ~100 ms (and
# at least one run beyond), so 5 distinct graphs add ~10 s of timing to an export, not 40.
CANDIDATE_BUDGET_S = 1.0
FIGURES = ("parameters", "onnx_bytes", "batch1_p50_ms", "batch1_p95_ms", "batch32_images_per_s")


@dataclass(frozen=True)
class Trial:
    """A leaderboard trial to measure: its id, creation number, objective and hyperparameters."""

    trial_id: str
    trial_number: int
    objective: float
    hp: HParams


# The other finished trials are measured for the accuracy-against-latency plot only, while
# this budget lasts: their graphs mostly repeat the top trials' (no cost), and a search of
# many distinct backbones must not add minutes to its export for a plot.
OTHERS_BUDGET_S = 30.0
Graphs = dict[tuple[object, ...], dict[str, Any]]


def measure_top(trials: list[Trial], num_classes: int, image_size_px: int,
                by_graph: Graphs | None = None) -> tuple[list[dict[str, Any]], float]:
    """Each trial's figures (`FIGURES`, or `error`), in the given order, and the seconds spent.
    `by_graph`: figures measured before, by `graph_key` (filled with the new ones)."""
    started = time.perf_counter()
    by_graph = {} if by_graph is None else by_graph
    rows = []
    for trial in trials:
        key = graph_key(trial.hp)
        if key not in by_graph:
            by_graph[key] = measure_graph(trial.hp, num_classes, image_size_px)
        rows.append(_row(trial, by_graph[key]))
    return rows, round(time.perf_counter() - started, 2)


def measure_others(trials: list[Trial], num_classes: int, image_size_px: int, by_graph: Graphs,
                   budget_s: float = OTHERS_BUDGET_S) -> list[dict[str, Any]]:
    """The figures of those `trials` whose graph was measured already, or could be within
    `budget_s`; the others are left out (the report says how many)."""
    started = time.perf_counter()
    rows = []
    for trial in trials:
        key = graph_key(trial.hp)
        if key not in by_graph and time.perf_counter() - started < budget_s:
            by_graph[key] = measure_graph(trial.hp, num_classes, image_size_px)
        if key in by_graph:
            rows.append(_row(trial, by_graph[key]))
    return rows


def earlier_graphs(inputs: dict[str, Any] | None, hps: dict[str, HParams], num_classes: int,
                   image_size_px: int) -> Graphs:
    """The figures an earlier finish of this search measured (its report_inputs.json, `inputs`),
    by graph, where they still hold: the same classes and image size, measured on a machine like
    this one (`serving.machine`), without error. A resumed or extended search measures only the
    graphs it has not measured yet. `hps`: the hyperparameters of this search's trials, by id."""
    try:
        facts, best = inputs["facts"], inputs["best"]
        here = serving.machine()
        measured_on = {k: best["serving"]["onnxruntime_cpu"].get(k) for k in here}
        if measured_on != here or (len(facts["classes"]), facts["image_size_px"]) != (num_classes, image_size_px):
            return {}
        rows = [*best.get("serving_top_k", []), *best.get("serving_others", [])]
    except (KeyError, TypeError, AttributeError):  # no earlier finish, one without a model, an older run
        return {}
    graphs: Graphs = {}
    for row in rows:
        if isinstance(row, dict) and row.get("trial_id") in hps and all(name in row for name in FIGURES):
            graphs.setdefault(graph_key(hps[row["trial_id"]]), {name: row[name] for name in FIGURES})
    return graphs


def _row(trial: Trial, figures: dict[str, Any]) -> dict[str, Any]:
    return {"trial_id": trial.trial_id, "trial_number": trial.trial_number, "objective": trial.objective,
            "arch": trial.hp.arch, **figures}


def measure_graph(hp: HParams, num_classes: int, image_size_px: int) -> dict[str, Any]:
    """Parameters, ONNX size and onnxruntime CPU figures of `hp`'s graph with random weights,
    or {"error": why} (a measurement: a failure is recorded, never raised)."""
    try:
        model = create_model(num_classes, hp, load_weights=False)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    return measure_model(model, image_size_px)


def measure_model(model: nn.Module, image_size_px: int) -> dict[str, Any]:
    """`FIGURES` of `model` (its graph, exported to ONNX in a temporary folder), or {"error": why}."""
    try:
        model = model.eval()
        figures: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
        with tempfile.TemporaryDirectory(prefix="candidate-") as folder:
            onnx = export_onnx(model, Path(folder), image_size_px, quick=True)
            if "error" in onnx:
                return {**figures, "error": f"no ONNX export: {onnx['error']}"}
            figures["onnx_bytes"] = (Path(folder) / onnx["file"]).stat().st_size
            cpu = serving.onnxruntime_cpu(Path(folder) / onnx["file"], onnx["input"], image_size_px,
                                          budget_s=CANDIDATE_BUDGET_S)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    return {**figures, **{name: cpu[name] for name in FIGURES if name in cpu}}
