"""A search from Python (a notebook, a script): `run_search`, the command line's twin.

    from search import run_search
    result = run_search("experiments/quickstart.py", trials=8)
    result.table                 # the report table (pandas), best first
    result.best.predict(paths)   # the exported model (`load_best`)

It runs the very code `python -m search.run` runs (`search.run.execute`), with the command's
options as keyword arguments, so it writes the same files. A user's mistake raises the
exception whose message the command prints as its one `error:` line; everything else (an
interruption, a full disk during the search) ends the search as the command does and comes
back in the result: `status`, `message` and `resume` say what happened and how to continue.
In a Jupyter kernel, Ctrl-C (the kernel's interrupt) stops the search cleanly, as in a shell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.experiment.spec import Experiment
from search.state.names import SUMMARY_FILE

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from search.best.loader import Predictor
    from search.trial.settings import EpochHook

# The command's exit codes, in words.
STATUS = {0: "finished", 74: "disk_full", 130: "interrupted", 143: "interrupted"}
FLAGS = ("resume", "smoke", "check")


@dataclass
class SearchResult:
    """What a search left in its folder: how it ended, the report table, the best model, the study."""

    status: str  # "finished", "checked" (check=True), "interrupted" or "disk_full"
    exit_code: int  # the command's: 0, 74, 130 (Ctrl-C) or 143 (SIGTERM)
    out: Path | None  # the search folder (its local working copy for a URI), None if it never began
    uri: str | None  # where the search lives: `out`, or the URI given as `out`
    experiment: Experiment | None
    resume: str  # how to continue it: the Python call (or the command)
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json: trials, statuses, where time went

    @property
    def finished(self) -> bool:
        return self.status in ("finished", "checked")

    @property
    def message(self) -> str:
        """One line: how the search ended, and how to continue it when it did not finish."""
        if self.finished:
            return f"The search {self.status}; results in {self.uri}."
        how = "a full disk stopped it" if self.status == "disk_full" else "it was interrupted"
        return f"The search is unfinished ({how}); it is saved: continue it with {self.resume}"

    @property
    def table(self) -> pd.DataFrame | None:
        """The report table (report.parquet: trial ids as text), best first; None before any report."""
        import pandas as pd

        from search.state.names import REPORT_PARQUET

        path = None if self.out is None else self.out / REPORT_PARQUET
        return pd.read_parquet(path) if path is not None and path.is_file() else None

    @property
    def best(self) -> Predictor | None:
        """The exported model (`search.load_best`), None when no trial produced one."""
        from search import load_best
        from search.state.names import BEST_DIR, META_FILE

        if self.out is None or not (self.out / BEST_DIR / META_FILE).is_file():
            return None
        return load_best(str(self.out))

    @property
    def study(self) -> optuna.Study | None:
        """The search's Optuna study (optuna.db), None before one was made."""
        import optuna

        from search.state.names import STUDY_FILE

        if self.out is None or self.experiment is None or not (self.out / STUDY_FILE).is_file():
            return None
        return optuna.load_study(study_name=self.experiment.name, storage=f"sqlite:///{self.out / STUDY_FILE}")

    @property
    def time(self) -> dict[str, float] | None:
        """Where the search's time went (`search.report.table.time_split`: training, start-up, the rest)."""
        return self.summary.get("time")

    @property
    def ended_by(self) -> str | None:
        """Why the search ended early (a time budget, a stalled objective), if it did."""
        return self.summary.get("ended_by")

    @property
    def paths(self) -> dict[str, Path]:
        """The files a user opens, by name: report.html, report.csv, best/, optuna.db, ..."""
        from search.state import names

        if self.out is None:
            return {}
        found = {"out": self.out}
        for key, name in (("report_html", names.REPORT_HTML), ("report_csv", names.REPORT_CSV),
                          ("report_md", names.REPORT_MD), ("best", names.BEST_DIR), ("study", names.STUDY_FILE),
                          ("data_report", names.DATA_REPORT_FILE), ("summary", names.SUMMARY_FILE)):
            if (self.out / name).exists():
                found[key] = self.out / name
        return found

    def __repr__(self) -> str:
        return f"SearchResult(status={self.status!r}, out={str(self.out) if self.out else None!r})"


def run_search(experiment: str | Path | Experiment, *, data: str | None = None, trials: int | None = None,
               max_epochs: int | None = None, concurrency: int | None = None, out: str | Path | None = None,
               name: str | None = None, address: str | None = None, resume: bool = False,
               time_budget: str | float | None = None, stop_when_stalled: int | None = None,
               warm_start: str | Path | None = None, smoke: bool = False, check: bool = False,
               mlflow: str | None = None, seed: int | None = None, cache: str | Path | None = None,
               cache_max: str | None = None, on_epoch: EpochHook | None = None) -> SearchResult:
    """Run (or with `resume=True` continue or extend) the search of `experiment`: an experiment
    file's path or an `Experiment`. Keyword arguments are `python -m search.run`'s options
    (`time_budget="30m"`, `warm_start=OTHER_OUT`, ...). Raises on a user's mistake with the
    command's one-line message (`SpecError`, `DataError`, `WeightsUnavailable`, `UnsupportedRay`,
    `DiskFull` before the search began); returns how the search ended otherwise."""
    from search import run as cli
    from search.driver.signals import terminate_interrupts

    values = {"data": data, "trials": trials, "max_epochs": max_epochs, "concurrency": concurrency, "out": out,
              "name": name, "address": address, "time_budget": time_budget, "stop_when_stalled": stop_when_stalled,
              "warm_start": warm_start, "seed": seed, "cache": cache, "cache_max": cache_max, "mlflow": mlflow}
    given = isinstance(experiment, Experiment)
    argv = ["<Experiment>" if given else str(experiment)]
    for option, value in values.items():
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    argv += [f"--{flag}" for flag, on in zip(FLAGS, (resume, smoke, check)) if on]
    args = cli.parse_args(argv)
    args.argv = argv
    args.resume_hint = _resume_hint(experiment, {k: v for k, v in values.items() if v is not None}, smoke)
    with terminate_interrupts():
        ran = cli.execute(args, on_epoch, experiment if given else None)
    summary: dict[str, Any] = {}
    out_dir = None if ran.output is None else ran.output.local
    if out_dir is not None and (out_dir / SUMMARY_FILE).is_file() and not check:
        summary = json.loads((out_dir / SUMMARY_FILE).read_text())
    status = "checked" if check and ran.code == 0 else STATUS.get(ran.code, "interrupted")
    # The command's own lines said already how it ended, and how to continue it (`resume`).
    return SearchResult(status, ran.code, out_dir, None if ran.output is None else ran.output.display(),
                        ran.experiment, args.resume_hint, summary)


def _resume_hint(experiment: str | Path | Experiment, options: dict[str, Any], smoke: bool) -> str:
    """The call that continues this search: the same one, with resume=True."""
    what = "experiment" if isinstance(experiment, Experiment) else repr(str(experiment))
    shown = [what, *(f"{key}={value!r}" for key, value in options.items()), *(["smoke=True"] if smoke else []),
             "resume=True"]
    return f"run_search({', '.join(shown)})"
