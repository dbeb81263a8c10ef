"""`run_search`, the command line's twin from Python: the same files for the same experiment and
seed, a user's mistake raised with the command's one-line message, an `Experiment` object taken as is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from search import SearchResult, run_search
from search.experiment.spec import Budget, Experiment, Space, SpecError, load_experiment
from search.run import main
from tests.conftest import tiny_experiment
from tests.search.test_cli import run_cli
from trainables.data import DataError

# What differs between two runs of one search: Tune's trial ids and timestamps in folder names, timings.
VARYING = ("train_time_s", "startup_s", "trial_id", "serving.")


def _files(out: Path) -> set[str]:
    """The search folder's files, a trial's folders named by its creation number."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
            and p.relative_to(out).parts[0] not in ("tune", "train", "plots")} | \
        {f"{p.parent.name}/{p.name}" for p in out.glob("plots/*")}


def test_the_api_and_the_command_write_the_same_files_for_the_same_experiment_and_seed(
        ray_session, coats: Path, tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=2, epochs=2)
    assert main([str(experiment), "--out", str(tmp_path / "cli"), "--seed", "3", "--concurrency", "1"]) == 0
    result = run_search(experiment, out=tmp_path / "api", seed=3, concurrency=1)
    assert isinstance(result, SearchResult) and (result.status, result.exit_code) == ("finished", 0)
    assert result.finished and result.out == tmp_path / "api" and result.ended_by is None
    assert _files(tmp_path / "cli") == _files(tmp_path / "api")
    cli = pd.read_parquet(tmp_path / "cli" / "report.parquet")
    table = result.table
    same = [c for c in table.columns if not c.startswith(VARYING)]
    pd.testing.assert_frame_equal(table[same], cli[same])
    assert len(list((tmp_path / "api" / "train").iterdir())) == len(list((tmp_path / "cli" / "train").iterdir())) == 2
    # what a notebook reads off the result
    assert set(result.time) >= {"useful_fraction", "train_s"} and result.summary["trials"] == 2
    assert len(result.study.trials) == 2 and result.study.study_name == "tiny"
    assert result.best.predict([next(coats.glob("test/*/*"))])["prediction"].notna().all()
    assert {"report_html", "report_csv", "best", "study"} <= set(result.paths)


def test_a_users_mistake_raises_with_the_line_the_command_prints(tmp_path: Path, coats: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats)
    with pytest.raises(DataError) as raised:
        run_search(experiment, data=str(tmp_path / "missing"), out=tmp_path / "out")
    proc = run_cli(str(experiment), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {raised.value}"
    with pytest.raises(SpecError, match="Budget.trials: 0 is not allowed"):
        run_search(experiment, trials=0, out=tmp_path / "out")
    with pytest.raises(SpecError, match="experiment"):
        run_search(tmp_path / "nothing.py")


def test_an_experiment_object_is_taken_as_it_is(tmp_path: Path, coats: Path) -> None:
    experiment = load_experiment(tiny_experiment(tmp_path, coats))
    changed = Experiment(name="object", data=str(coats), image_size_px=32, weights="none",
                         space=Space(arch="small_cnn"), budget=Budget(trials=1, max_epochs=1))
    for given in (experiment, changed):
        result = run_search(given, check=True, out=tmp_path / given.name)
        assert (result.status, result.exit_code, result.experiment.name) == ("checked", 0, given.name)
        assert (tmp_path / given.name / "data_report.csv").is_file() and result.table is None
