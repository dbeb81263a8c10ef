"""A trial driver's kept worker group (search/seam/kept_workers.py): its placement group is freed once
the driver is gone, never while the driver lives on to its next trial."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pandas as pd
import pytest

from search.run import main
from search.seam import kept_workers
from tests.conftest import fast_path_only, leftovers, write_experiment

pytestmark = fast_path_only()

# The first recipe learns, the three after it barely move (lr 1e-6): ASHA stops them after
# their first epoch, while their runs are in their second (`waits_for_its_stop_in_epoch_2`).
STOPPED_MID_RUN = """
name="kept",
data="{data}",
image_size_px=32,
weights="none",
space=Space(arch="small_cnn", cnn_width=8, cnn_depth=2, batch_size=16, augment=0.0, dropout=0.0,
            optimizer="adam", lr={{"adam": LogUniform(1e-6, 3e-2)}}),
recipes=[{{"lr": 1e-2}}, {{"lr": 1e-6}}, {{"lr": 1.1e-6}}, {{"lr": 1.2e-6}}],
objective="val_loss",
budget=Budget(trials=4, max_epochs=4, grace_period_epochs=1, reduction_factor=2),
resources=Resources(workers=1, cpus_per_worker=1),
"""


def _state(ray, group_hex: str) -> str:
    return ray.util.placement_group_table()[group_hex]["state"]


def _removed(ray, group_hex: str, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while _state(ray, group_hex) != "REMOVED":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_kept_group_is_removed_after_its_driver_not_before(ray_session) -> None:
    ray = ray_session
    from search.driver.placement_groups import remove_kept_groups

    @ray.remote(num_cpus=0)
    class Driver:
        def keep(self) -> str:
            from ray.util.placement_group import placement_group

            from search.seam.markers import record_kept_group

            group = placement_group([{"CPU": 0.01}])
            ray.get(group.ready())
            record_kept_group(group.id.hex())
            return group.id.hex()

    alive, gone = Driver.remote(), Driver.remote()
    alive_group, gone_group = ray.get([alive.keep.remote(), gone.keep.remote()])
    ray.kill(gone)
    time.sleep(1)
    # Ray itself keeps a group until its creating job ends too: the job here is the test's.
    assert _state(ray, gone_group) == "CREATED"
    assert remove_kept_groups() == 1
    assert _removed(ray, gone_group)
    assert _state(ray, alive_group) == "CREATED"  # its driver goes on to its next trial
    assert remove_kept_groups(everything=True) == 1  # the round is over
    assert _removed(ray, alive_group)
    ray.kill(alive)


@pytest.mark.parametrize("value, workers, kept", [(None, 1, True), ("1", 1, True), ("0", 1, False), (None, 2, False)])
def test_only_one_worker_groups_are_kept_unless_turned_off(monkeypatch, value: str | None, workers: int,
                                                            kept: bool) -> None:
    if value is None:
        monkeypatch.delenv(kept_workers.KEEP_WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(kept_workers.KEEP_WORKERS_ENV, value)
    assert kept_workers.keeps(workers) is kept


def waits_for_its_stop_in_epoch_2(marks: Path, hp, metrics: dict) -> None:
    """An epoch hook: in epoch 2 a run waits (up to 3 s) for its driver's stop, so that a stop
    finds it mid-run (its next batch ends it); each stop seen so is a line of `marks`."""
    if metrics["epoch"] == 2 and kept_workers.STOP.wait(3):
        with open(marks, "a") as file:
            file.write(f"{hp.lr}\n")


def _appended(logs: Path, sizes: dict[Path, int]) -> str:
    text = []
    for path in logs.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                file.seek(sizes.get(path, 0))
                text.append(file.read().decode(errors="replace"))
    return "".join(text)


def test_a_trial_stopped_mid_run_ends_quietly_and_its_worker_runs_the_next(ray_session, coats: Path,
                                                                            tmp_path: Path) -> None:
    """ASHA stops a trial while its worker is training: the run ends before its next batch
    without an error in any log (Ray Train logs a train function's exception as "Error in
    training function", which reaches the user's console), and the driver's next trial runs on
    that worker."""
    from search.seam import cluster_info

    logs = Path(cluster_info.session_dir()) / "logs"
    sizes = {path: path.stat().st_size for path in logs.rglob("*") if path.is_file()}
    started_at, marks = time.time(), tmp_path / "stopped"
    experiment = write_experiment(tmp_path, STOPPED_MID_RUN.format(data=coats))
    code = main([str(experiment), "--out", str(tmp_path / "out")],
                on_epoch=functools.partial(waits_for_its_stop_in_epoch_2, marks))
    assert code == 0
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert (report["status"] == "early_stopped").sum() >= 1, report[["status", "epochs"]]
    assert marks.is_file() and marks.read_text().split(), "no stop found a run mid-way"
    # Before the run returned on a stop, Ray Train logged `Stopped` as the train function's error.
    assert "trainables.loop.Stopped" not in _appended(logs, sizes)
    started = [a["ActorClassName"] for a in cluster_info.actors().values() if a["StartTime"] / 1000 >= started_at]
    assert started.count("RayTrainWorker") <= started.count("ImplicitFunc") < 4, started
    assert leftovers(ray_session) == ([], [])
