"""What the service reads of the files Tune and Train write, and what it does to Tune's objects
around them: the experiment state's file name, Train's record of registered checkpoints,
a Tuner's run config, Tune's storage syncer, and a trial's storage.

Names and fields of Ray 2.60 (unchanged from 2.59; `tests/search/seam/test_contracts.py`
checks them on the installed Ray, against a real run where they are files). A file that cannot be
found or parsed is reported as unknown (None), so that no caller acts on what it failed to read.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from search.seam import versions

# Tune's experiment state (ray/tune/execution/tune_controller.py, CKPT_FILE_TMPL).
EXPERIMENT_STATE_PATTERN = "experiment_state-*.json"
# Ray Train's record of a run's registered checkpoints, in the run's folder (checkpoint_manager.py).
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"


def registered_checkpoints(run: Path) -> set[str] | None:
    """The folder names of the checkpoints Ray Train registered for the run in `run`; None
    when what counts is unknown: its record unreadable, or missing on a Ray whose file names
    were not checked (`versions.files_verified`; on one that was, Train writes the record with
    the first checkpoint it registers, so none means none registered)."""
    path = run / CHECKPOINT_SNAPSHOT
    if not path.exists():
        return set() if versions.files_verified() else None
    try:
        snapshot = json.loads(path.read_text())
        results = [*snapshot["checkpoint_results"], snapshot.get("latest_checkpoint_result") or {}]
        return {result["checkpoint_dir_name"] for result in results if result}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def run_config_of(tuner: Any) -> Any | None:
    """The live RunConfig of a Tuner run in this process (its callbacks and stopper can still
    be set after it saved tuner.pkl); None under Ray Client, where the run is on the cluster."""
    local = getattr(tuner, "_local_tuner", None)
    return None if local is None else local.get_run_config()


def rewrite_tune_files(trials: list[Any]) -> None:
    """Write the experiment's files again from the driver's own copy (after a full disk cut
    Tune's copies short); raises when that fails too."""
    storage = trials[0].storage
    with contextlib.suppress(Exception):  # a copy of Tune's still running (which the full disk may fail)
        storage.syncer.wait()
    storage.syncer.sync_up(storage.experiment_driver_staging_path, storage.experiment_fs_path)
    storage.syncer.wait()


def forget_error_pickles(trials: list[Any]) -> None:
    """Let the results load without the trials' error pickles (one cut short stops them loading)."""
    for trial in trials:
        trial.run_metadata.pickled_error_filename = None


class MovableASHA(ASHAScheduler):
    """ASHA that also stores every new trial where OUT is now (`out_fs_path`). Restored from a
    moved OUT, Tune moves the trials it restores, but creates new ones at the old place (its
    search generator pickled the experiment's storage), where nothing can read them back.
    A class attribute: Tune pickles the scheduler with OUT's old place."""

    out_fs_path: str | None = None

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        where = MovableASHA.out_fs_path
        if where is not None and trial.storage.storage_fs_path != where:
            storage = copy.copy(trial.storage)
            storage.storage_fs_path = where
            trial.set_storage(storage)  # also moves the paths of its tracked checkpoints
        super().on_trial_add(tune_controller, trial)
