"""Whole searches through Ray Tune, Optuna, ASHA and Ray Train, on generated data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from search import load_best
from search.report.__main__ import main as report_main
from search.run import main
from tests.conftest import cli_env, fast_path_only, leftovers, write_experiment

# Six trials, two fit at once. The first two recipes learn; the four after them barely move
# (lr 1e-6), so ASHA, comparing them at its rungs with the first two, must stop some.
# The first two are 8x wider, a slower graph: every val_loss is within 10 of the best, so
# select= must export the best of the narrow trials among the top 5 measured, by its latency.
ASHA_EXPERIMENT = """
name="asha",
data="{data}",
image_size_px=32,
weights="none",
space=Space(arch="small_cnn", cnn_width=Choice(8, 64), cnn_depth=2, batch_size=16, augment=0.0, dropout=0.0,
            optimizer="adam", lr={{"adam": LogUniform(1e-6, 3e-2)}}),
recipes=[{{"lr": 1e-2, "cnn_width": 64}}, {{"lr": 2e-2, "cnn_width": 64}}, {{"lr": 1e-6, "cnn_width": 8}},
         {{"lr": 1.1e-6, "cnn_width": 8}}, {{"lr": 1.2e-6, "cnn_width": 8}}, {{"lr": 1.3e-6, "cnn_width": 8}}],
