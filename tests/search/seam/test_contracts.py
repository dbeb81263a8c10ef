"""Every private symbol of Ray, Tune, Train or Optuna that `search/seam/` relies on, checked on
the installed versions: that it exists, with the signature and the behaviour the seam needs.
An upgrade that moves or changes one fails here, naming it, never in a user's search.
(What the seam reads of files Ray writes is checked against a real search in
tests/search/test_search.py; the markers' round trip needs a Ray, in test_markers.py.)"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
from pathlib import Path

import pytest

from search.seam import versions

# The fast path's patches (controller, kept_workers, kept_sync) run only on a verified Ray: on
# another their symbols may differ (Ray 2.59's SynchronizationActor has no set_required_ranks).
FAST_PATH = pytest.mark.skipif(versions.ray_version() not in versions.VERIFIED_RAY,
                               reason="the fast path's private symbols: checked only on a verified Ray")


def symbol(path: str) -> object:
    """`module.path:Attr.attr` -> the object, failing with the symbol's name when it is gone."""
    module_name, _, attrs = path.partition(":")
    try:
        found: object = importlib.import_module(module_name)
    except ImportError as err:
        pytest.fail(f"{module_name} is gone from Ray {versions.ray_version()}: {err}")
    for attr in attrs.split(".") if attrs else ():
        if not hasattr(found, attr):
            pytest.fail(f"{path} is gone from this Ray/Optuna (Ray {versions.ray_version()})")
        found = getattr(found, attr)
    return found


def parameters(path: str) -> list[str]:
    return list(inspect.signature(symbol(path)).parameters)


WORKER_GROUP = "ray.train.v2._internal.execution.worker_group.worker_group"
STATE = "ray.train.v2._internal.execution.worker_group.state"
CONTEXT = "ray.train.v2._internal.execution.context"
TRAINER = "ray.train.v2.api.data_parallel_trainer:DataParallelTrainer"
CONTROLLER = "ray.train.v2._internal.execution.controller:TrainController"


# --- search/seam/controller.py ------------------------------------------------------------


@FAST_PATH
def test_the_trainer_runs_its_controller_through_one_overridable_method() -> None:
    assert parameters(f"{TRAINER}._initialize_and_run_controller") == ["self", "controller_init_kwargs"]
    assert parameters(f"{TRAINER}._create_default_callbacks") == ["self"]
    source = inspect.getsource(symbol(f"{TRAINER}.fit"))
    assert "_initialize_and_run_controller" in source, "fit() no longer starts the controller through it"


@FAST_PATH
def test_the_default_callbacks_the_fast_path_leaves_out_are_still_named_so() -> None:
    from search.seam.controller import UNNEEDED_TRAIN_CALLBACKS

    source = inspect.getsource(symbol(f"{TRAINER}._create_default_callbacks"))
    for name in UNNEEDED_TRAIN_CALLBACKS:
        assert name in source, f"{name} is no longer one of DataParallelTrainer's default callbacks"


@FAST_PATH
def test_the_controller_runs_in_the_calling_process_and_shuts_its_workers_down() -> None:
    controller = symbol(CONTROLLER)
    assert asyncio.iscoroutinefunction(controller.run)
    for method in ("get_worker_group", "_shutdown_worker_group", "get_result"):
        assert callable(getattr(controller, method, None)), f"TrainController.{method} is gone"


@FAST_PATH
def test_the_worker_context_holds_a_checkpoint_upload_pool_and_the_storage_check() -> None:
    context = symbol(f"{CONTEXT}:TrainContext")
    fields = {f.name for f in __import__("dataclasses").fields(context)}
    assert {"checkpoint_upload_threadpool", "execution_context"} <= fields
    assert callable(symbol(f"{CONTEXT}:get_train_context"))
    assert isinstance(symbol(f"{CONTEXT}:MAX_CHECKPOINT_UPLOAD_THREADS"), int)
    storage = symbol("ray.train.v2._internal.execution.storage:StorageContext")
    assert parameters("ray.train.v2._internal.execution.storage:StorageContext._check_validation_file") == ["self"]
    assert callable(storage.build_checkpoint_path_from_name)
    assert "self.storage_filesystem" in inspect.getsource(storage.__init__)
    assert callable(symbol("ray.train.v2.api.context:TrainContext.get_storage"))


def test_reports_are_logged_by_the_context_modules_own_logger() -> None:
    module = symbol(CONTEXT)
    assert "logging.getLogger(__file__)" in inspect.getsource(module) or \
        "getLogger(__file__)" in inspect.getsource(module), "Train's report logger is no longer named after its file"


