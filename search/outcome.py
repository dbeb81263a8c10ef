"""After the search: the report table, the best trial's export, its test-set accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from search import export, report
from search.space import hparams, recipe_points
from search.spec import Experiment
from trainables.data import ArrayData
from trainables.loop import default_device, evaluate


def _trial_id_and_number(result: tune.Result) -> tuple[str, int]:
    # Tune names a trial's folder "<trainable>_<trial id>_<creation index>_<params>_<time>",
    # here "run_trial_<id>_<n>_...": the only place that keeps the creation order.
    parts = Path(result.path).name.split("_")
    return parts[2], int(parts[3])


def _trial_id(result: tune.Result) -> str:
    return _trial_id_and_number(result)[0]


def rows(grid: tune.ResultGrid, experiment: Experiment) -> pd.DataFrame:
    """The report table of a finished search, best trial first."""
    found = []
    points = recipe_points(experiment)
    for result in grid:
        trial_id, number = _trial_id_and_number(result)
        found.append(report.trial_row(trial_id, number, result.config or {}, result.metrics_dataframe, result.error,
                                      experiment.objective, experiment.mode, experiment.budget.max_epochs, points))
    return report.table(found, experiment.objective, experiment.mode)


def finish(grid: tune.ResultGrid, experiment: Experiment, arrays: ArrayData, out: Path) -> dict[str, Any]:
    """Write the report, export the best model, evaluate it once on test/; returns a summary."""
    frame = rows(grid, experiment)
    report.save(frame, out)
    print("\n" + report.render(frame), flush=True)
    summary: dict[str, Any] = {"trials": len(frame), "status": frame["status"].value_counts().to_dict()}
    usable = frame[(frame["status"] != "error") & frame["checkpoint_path"].notna()]
    if usable.empty:
        print("No trial produced a model: see the error column of report.csv.", flush=True)
        return summary
    best = usable.iloc[0]
    config = next(r.config for r in grid if _trial_id(r) == best["trial_id"])
    hp = {**hparams(config), "weights": experiment.weights}
    metrics = {k: float(best[k]) for k in ("val_acc", "val_loss", "train_acc", "train_loss")}
    metrics["epochs_run"] = int(best["epochs"])
    state = export.read_checkpoint(Path(best["checkpoint_path"]))
    model = export.build_model(arrays.classes, hp, state["model"])
    # test/ is used once, here, for the chosen model only: it never steers the search.
    test_loss, test_acc = evaluate(model.to(default_device()), arrays.test, default_device())
    metrics.update(test_acc=test_acc, test_loss=test_loss)
    folder = export.export_best(out, state, arrays.classes, hp, metrics, best["trial_id"], experiment.image_size_px)
    summary.update(best_trial=best["trial_id"], best=metrics)
    print(f"\nBest trial {best['trial_id']} ({hp['arch']}): val_acc {metrics['val_acc']:.3f}, "
          f"test_acc {test_acc:.3f} on {len(arrays.test.labels)} test images.\n"
          f"Exported to {folder}. Use it: from search import load_best; "
          f"load_best({str(out)!r}).predict(paths)", flush=True)
    return summary
