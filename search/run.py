"""`python -m search.run EXPERIMENT [options]`: run a hyperparameter search end to end.

experiment file -> spec -> data cache -> Ray Tune search -> report table -> best/ export.
A user error (bad field, missing folder, missing weights) is one line on stderr, exit 2; a full
disk (or a spent quota) is one line naming where and how much more the search needs, exit 74.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from search.data import remote
from search.data.leakage import find_leakage
from search.data.progress import DecodeProgress
from search.data.report import data_report, leakage_warning
from search.driver.ray_cluster import check_address
from search.driver.signals import GracefulStop, exit_code, terminate_as_interrupt, terminate_interrupts
from search.experiment.domains import parse_duration, parse_size
from search.experiment.space import without_random_frozen_backbones
from search.experiment.spec import Experiment, SpecError, load_experiment, replace
from search.seam import versions
from search.state import disk, lease, manifest
from search.state.memory_fit import check_count_fits, check_fits
from search.state.names import DATA_REPORT_FILE, EXPERIMENT_FILE, MANIFEST_FILE, SUMMARY_FILE, TRACKING_FILE, TUNE_DIR
from search.state.storage import Output, display_uri, open_output
from search.trial.settings import EpochHook
from trainables import data, parallel
from trainables.archs import WeightsUnavailable

EXIT_USAGE = 2
EXIT_DISK_FULL = 74  # sysexits.h's EX_IOERR
EXIT_RAY_DIED = 75  # sysexits.h's EX_TEMPFAIL: Ray itself died under the search; --resume continues it
USER_ERRORS = (SpecError, data.DataError, WeightsUnavailable)
SMOKE_SIZE_PX = 96


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="experiment file, e.g. experiments/quickstart.py")
    parser.add_argument("--data", help="data folder (train/ and test/ of class subfolders), or a URI pyarrow "
                                       "understands (s3://bucket/photos, gs://...); overrides the experiment's")
    parser.add_argument("--trials", type=int, help="number of trials")
    parser.add_argument("--max-epochs", type=int, help="epochs per trial at most")
    parser.add_argument("--concurrency", type=int, help="trials at once (default: as many as fit)")
    parser.add_argument("--out", help="results folder, or a URI pyarrow understands (s3://bucket/prefix, gs://...), "
                        "which every node of a cluster can reach (default: results/<experiment name>)")
    parser.add_argument("--name", help="experiment name (default: the file's)")
    parser.add_argument("--address",
                        help="Ray cluster to join: auto, host:port or ray://... (default: start a local one)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the search stored in --out; with --trials above the trials it ran, extend it")
    parser.add_argument("--time-budget", metavar="DURATION",
                        help="end the search after this long (90s, 30m, 2h): no new trial starts, running ones stop "
                             "after their epoch; overrides the experiment's Budget(time=...)")
    parser.add_argument("--stop-when-stalled", type=int, metavar="N",
                        help="end the search once N finished trials in a row brought no better value")
    parser.add_argument("--warm-start", metavar="OTHER_OUT",
                        help="tell the new search's TPE the completed trials of an earlier search folder first")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budget (2 trials, 1 epoch, small images, one 1-CPU worker): checks the setup")
    parser.add_argument("--check", action="store_true",
                        help="check the data folder, print class counts and problems, train nothing")
    parser.add_argument("--mlflow", metavar="URI",
                        help="track the search in MLflow (http://host:5000, ...): a parent run, a run per trial, "
                             "the best model; a --resume goes on in the same runs")
    parser.add_argument("--seed", type=int, help="seed of the sampler, the split and the training")
    parser.add_argument("--cache", help=f"folder of decoded-image caches (default: ${data.CACHE_ENV} or "
                                        "~/.cache/imagesearch), shared by runs on the same data")
    parser.add_argument("--cache-max", default=data.DEFAULT_CACHE_MAX, metavar="SIZE",
                        help="keep the decoded caches under SIZE (4GB, 500MB; 0 keeps only this run's), removing "
                             f"the least recently used after the data is ready (default: {data.DEFAULT_CACHE_MAX})")
    return parser.parse_args(argv)


def apply_overrides(experiment: Experiment, args: argparse.Namespace) -> Experiment:
    """The experiment with the command line's overrides, validated again."""
    changes: dict = {}
    for arg, field in (("data", "data"), ("name", "name"), ("seed", "seed"), ("concurrency", "concurrency")):
        if getattr(args, arg) is not None:
            changes[field] = getattr(args, arg)
    if args.data is not None:
        changes["generate"] = None  # a folder the user names is theirs: never generate into it
    budget = dataclasses.asdict(experiment.budget)
    if args.smoke:
        budget.update(trials=2, max_epochs=1)
        changes["image_size_px"] = min(experiment.image_size_px, SMOKE_SIZE_PX)
        changes["resources"] = type(experiment.resources)(
            workers=1, cpus_per_worker=1, gpus_per_worker=experiment.resources.gpus_per_worker)
    if args.trials is not None:
        budget["trials"] = args.trials
    if args.max_epochs is not None:
        budget["max_epochs"] = args.max_epochs
    if args.time_budget is not None:
        budget["time"] = parse_duration("--time-budget", args.time_budget)
    if args.stop_when_stalled is not None:
        budget["stop_when_stalled"] = args.stop_when_stalled
    budget["grace_period_epochs"] = min(budget["grace_period_epochs"], max(1, budget["max_epochs"]))
    changes["budget"] = type(experiment.budget)(**budget)
    return replace(experiment, **changes)


