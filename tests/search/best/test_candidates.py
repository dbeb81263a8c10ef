"""The serving cost of the search's graphs: measured once per graph, and once per search where a
resumed or extended search's finish finds the figures an earlier finish measured on this machine."""

from __future__ import annotations

import dataclasses
from typing import Any

from search.best import serving
from search.best.candidates import FIGURES, earlier_graphs
from trainables.hparams import HParams
from trainables.models import graph_key

CNN = HParams(arch="small_cnn", optimizer="adam", lr=1e-3, batch_size=32, augment=0.0, dropout=0.0,
              cnn_width=32, cnn_depth=4, weights="none")
WIDER = dataclasses.replace(CNN, cnn_width=64)
SAME_GRAPH = dataclasses.replace(CNN, lr=0.1, dropout=0.5)  # training settings: the same graph


def figures(p50: float) -> dict[str, Any]:
    return {"parameters": 1000, "onnx_bytes": 4000, "batch1_p50_ms": p50, "batch1_p95_ms": p50 * 2,
            "batch32_images_per_s": 500.0}


def inputs(**changes: Any) -> dict[str, Any]:
    """An earlier finish's report_inputs.json, as stored."""
    stored = {"facts": {"classes": ["a", "b", "c"], "image_size_px": 64},
              "best": {"serving": {"parameters": 1000, "onnxruntime_cpu": {"batch1_p50_ms": 1.0, **serving.machine()}},
                       "serving_top_k": [{"trial_id": "t1", "trial_number": 1, "objective": 0.9, "arch": "small_cnn",
                                          **figures(1.5)}],
                       "serving_others": [{"trial_id": "t2", "trial_number": 2, "objective": 0.5, "arch": "small_cnn",
                                           **figures(3.0)},
                                          {"trial_id": "t3", "trial_number": 3, "objective": 0.4, "arch": "small_cnn",
                                           "error": "no ONNX export: ..."}]}}
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = stored
        for name in parents:
            node = node[name]
        node[last] = value
    return stored


HPS = {"t1": CNN, "t2": WIDER, "t3": dataclasses.replace(CNN, cnn_depth=2), "t4": SAME_GRAPH}


def test_an_earlier_finish_on_this_machine_gives_its_figures_by_graph() -> None:
    graphs = earlier_graphs(inputs(), HPS, 3, 64)
    # t3's measurement failed: measured again; t4 (new) shares t1's graph, so it needs no measuring
    assert graphs == {graph_key(CNN): figures(1.5), graph_key(WIDER): figures(3.0)}
    assert graph_key(SAME_GRAPH) in graphs and set(graphs[graph_key(CNN)]) == set(FIGURES)


def test_figures_that_no_longer_hold_are_measured_again() -> None:
    other_cpus = {**serving.machine(), "cpus": serving.machine()["cpus"] + 8}
    for stale in (inputs(**{"best.serving.onnxruntime_cpu": {"batch1_p50_ms": 1.0, **other_cpus}}),
                  inputs(**{"best.serving.onnxruntime_cpu": {"error": "no model.onnx to measure"}}),
                  inputs(**{"facts.image_size_px": 96}), inputs(**{"facts.classes": ["a", "b"]}),
                  inputs(best=None), None, {"facts": {}}, {"best": "garbage"}):
        assert earlier_graphs(stale, HPS, 3, 64) == {}, stale
    # a trial the search no longer knows (its id not among this search's trials) lends nothing
    assert earlier_graphs(inputs(), {"t2": WIDER}, 3, 64) == {graph_key(WIDER): figures(3.0)}