objective="val_loss",
select="fastest_within=10",
budget=Budget(trials=6, max_epochs=4, grace_period_epochs=1, reduction_factor=2),
resources=Resources(workers=1, cpus_per_worker=1),
"""


SEARCH_STARTED: dict[str, float] = {}  # when asha_run's search began: the actors it started came after

# Ray Data's coordinator: one detached, restartable actor per cluster, shared by every job
# and meant to outlive them (get_if_exists); not something a search owns.
@pytest.fixture(scope="module")
def asha_run(ray_session, coats: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    folder = tmp_path_factory.mktemp("asha")
    experiment = write_experiment(folder, ASHA_EXPERIMENT.format(data=coats))
    SEARCH_STARTED["at"] = time.time()
    out = folder / "out"
    return main([str(experiment), "--out", str(out)]), out


def test_search_with_more_trials_than_fit_completes_without_the_dashboard(asha_run, ray_session) -> None:
    code, out = asha_run
    assert code == 0
    report = pd.read_csv(out / "report.csv")
    assert len(report) == 6 and report["trial_id"].is_unique
    assert (report["status"] == "early_stopped").any(), report[["status", "epochs", "val_loss"]]
    assert (report["status"] == "completed").any()
    assert set(report["status"]) <= {"completed", "early_stopped"}
    assert report.loc[report["status"] == "early_stopped", "epochs"].max() < 4
    groups, actors = leftovers(ray_session)
    assert groups == [] and actors == []


@fast_path_only()
def test_a_trial_starts_only_the_processes_it_needs(asha_run, ray_session) -> None:
    """Each trial is a Ray Train job whose controller runs in the trial's driver (no process of
    its own, and Tune hears each report straight from it, not through a queue actor), without
    the processes Ray Train would add for nothing here: a placement-group cleaner
    (search/driver/placement_groups.py frees stopped trials' groups), a datasets manager (no Ray Dataset) and,
    on the local Ray, a preemption watcher. A driver goes on to the next trial, and keeps one
    synchronisation actor (search/seam/kept_sync.py) and one worker (search/seam/kept_workers.py) for all of
    its trials."""
    from search.seam import cluster_info

    code, out = asha_run
    assert code == 0
    started = Counter(actor["ActorClassName"] for actor in cluster_info.actors().values()
                      if actor["StartTime"] / 1000 >= SEARCH_STARTED["at"])
    assert 1 <= started["ImplicitFunc"] < 6, started  # Tune reused its trials' drivers
    # A driver's next trial runs on its kept worker (search/seam/kept_workers.py), and its sync actor.
    assert 1 <= started["RayTrainWorker"] <= started["ImplicitFunc"], started
    assert started["SynchronizationActor"] <= started["ImplicitFunc"], started
    unneeded = {"TrainController", "_QueueActor", "PlacementGroupCleaner", "DatasetManager", "PreemptionWatcher"}
    assert not unneeded & set(started), started


def test_report_table_has_a_row_per_trial_with_metrics_and_params(asha_run) -> None:
    _, out = asha_run
    csv = pd.read_csv(out / "report.csv")
    parquet = pd.read_parquet(out / "report.parquet")
    assert list(csv.columns) == list(parquet.columns)
    for column in ("trial_id", "status", "epochs", "val_acc", "val_loss", "train_time_s", "param.arch", "param.lr"):
        assert column in csv.columns
    assert csv["val_loss"].is_monotonic_increasing  # sorted best first for a "min" objective
    assert sorted(csv["param.lr"].round(9)) == sorted([1e-2, 2e-2, 1e-6, 1.1e-6, 1.2e-6, 1.3e-6])


def test_each_report_carries_what_the_workers_reports_cost_and_its_checkpoint_is_ray_trains(asha_run) -> None:
    """`report_s`: the running total of a worker's time in its earlier reports (a checkpoint
    written straight where Ray Train keeps it, then handed over), what `python -m bench --cases
    overhead` reports per epoch."""
    _, out = asha_run
    for path in out.glob("tune/run_trial_*/result.json"):
        results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        totals = [r["report_s"] for r in results]
        assert totals[0] == 0 and all(b > a for a, b in zip(totals, totals[1:])), totals
        for result in results:
            checkpoint = Path(result["checkpoint_path"])
            assert checkpoint.parent.parent == out / "train" and checkpoint.name == f"epoch-{result['epoch']:04d}"
    assert not list(out.glob("train/*/epoch-*/.*")), "nothing but the checkpoint's own files"


def test_the_fastest_of_the_top_5_within_the_tolerance_is_exported_with_the_figures(asha_run) -> None:
    _, out = asha_run
    meta = json.loads((out / "best" / "meta.json").read_text())
    report = pd.read_csv(out / "report.csv")
    top = meta["serving_top_k"]
    assert [t["trial_id"] for t in top] == list(report["trial_id"].head(5))
    assert all(t["parameters"] > 0 and t["onnx_bytes"] > 0 and 0 < t["batch1_p50_ms"] <= t["batch1_p95_ms"]
               and t["batch32_images_per_s"] > 0 for t in top)
    narrow = report.head(5)[report.head(5)["param.cnn_width"] == 8]  # one graph: measured once, equal figures
    assert len({t["batch1_p50_ms"] for t in top if t["trial_id"] in set(narrow["trial_id"])}) == 1
    narrow_p50 = next(t["batch1_p50_ms"] for t in top if t["trial_id"] in set(narrow["trial_id"]))
    assert all(t["batch1_p50_ms"] > narrow_p50 for t in top if t["trial_id"] not in set(narrow["trial_id"]))
    selection = meta["selection"]
    assert meta["trial_id"] == selection["chosen"]["trial_id"] == narrow["trial_id"].iloc[0]
    # The best: a learner (wide), or the ensemble of the top trials where it was kept (then one more
    # candidate, measured like the trials: slower than a narrow trial, as it holds a wide one).
    ensemble = meta["ensemble"]
    assert ensemble["candidates"] == list(report["trial_id"].head(5))
    assert ensemble["reason"].startswith(("kept", "not kept")), ensemble  # tried: nothing failed on the way
    if ensemble["kept"]:
        assert ensemble["serving"]["batch1_p50_ms"] > narrow_p50
        assert selection["best"]["trial_id"] == "ensemble"
        assert selection["best"]["objective"] == pytest.approx(ensemble["val_loss"])
    else:
        assert selection["best"]["trial_id"] == report["trial_id"].iloc[0] != meta["trial_id"]
        assert selection["best"]["objective"] == pytest.approx(report["val_loss"].iloc[0])
    assert meta["arch"] == "small_cnn"  # not the ensemble: the narrow trial is faster
    assert selection["fallback"] is None
    assert selection["rule"] == "fastest_within=10" and selection["tolerance"] == 10
    assert selection["chosen"]["objective"] == pytest.approx(meta["metrics"]["val_loss"])
    assert selection["chosen"]["batch1_p50_ms"] == min(t["batch1_p50_ms"] for t in top)
    # The leaderboard's columns, the plot and the sentence, and the same again rebuilt without Ray.
    measured = report["serving.batch1_p50_ms"]
    assert measured.head(5).tolist() == [t["batch1_p50_ms"] for t in top] and measured.iloc[5:].isna().all()
    page = (out / "report.md").read_text()
    assert selection["reason"] in page and "| p50_ms |" in page and f"Chosen: trial {meta['trial_id']}" in page
    assert (out / "plots" / "accuracy_vs_latency.png").is_file()
    # The plot also shows the finished trials below the top 5 (here one, of a graph measured already).
    stored_best = json.loads((out / "report_inputs.json").read_text())["best"]
    assert [t["trial_id"] for t in stored_best["serving_others"]] == list(report["trial_id"].iloc[5:])
    assert stored_best["serving_unmeasured"] == 0 and "serving_others" not in meta
    assert "and 1 other finished trial (grey)" in page
    (out / "report.md").unlink()
    assert report_main([str(out)]) == 0
    assert (out / "report.md").read_text() == page
    assert pd.read_csv(out / "report.csv").equals(report)


def test_best_model_is_exported_and_loads_in_one_line(asha_run, coats: Path) -> None:
    _, out = asha_run
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert meta["classes"] == ["blotches", "rosettes", "spots", "stripes"]
    assert meta["preprocess"]["resize"] == [32, 32] and len(meta["preprocess"]["mean"]) == 3
    assert meta["arch"] == "small_cnn" and meta["config"]["cnn_width"] == 8
    assert {"val_acc", "val_loss", "test_acc", "test_ece", "test_ece_calibrated"} <= set(meta["metrics"])
    assert 0.05 <= meta["temperature"] <= 20  # fitted on the val split
    assert meta["tta"]["mode"] in (None, "flip") and (meta["tta"]["mode"] == "flip") == (
        meta["tta"]["val_loss_flip"] < meta["tta"]["val_loss_plain"])
    page = (out / "report.md").read_text()
    assert f"temperature of **{meta['temperature']:.3g}**" in page and (out / "plots" / "reliability.png").is_file()
    assert f"batch 1 in **{meta['serving']['onnxruntime_cpu']['batch1_p50_ms']:.1f} ms**" in page
    images = sorted((coats / "test").rglob("*.jpg"))
    predictions = load_best(str(out)).predict(images)
    assert list(predictions.columns[:2]) == ["file", "prediction"]
    assert len(predictions) == len(images) and predictions["error"].isna().all()
    probabilities = predictions[meta["classes"]].to_numpy()
    assert probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-5)
    truth = [p.parent.name for p in images]
    accuracy = (predictions["prediction"] == truth).mean()
    assert accuracy == pytest.approx(meta["metrics"]["test_acc"], abs=1e-6)


def test_predict_reports_an_unreadable_image_on_its_row(asha_run, tmp_path: Path) -> None:
    _, out = asha_run
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    frame = load_best(str(out)).predict([bad])
    assert frame["prediction"].isna().all() and "broken.jpg" in frame["file"].iloc[0]
    assert frame["error"].iloc[0]


@pytest.mark.slow
def test_with_the_dashboard_it_answers_and_nothing_is_left_either(coats: Path, tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, ASHA_EXPERIMENT.format(data=coats))
    probe_out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("leak_probe.py")), str(experiment),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env={**cli_env(), "LEAK_PROBE_OUT": str(probe_out)}, cwd=tmp_path, timeout=900)
    assert probe_out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    probe = json.loads(probe_out.read_text())
    # the dashboard answered while the search ran, and only with Ray's auth token
    assert probe["dashboard"] == {"with_token": 200, "without_token": 401}
    assert {k: probe[k] for k in ("exit_code", "placement_groups", "actors")} == \
        {"exit_code": 0, "placement_groups": [], "actors": []}
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert len(report) == 6 and (report["status"] == "early_stopped").any()


def test_the_files_the_seam_reads_are_where_and_as_ray_wrote_them(asha_run) -> None:
    """Contract (search/seam/tune_files.py): Tune's experiment state and each Train run's record of
    registered checkpoints, by the names and fields the seam reads, after a real search."""
    from search.seam.tune_files import EXPERIMENT_STATE_PATTERN, registered_checkpoints

    _, out = asha_run
    assert list((out / "tune").glob(EXPERIMENT_STATE_PATTERN))
    runs = sorted((out / "train").glob("train-*"))
    assert len(runs) == 6
    for run in runs:
        registered = registered_checkpoints(run)
        assert registered, f"{run}: no record of its checkpoints the seam can read"
        # the ended trials' checkpoints out of reach of select= are freed (search/driver/retention.py)
        assert {p.name for p in run.glob("epoch-*")} <= registered


def test_an_ended_trial_keeps_its_best_checkpoint_only_while_select_could_export_it(asha_run) -> None:
    """select="fastest_within=10" chooses among the top 5 (all within 10 of the best val_loss): they
    keep their best epoch's checkpoint, slimmed of Adam's state; the 6th keeps none."""
    _, out = asha_run
    report = pd.read_csv(out / "report.csv", dtype={"trial_id": str})  # best first
    for rank, trial_id in enumerate(report["trial_id"]):
        results = [json.loads(line) for path in out.glob(f"tune/run_trial_{trial_id}_*/result.json")
                   for line in path.read_text().splitlines() if line.strip()]
        best = max(results, key=lambda r: (-r["val_loss"], r["epoch"]))  # the latest on ties, as Ray Train
        kept = sorted((out / "train" / f"train-{trial_id}").glob("epoch-*"))
        if rank < 5:
            assert [k.name for k in kept] == [f"epoch-{best['epoch']:04d}"], (rank, results)
            assert "optimizer" not in torch.load(kept[0] / "state.pt", weights_only=True)
        else:
            assert kept == [], rank
