"""A search tracked in MLflow (`python -m search.run EXP --mlflow URI`).

The search is a parent run (the experiment's settings as parameters, the best trial's metrics,
the report and best/ as artifacts, the best model logged with its input/output signature);
every trial is a child run (its sampled parameters, every epoch's metrics, its status as the
report names it: completed, early_stopped, error, ...).

Trials are logged from Tune's driver through Ray Tune's `MLflowLoggerCallback`, with three of
its habits changed: it creates a new run for a trial Tune restores (a --resume would list each
trial twice), logs Tune's bookkeeping (pid, timestamps) as metrics, and sends one request per
metric. `OUT/mlflow.json` remembers the server and the parent run, so a `--resume` (or an
extension) goes on in the same runs, with or without repeating `--mlflow`.

Tracking watches the search and never stops it: a server that goes away mid-search costs one
warning, and the search, its report and best/ go on as without tracking.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.utils import flatten_dict

from search.experiment.spec import Experiment, SpecError
from search.state.names import (
    BEST_DIR,
    EXPERIMENT_FILE,
    META_FILE,
    ONNX_FILE,
    REPORT_CSV,
    REPORT_HTML,
    REPORT_PARQUET,
    SUMMARY_FILE,
    TRACKING_FILE,
    write_json,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

OUT_TAG = "imagesearch.out"
TRIAL_TAG = "imagesearch.trial_id"
STATUS_TAG = "imagesearch.status"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a child run under its parent
# A tracking server that stops answering must not hold the search for minutes: MLflow's
# default is 7 retries with exponential backoff, and a 120 s timeout per request.
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
_REACH_TIMEOUT_S = 10


@dataclass(frozen=True)
class Tracking:
    """Where a search is tracked: the server, the MLflow experiment and the search's parent run."""

    uri: str
    experiment_id: str
    run_id: str

    def callback(self) -> TrialRuns:
        """Tune's callback that logs every trial as a child run of this search."""
        return TrialRuns(self)

    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(self.uri)