def check_folders(args: argparse.Namespace) -> None:
    """`--out` (a local one) and `--cache` must be folders this user can write, or paths where one
    can be made: checked by writing a nameless file, before anything else runs."""
    for option, value in (("--out", args.out), ("--cache", args.cache)):
        if not value or "://" in value:  # a URI's filesystem says for itself when it is reached
            continue
        path = Path(value).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            where = "it is a file" if existing == path else f"{existing} is a file"
            raise SpecError(option, value, f"a folder, or a path where one can be made ({where})")
        try:
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as err:
            raise SpecError(option, value, f"a folder you can write to ({existing}: {err.strerror})") from None


def _refuse_or_fetch(output: Output, args: argparse.Namespace) -> None:
    """Refuse an OUT that holds a search unless --resume (or --check) is given; on --resume,
    fetch the driver's files of the run being resumed."""
    if args.warm_start and args.resume:
        raise SpecError("--warm-start", args.warm_start, "a new search's option: a resumed search has its trials")
    if args.warm_start and not Path(args.warm_start).expanduser().is_dir():
        raise SpecError("--warm-start", args.warm_start, "the folder of an earlier search (its --out)")
    if (output.exists(TUNE_DIR) or output.exists(MANIFEST_FILE)) and not (args.resume or args.check):
        raise SpecError("--out", output.display(), "holds an earlier search: add --resume to continue it, "
                        "or give another --out (nothing is overwritten)")
    output.local.mkdir(parents=True, exist_ok=True)
    if args.resume:
        output.download()  # the Optuna study, the manifest and the report inputs of the run being resumed


def _cache_dir(args: argparse.Namespace) -> Path:
    return Path(args.cache).expanduser() if args.cache else data.default_cache_dir()


def _data_folder(experiment: Experiment, cache_dir: Path, prefetch: parallel.Prefetch | None = None) -> Path:
    """The experiment's data as a local folder: itself, generated on first use, or the
    up-to-date mirror of a URI (search/data/remote.py), whose downloads `prefetch` decodes as they land.
    Either is refused when its decoded images would not fit in memory: before minutes of
    decoding, and for a URI before any download."""
    if remote.is_remote(experiment.data):
        listed = remote.listing(experiment.data)
        check_count_fits(len(listed.images()), experiment.image_size_px, display_uri(experiment.data))
        with disk.writing(cache_dir):
            folder, downloaded, total = remote.mirror(listed, cache_dir, ready=prefetch.add if prefetch else None)
        print(f"Data: {display_uri(experiment.data)}, mirrored in {folder} ({downloaded} of {total} files "
              "downloaded, the others unchanged)", flush=True)
        return folder
    folder = Path(experiment.data.removeprefix("file://")).expanduser().resolve()
    if experiment.generate and not folder.exists():
        from search.data.generated import GENERATORS, ensure_generated  # PIL drawing: only when generating

        if experiment.generate not in GENERATORS:
            raise SpecError("Experiment.generate", experiment.generate, f"one of {', '.join(GENERATORS)}")
        print(f"Generating the {experiment.generate!r} data set into {folder} (first use only) ...", flush=True)
        ensure_generated(folder, experiment.generate)
    check_fits(folder, experiment.image_size_px)
    return folder