def test_the_report_api_takes_an_upload_function() -> None:
    import ray.train

    assert {"checkpoint_upload_mode", "checkpoint_upload_fn", "delete_local_checkpoint_after_upload",
            "checkpoint_dir_name"} <= set(inspect.signature(ray.train.report).parameters)


# --- search/seam/kept_workers.py, kept_sync.py ---------------------------------------------


@FAST_PATH
def test_the_worker_group_creates_its_placement_group_and_workers_as_patched() -> None:
    assert parameters(f"{WORKER_GROUP}:WorkerGroup._create_placement_group") == [
        "self", "scaling_config", "worker_group_context"]
    source = inspect.getsource(symbol(f"{WORKER_GROUP}:WorkerGroup"))
    assert "_create_placement_group(" in source and "_create_workers(" in source
    assert parameters(f"{WORKER_GROUP}:WorkerGroup._create_workers") == [
        "self", "num_workers", "placement_group", "resources_per_worker", "placement_group_bundle_indices",
        "starting_world_rank", "world_size", "replica_group_size"]
    assert callable(symbol(f"{WORKER_GROUP}:WorkerGroup._assign_worker_ranks"))
    assert parameters(f"{STATE}:_shutdown_workers") == ["workers", "patience_s"]
    assert parameters(f"{STATE}:_shutdown_sync_actor") == ["sync_actor"]
    worker = parameters("ray.train.v2._internal.execution.worker_group.worker:Worker.__init__")
    assert worker[:4] == ["self", "actor", "metadata", "resources"] and "placement_group_bundle_index" in worker


@FAST_PATH
def test_the_worker_group_starts_its_synchronisation_actor_by_the_name_the_patch_replaces() -> None:
    source = inspect.getsource(symbol(f"{WORKER_GROUP}:WorkerGroup"))
    assert "SynchronizationActor.options(" in source
    assert "_shutdown_sync_actor" in inspect.getsource(symbol(STATE))
    actor = symbol(f"{WORKER_GROUP}:SynchronizationActor")
    for method in ("reset", "set_required_ranks"):
        assert hasattr(actor, method), f"SynchronizationActor.{method} is gone (the kept actor's reset)"


@FAST_PATH
def test_a_training_thread_can_be_asked_whether_it_runs_and_how_it_ended() -> None:
    runner = symbol("ray.train.v2._internal.execution.worker_group.thread_runner:ThreadRunner")
    for method in ("is_running", "get_error"):
        assert callable(getattr(runner, method, None)), f"ThreadRunner.{method} is gone"
    execution = symbol(f"{CONTEXT}:ExecutionContext")
    fields = {f.name for f in __import__("dataclasses").fields(execution)}
    assert {"result_queue", "training_thread_runner"} <= fields


# --- search/seam/markers.py, cluster_info.py ------------------------------------------------


def test_the_key_value_store_takes_a_namespace_and_deletes_by_prefix() -> None:
    kv = "ray.experimental.internal_kv"
    for name in ("_internal_kv_put", "_internal_kv_get", "_internal_kv_exists", "_internal_kv_del",
                 "_internal_kv_list"):
        assert "namespace" in parameters(f"{kv}:{name}"), name
    assert "del_by_prefix" in parameters(f"{kv}:_internal_kv_del")


def test_the_gcs_state_answers_for_actors_and_the_autoscaler() -> None:
    assert "actor_id" in parameters("ray._private.state:actors")
    assert callable(symbol("ray._private.state:state.get_max_resources_from_cluster_config"))
    assert hasattr(symbol("ray._private.worker"), "_global_node")
    assert parameters("ray.autoscaler._private.util:prepare_config") == ["config"]
    assert parameters("ray.autoscaler._private.util:validate_config")[0] == "config"


# --- search/seam/tune_files.py ----------------------------------------------------------------


def test_tunes_experiment_state_is_named_as_the_seam_reads_it(tmp_path: Path) -> None:
    from search.seam.tune_files import EXPERIMENT_STATE_PATTERN

    template = symbol("ray.tune.execution.tune_controller:TuneController.CKPT_FILE_TMPL")
    assert Path(template.format("2026-12-07_00-00-00")).match(EXPERIMENT_STATE_PATTERN)