def open_tracking(uri: str | None, experiment: Experiment, out: Path, display: str, resume: bool) -> Tracking | None:
    """The search's tracking, or None when it is not tracked.

    A new search is tracked when `uri` is given (an unreachable server is a SpecError before
    anything runs); a resumed one also when OUT/mlflow.json says it was, and then a server
    that is gone is a warning: a resume is never refused for its tracking.
    """
    saved = _saved(out) if resume else None
    if uri is None and saved is None:
        return None
    chosen = uri or saved["uri"]
    try:
        check(chosen)
        try:
            return _parent_run(chosen, experiment, out, display, saved if saved and saved["uri"] == chosen else None)
        except Exception as err:  # the server answered but refused: a login, a read-only store, ...
            raise SpecError("--mlflow", chosen, f"a tracking server that takes runs ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    except SpecError as err:
        if uri is not None:
            raise
        print(f"warning: not tracked in MLflow this time ({err}; the URI is from {TRACKING_FILE})", flush=True)
        return None


def _saved(out: Path) -> dict[str, str] | None:
    try:
        return json.loads((out / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return None


def check(uri: str) -> None:
    """Refuse (SpecError) a `--mlflow` URI without MLflow installed or whose server does not
    answer, in seconds, not after MLflow's retries."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SpecError("--mlflow", uri, "a tracking URI with MLflow installed "
                        "(pip install 'imagesearch[mlflow]')") from None
    for name, value in _CLIENT_ENV.items():
        os.environ.setdefault(name, value)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_REACH_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # it answered (a server behind a login may refuse /health to strangers)
        except (OSError, urllib.error.URLError) as err:
            reason = getattr(err, "reason", err)
            raise SpecError("--mlflow", uri, f"an MLflow tracking server that answers ({reason})") from None


def _parent_run(uri: str, experiment: Experiment, out: Path, display: str, saved: dict[str, str] | None) -> Tracking:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    if saved is not None and not _run_exists(client, saved["run_id"]):
        print(f"Tracking in MLflow: run {saved['run_id']} is gone from {uri}; a new one holds the search from now on",
              flush=True)
        saved = None
    if saved is not None:
        client.update_run(saved["run_id"], status="RUNNING")
        tracking = Tracking(uri, saved["experiment_id"], saved["run_id"])
        print(f"Tracking in MLflow: {uri}, run {tracking.run_id} (continued)", flush=True)
        return tracking
    found = client.get_experiment_by_name(experiment.name)
    if found is not None and found.lifecycle_stage == "deleted":  # in MLflow's trash, where no run can go
        client.restore_experiment(found.experiment_id)
        print(f"Tracking in MLflow: experiment {experiment.name!r} restored from MLflow's trash", flush=True)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment.name)
    run = client.create_run(experiment_id, run_name=experiment.name,
                            tags={OUT_TAG: display, "mlflow.source.name": "python -m search.run"})
    tracking = Tracking(uri, experiment_id, run.info.run_id)
    client.log_batch(tracking.run_id, params=_params(_settings(experiment)))
    write_json(out / TRACKING_FILE, asdict(tracking))
    print(f"Tracking in MLflow: {uri}, experiment {experiment.name!r}, run {tracking.run_id}", flush=True)
    return tracking


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException:
        return False


def _settings(experiment: Experiment) -> dict[str, Any]:
    """The experiment's settings as flat parameters (the search space goes as an artifact)."""
    budget = {f"budget.{k}": v for k, v in asdict(experiment.budget).items()}
    resources = {f"resources.{k}": v for k, v in asdict(experiment.resources).items()}
    plain = {k: getattr(experiment, k) for k in ("data", "objective", "mode", "image_size_px", "val_fraction",
                                                 "seed", "weights") if hasattr(experiment, k)}
    return {**plain, **budget, **resources}


def _params(values: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]


def _metrics(values: dict[str, Any], step: int) -> list:
    """MLflow metrics of a result's numbers: a trial's own metrics, not Tune's bookkeeping."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    found = []
    for key, value in values.items():
        if key in AUTO_RESULT_KEYS or key in ("epoch", "done", "trial_id") or isinstance(value, bool):
            continue
        try:
            found.append(Metric(key, float(value), now, step))
        except (TypeError, ValueError):  # a note, a path
            continue
    return found


class TrialRuns(MLflowLoggerCallback):
    """Every trial a child run of the search's parent run, found again after a restore."""

    def __init__(self, tracking: Tracking) -> None:
        super().__init__(tracking_uri=tracking.uri)
        self.tracking = tracking
        self.broken = False

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._trial_runs: dict[Trial, str] = {}
        self._client = self.tracking.client()

    def log_trial_start(self, trial: Trial) -> None:
        self._guarded(self._start, trial)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        self._guarded(self._result, trial, result)

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        self._guarded(self._end, trial, failed)

    def _start(self, trial: Trial) -> None:
        run_id = self._trial_runs.get(trial) or self._run_of(trial)
        self._trial_runs[trial] = run_id
        self._client.log_batch(run_id, params=_params(flatten_dict(trial.config, delimiter=".")))

    def _run_of(self, trial: Trial) -> str:
        """The trial's run: the one an earlier run of this search made for it, or a new one."""
        parent = self.tracking.run_id
        found = self._client.search_runs(
            [self.tracking.experiment_id], max_results=1,
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' and tags.`{PARENT_TAG}` = '{parent}'")
        if found:
            self._client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        run = self._client.create_run(self.tracking.experiment_id, run_name=f"trial {trial.trial_id}",
                                      tags={PARENT_TAG: parent, TRIAL_TAG: trial.trial_id})
        return run.info.run_id

    def _result(self, trial: Trial, result: dict[str, Any]) -> None:
        if trial not in self._trial_runs:
            self._start(trial)
        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        self._client.log_batch(self._trial_runs[trial], metrics=_metrics(result, step))

    def _end(self, trial: Trial, failed: bool) -> None:
        if trial in self._trial_runs:
            self._client.set_terminated(self._trial_runs[trial], status="FAILED" if failed else "FINISHED")

    def _guarded(self, call: Any, *args: Any) -> None:
        if self.broken:
            return
        try:
            call(*args)
        except Exception as err:  # tracking watches the search: it never ends it
            self.broken = True
            print(f"warning: MLflow tracking stopped ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                  "the search goes on untracked", flush=True)


def finish(tracking: Tracking, out: Path, summary: dict[str, Any], interrupted: bool) -> None:
    """After the report: every trial run gets its status, the parent run the best trial's
    metrics, the report and best/ (the model logged with its signature), and ends."""
    try:
        _finish(tracking, out, summary, interrupted)
    except Exception as err:  # the search's own results are written already: this only tells MLflow
        print(f"warning: MLflow tracking could not finish ({type(err).__name__}: "
              f"{str(err).splitlines()[0][:200]})", flush=True)


def _finish(tracking: Tracking, out: Path, summary: dict[str, Any], interrupted: bool) -> None:
    client = tracking.client()
    statuses = _statuses(out)
    children = client.search_runs([tracking.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracking.run_id}'",
                                  max_results=5000)
    for run in children:
        status = statuses.get(run.data.tags.get(TRIAL_TAG, ""))
        if status:
            client.set_tag(run.info.run_id, STATUS_TAG, status)
        if run.info.status == "RUNNING":  # a trial an interruption left unfinished
            client.set_terminated(run.info.run_id, status="KILLED")
    best = summary.get("best") or {}
    metrics = {f"best_{k}": v for k, v in best.items() if isinstance(v, (int, float))}
    metrics.update(_serving(out / BEST_DIR / META_FILE))
    client.log_batch(tracking.run_id, metrics=_metrics(metrics, 0), tags=_tags(summary))
    for name in (REPORT_HTML, REPORT_CSV, SUMMARY_FILE, EXPERIMENT_FILE):
        if (out / name).is_file():
            client.log_artifact(tracking.run_id, str(out / name))
    if (out / BEST_DIR / META_FILE).is_file():
        client.log_artifacts(tracking.run_id, str(out / BEST_DIR), BEST_DIR)
        _log_model(tracking, out / BEST_DIR)
    client.set_terminated(tracking.run_id, status="KILLED" if interrupted else "FINISHED")


def _statuses(out: Path) -> dict[str, str]:
    try:
        frame = pd.read_parquet(out / REPORT_PARQUET, columns=["trial_id", "status"])
    except (OSError, ValueError):
        return {}
    return dict(zip(frame["trial_id"].astype(str), frame["status"].astype(str)))


def _serving(meta_file: Path) -> dict[str, float]:
    """The exported model's serving cost (meta.json's "serving") as metrics: what teams compare
    searches by, next to accuracy."""
    try:
        serving = json.loads(meta_file.read_text()).get("serving") or {}
    except (OSError, ValueError):
        return {}
    figures = {**{k: v for k, v in serving.items() if k != "onnxruntime_cpu"}, **serving.get("onnxruntime_cpu", {})}
    return {f"serving_{k}": v for k, v in figures.items() if isinstance(v, (int, float)) and k != "cpus"}


def _tags(summary: dict[str, Any]) -> list:
    from mlflow.entities import RunTag

    tags = {"imagesearch.trials": summary.get("trials"), "imagesearch.best_trial": summary.get("best_trial"),
            "imagesearch.ended_by": summary.get("ended_by")}
    return [RunTag(k, str(v)) for k, v in tags.items() if v is not None]


def _log_model(tracking: Tracking, best: Path) -> None:
    """best/model.onnx as an MLflow model of the parent run, with its input and output signature."""
    meta = json.loads((best / META_FILE).read_text())
    onnx_meta = meta.get("onnx", {})
    if "file" not in onnx_meta or not (best / ONNX_FILE).is_file():
        return  # the ONNX export failed (meta.json says why); best/ is logged as files all the same
    import mlflow
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    _, channels, height, width = onnx_meta["input_shape"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, height, width), onnx_meta["input"])]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(meta["classes"])), onnx_meta["output"])]))
    mlflow.set_tracking_uri(tracking.uri)
    with mlflow.start_run(run_id=tracking.run_id):
        mlflow.onnx.log_model(onnx.load(str(best / ONNX_FILE)), name="model", signature=signature,
                              metadata={"classes": meta["classes"], "trial_id": meta.get("trial_id")})