def _check_weights(experiment: Experiment) -> None:
    """Load every searched backbone's ImageNet weights once: missing ones fail here, before any trial."""
    if experiment.weights != "imagenet":
        return
    from trainables.archs import ARCHS
    from trainables.models import load_pretrained

    loaded: set[str] = set()
    for arch in (ARCHS[name] for name in experiment.space.archs()):
        if arch.weights and arch.weights not in loaded:
            load_pretrained(arch)
            loaded.add(arch.weights)


def _prepare(experiment: Experiment, args: argparse.Namespace, output: Output) -> tuple[data.ArrayData, str]:
    """Decode (or reuse) the data and write the data report; the arrays and their fingerprint.
    On --resume, refuse an experiment or data other than the ones OUT was started with."""
    cache_max_bytes = parse_size("--cache-max", args.cache_max)  # before decoding: a typo costs nothing
    with (parallel.Prefetch(experiment.image_size_px) if remote.is_remote(experiment.data)
          else contextlib.nullcontext()) as prefetch:
        folder = _data_folder(experiment, _cache_dir(args), prefetch)
        if not args.check:
            _check_weights(experiment)
        started = time.perf_counter()
        with disk.writing(_cache_dir(args)):
            cache = data.prepare(folder, experiment.image_size_px, experiment.val_fraction, experiment.seed,
                                 _cache_dir(args), progress=DecodeProgress(), prefetch=prefetch)
    count, freed_bytes = data.evict(cache.path, cache_max_bytes)
    if count:
        print(f"Freed {count} least recently used decoded caches ({freed_bytes / 1e6:.1f} MB) in {cache.path.parent} "
              f"to keep it under --cache-max {args.cache_max}", flush=True)
    arrays = data.load(cache.path, folder)
    how = "reused the decoded cache" if cache.reused else "decoded into the cache"
    print(data.summary(arrays, folder) + f"\n  ({how} {cache.path} in {time.perf_counter() - started:.1f} s)",
          flush=True)
    leaks = find_leakage(arrays)
    with disk.writing(output.display(DATA_REPORT_FILE), partial_in=output.local):
        data_report(arrays, leaks, folder).to_csv(output.local / DATA_REPORT_FILE, index=False)
    if leaks:
        print(leakage_warning(leaks), flush=True)
    data_sha = manifest.data_fingerprint(arrays)
    if args.resume:
        manifest.check_resume(manifest.read(output.local), experiment, data_sha, output.display())
    return arrays, data_sha