def test_a_tuner_holds_its_run_config_and_tunes_storage_its_syncer() -> None:
    from ray import tune

    assert "_local_tuner" in inspect.getsource(symbol("ray.tune.tuner:Tuner.__init__"))
    assert callable(symbol("ray.tune.impl.tuner_internal:TunerInternal.get_run_config"))
    storage = inspect.getsource(symbol("ray.train._internal.storage:StorageContext.__init__"))
    for attribute in ("self.syncer", "experiment_driver_staging_path"):
        assert attribute in storage or attribute in inspect.getsource(
            symbol("ray.train._internal.storage:StorageContext")), attribute
    assert {"local_dir", "remote_dir"} <= set(parameters("ray.train._internal.syncer:Syncer.sync_up"))
    assert "timeout" in parameters("ray.train._internal.syncer:Syncer.wait")
    assert "pickled_error_filename" in inspect.getsource(symbol("ray.tune.experiment.trial:_TrainingRunMetadata"))
    assert parameters("ray.tune.experiment.trial:Trial.set_storage") == ["self", "new_storage"]
    assert parameters("ray.tune.schedulers:ASHAScheduler.on_trial_add") == ["self", "tune_controller", "trial"]
    assert tune.Tuner is symbol("ray.tune.tuner:Tuner")


def test_an_unreadable_checkpoint_record_or_one_missing_on_an_unchecked_ray_is_unknown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from search.seam.tune_files import CHECKPOINT_SNAPSHOT, registered_checkpoints

    assert registered_checkpoints(tmp_path) == set()  # a checked Ray writes it with the first checkpoint registered
    monkeypatch.setattr(versions, "ray_version", lambda: "2.61.0")
    assert registered_checkpoints(tmp_path) is None  # renamed, perhaps: nothing is done on its absence
    monkeypatch.undo()
    (tmp_path / CHECKPOINT_SNAPSHOT).write_text('{"checkpoint_results": [{"checkpoint_dir_n')
    assert registered_checkpoints(tmp_path) is None
    (tmp_path / CHECKPOINT_SNAPSHOT).write_text(json.dumps({"renamed": []}))
    assert registered_checkpoints(tmp_path) is None
    (tmp_path / CHECKPOINT_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [],
                                                           "latest_checkpoint_result": None}))
    assert registered_checkpoints(tmp_path) == set()


# --- search/seam/optuna_study.py ------------------------------------------------------------------


def test_a_running_optuna_trial_is_taken_up_again_by_its_number(tmp_path: Path) -> None:
    import optuna

    from search.seam.optuna_study import live_trial

    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="contract")
    first, second = study.ask(), study.ask()
    x = first.suggest_float("x", 0, 1)
    again = live_trial(study, first.number)  # FrozenTrial._trial_id, Trial(study, trial_id)
    assert again.number == first.number and again.suggest_float("x", 0, 1) == x
    again.report(0.5, 1)
    again.set_user_attr("k", "v")
    stored = study.get_trials(deepcopy=False)[first.number]
    assert stored.intermediate_values == {1: 0.5} and stored.user_attrs == {"k": "v"}
    assert live_trial(study, second.number).number == second.number
    with pytest.raises(KeyError):
        live_trial(study, 99)


# --- search/seam/versions.py ---------------------------------------------------------------------


def test_the_installed_ray_is_one_the_project_admits() -> None:
    assert versions.unsupported() is None, versions.unsupported()


def test_a_ray_outside_the_range_is_told_what_to_install() -> None:
    line = versions.unsupported("2.48.0")
    assert line is not None and "2.48.0" in line and versions.SUPPORTED in line and "pip install" in line
    assert versions.unsupported("3.0.0") is not None
    assert versions.unsupported("2.59.0") is None and versions.unsupported("2.60.1") is None


def test_the_fast_path_runs_only_on_a_verified_ray_and_can_be_forced_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(versions.PATH_ENV, raising=False)
    verified = versions.VERIFIED_RAY[0]
    assert versions.fast_path(verified) and versions.path_line(verified) is None
    assert not versions.fast_path("2.59.0")
    assert "2.59.0" in versions.path_line("2.59.0") and versions.PLAIN_COST in versions.path_line("2.59.0")
    monkeypatch.setenv(versions.PATH_ENV, "plain")
    assert not versions.fast_path(verified) and f"{versions.PATH_ENV}=plain" in versions.path_line(verified)


def test_a_ray_outside_the_range_stops_the_command_before_anything_runs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from search import run

    monkeypatch.setattr(versions, "ray_version", lambda: "2.48.1")
    assert run.main([str(tmp_path / "missing.py"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Ray 2.48.1 is not one this service runs on: pip install") and "\n" not in err
    assert not (tmp_path / "out").exists()