def _search(experiment: Experiment, args: argparse.Namespace, output: Output, arrays: data.ArrayData,
            data_sha: str, on_epoch: EpochHook | None) -> int:
    """The search on Ray, then the report and the export; returns the exit code."""
    tracking = _begin(experiment, args, output, data_sha)
    # Ray, Tune and torch's training stack load only once the inputs are known to be good.
    from search.driver import search_loop as rounds
    from search.driver import tune_setup as tuning
    from search.driver.ray_cluster import start_ray, watching_ray

    dashboard = start_ray(args.address)
    terminate_as_interrupt()  # ray.init's own handler would end a SIGTERM during the export silently
    if dashboard:
        print(f"Ray dashboard: http://{dashboard}", flush=True)

    def ray_died(what: str) -> None:
        # Ray ends this process from C++ soon after (its plasma connection breaks), so the
        # command ends here, as a SIGKILL of the driver would: what is saved is resumable.
        # Straight to the file descriptor: Ray or Tune may have wrapped sys.stderr in a writer that
        # os._exit would not wait for.
        os.write(2, f"error: Ray stopped under the search: {what}. The search is saved; continue it with: "
                    f"{resume_command(args)}\n".encode())
        os._exit(EXIT_RAY_DIED)

    with watching_ray(ray_died):
        the_plan = tuning.plan(experiment, autoscaling=args.address is not None)
        path_line = versions.path_line()
        if path_line:
            print(path_line, flush=True)
        print(f"Searching {experiment.budget.trials} trials, {the_plan.concurrency} at a time, on "
              f"{the_plan.cluster_cpus:g} CPUs and {the_plan.cluster_gpus:g} GPUs; results in {output.display()}",
              flush=True)
        started = time.perf_counter()
        spent_s = manifest.spent_seconds(output.local) if args.resume else 0.0
        with GracefulStop() as stop:
            outcome = rounds.search(experiment, output, arrays, the_plan, resume=args.resume, on_epoch=on_epoch,
                                    stopped=lambda: stop.signum is not None, spent_s=spent_s,
                                    warm_start=Path(args.warm_start).expanduser() if args.warm_start else None,
                                    data_key=data_sha, callbacks=[tracking.callback()] if tracking else [])
        ran = Searched(outcome, stop, started, time.perf_counter() - started, spent_s, the_plan.concurrency)
        return _end(experiment, args, output, arrays, data_sha, ran, tracking)


def _begin(experiment: Experiment, args: argparse.Namespace, output: Output, data_sha: str) -> Any:
    """Before Ray: the MLflow tracking (or None), the manifest saying the search runs, the experiment as run."""
    out, tracking = output.local, None
    if args.mlflow or (args.resume and (out / TRACKING_FILE).is_file()):
        from search.tracking import open_tracking

        tracking = open_tracking(args.mlflow, experiment, out, output.display(), args.resume)
    with disk.writing(output.display(), partial_in=out):
        manifest.write(out, experiment, data_sha, "running")
        (out / EXPERIMENT_FILE).write_text(repr(experiment) + "\n")
    output.upload()
    return tracking


@dataclasses.dataclass(frozen=True)
class Searched:
    """What the search's rounds gave (`search.driver.search_loop.Outcome`), the signal that
    stopped them if one did, and their times."""

    outcome: Any
    stop: GracefulStop
    started: float  # time.perf_counter() when the search began
    wall_s: float
    spent_before_s: float  # search time of the earlier runs of this search (a --resume)
    concurrency: int

    @property
    def interrupted(self) -> bool:
        return self.stop.signum is not None or self.outcome.disk_full is not None


def _end(experiment: Experiment, args: argparse.Namespace, output: Output, arrays: data.ArrayData, data_sha: str,
         ran: Searched, tracking: Any) -> int:
    """After the search: the report and the export of what finished, the manifest, MLflow's
    end, and the line and exit code that say how it ended."""
    from search.driver import tune_setup as tuning
    from search.finish import finish

    out, outcome = output.local, ran.outcome
    if outcome.ended_by:
        print(f"Search ended early: {outcome.ended_by}", flush=True)
    if not ran.interrupted:
        tuning.end_unfinished_trials(experiment, output)
    spent_s = ran.spent_before_s + ran.wall_s
    report_error = None
    try:
        with disk.writing(output.display(), partial_in=out):
            summary = finish(outcome.grids, experiment, arrays, output,
                             finished=tuning.finished_trial_ids(experiment, output) if ran.interrupted else None,
                             concurrency=ran.concurrency, search_wall_s=ran.wall_s, ended_by=outcome.ended_by,
                             budget_stopped=outcome.budget_stopped)
            summary["wall_time_s"] = round(time.perf_counter() - ran.started, 1)
            (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            manifest.write(out, experiment, data_sha, "interrupted" if ran.interrupted else "finished",
                           spent_s=spent_s)
        output.upload()
    except disk.DiskFull as err:
        report_error = err
        with contextlib.suppress(OSError):  # a few bytes: they may fit where the report did not
            manifest.write(out, experiment, data_sha, "interrupted", spent_s=spent_s)
    if tracking is not None:
        from search.tracking import finish as finish_tracking

        finish_tracking(tracking, out, summary if report_error is None else {},
                        ran.interrupted or report_error is not None)
    if outcome.disk_full or report_error:
        line = disk.stopped_message(outcome.disk_full or report_error, report_error, experiment, output,
                                    resume_command(args))
        print(f"error: {line}", file=sys.stderr, flush=True)
        return EXIT_DISK_FULL
    if ran.interrupted:
        print(f"Interrupted: the search is saved; continue it with: {resume_command(args)}",
              file=sys.stderr, flush=True)
        return ran.stop.exit_code
    return 0


def resume_command(args: argparse.Namespace) -> str:
    """What continues a search started with `args`: the command (its options kept, --resume added),
    or the Python call `search.api` put in `args.resume_hint`."""
    hint = getattr(args, "resume_hint", None)
    if hint:
        return hint
    return shlex.join(["python", "-m", "search.run", *[a for a in args.argv if a != "--resume"], "--resume"])


def main(argv: list[str] | None = None, *, on_epoch: EpochHook | None = None) -> int:
    """The CLI; `on_epoch` (for tests and drills) runs in every trial's worker after each epoch."""
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    with terminate_interrupts():
        return _main(args, on_epoch)


@dataclasses.dataclass(frozen=True)
class Ran:
    """How a run ended: its exit code (the CLI's), and where its search folder is (None when it
    ended before OUT was known)."""

    code: int
    output: Output | None
    experiment: Experiment | None


class UnsupportedRay(RuntimeError):
    """The installed Ray is outside the range this service runs on; the message says what to install."""


def _main(args: argparse.Namespace, on_epoch: EpochHook | None) -> int:
    """`execute`, with a user's mistake as one line on stderr and its exit code."""
    try:
        return execute(args, on_epoch).code
    except (*USER_ERRORS, UnsupportedRay) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except disk.DiskFull as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DISK_FULL


def execute(args: argparse.Namespace, on_epoch: EpochHook | None = None,
            experiment: Experiment | None = None) -> Ran:
    """The command `args` describe (`experiment`: the Experiment itself, instead of loading
    `args.experiment`'s file). A user's mistake (`USER_ERRORS`, `UnsupportedRay`) and a full disk
    before the search raise; an interruption returns its exit code (130, 143), as the search's
    own end does (0, or 74 for a full disk: `_search`)."""
    output = None
    try:
        check_folders(args)
        unsupported = versions.unsupported()
        if unsupported:
            raise UnsupportedRay(unsupported)
        if args.address:  # a cluster that does not answer costs seconds, not a decoded data set
            check_address(args.address)
        if args.mlflow:  # a wrong URI costs seconds, not a decoded data set
            from search.tracking import check

            check(args.mlflow)
        loaded = experiment if experiment is not None else load_experiment(args.experiment)
        experiment, note = without_random_frozen_backbones(apply_overrides(loaded, args))
        if note:
            print(note, flush=True)
        output = open_output(args.out or str(Path("results") / experiment.name), _cache_dir(args))
        with disk.writing(output.display()), manifest.hold(output.local, output.display()), lease.hold(output):
            _refuse_or_fetch(output, args)
            arrays, data_sha = _prepare(experiment, args, output)
            low_space = None if output.remote else disk.low_space_warning(experiment, output.local)
            if low_space:
                print(low_space, file=sys.stderr, flush=True)
            if args.check:
                output.upload()
                return Ran(0, output, experiment)
            return Ran(_search(experiment, args, output, arrays, data_sha, on_epoch), output, experiment)
    except KeyboardInterrupt as interrupt:  # a second signal, or one outside the search (decoding, export)
        # A search that started can be resumed from wherever it stopped (the kill drills).
        started = output is not None and (output.local / MANIFEST_FILE).is_file()
        print(f"Interrupted; continue it with: {resume_command(args)}" if started else "Interrupted.",
              file=sys.stderr, flush=True)
        return Ran(exit_code(interrupt), output if started else None, experiment)


if __name__ == "__main__":
    sys.exit(main())
