"""Where a search's time goes: our search, a bare Ray trial and a plain Optuna loop, side by side.

`python -m bench --cases overhead` runs, on the same generated data and machine:
- our search (`search.run.main`, a local Ray of its own): per-trial start-up, per-epoch
  hand-over (Tune's time between two reports minus the epoch's own training), checkpoint
  bytes per epoch, and the useful fraction: the trials' `train_time_s` over wall x concurrency;
- "naive: bare Ray": Tune trials that each run an empty TorchTrainer loop (no data, no model):
  what Ray itself costs a trial on this machine;
- the plain in-process Optuna loop a user could write instead: the same space, TPE, successive
  halving with the same grace period and reduction factor, the recipes first, each trial
  calling `trainables.loop.fit` on the same decoded arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.measure import CPUS
from bench.records import Record
from search import run
from search.driver.ray_cluster import LOCAL_RAY_ENV
from search.experiment.space import hparams, recipe_points, space_function, without_random_frozen_backbones
from search.experiment.spec import Budget, Experiment, load_experiment
from search.trial.settings import REPORT_S_KEY
from trainables import data
from trainables.loop import fit

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.py"
HANDOVER_EPOCHS_FROM = 2  # the first epoch's time also holds the trial's start
CPU = torch.device("cpu")


def overhead_experiment(root: Path, quick: bool) -> Experiment:
    """The quickstart's space on the generated data: 8 trials of up to 8 epochs (the issue's
    measure), or with --quick 4 small-CNN trials of 3 epochs at 32 px."""
    quickstart = load_experiment(QUICKSTART)
    if not quick:
        return dataclasses.replace(quickstart, data=str(root.resolve()), generate=None,
                                   budget=dataclasses.replace(quickstart.budget, trials=8, max_epochs=8))
    space = dataclasses.replace(quickstart.space, arch="small_cnn")
    recipes = tuple(r for r in quickstart.recipes if r.get("arch") == "small_cnn")
    return dataclasses.replace(quickstart, data=str(root.resolve()), generate=None, image_size_px=32, space=space,
                               recipes=recipes, budget=Budget(trials=4, max_epochs=3, grace_period_epochs=1))


def _epoch_results(out: Path) -> list[list[dict[str, Any]]]:
    """Every trial's reports as Tune received them (tune/*/result.json), in order."""
    trials = []
    for path in sorted(out.glob("tune/run_trial_*/result.json")):
        trials.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return trials


def _handover_s(trials: list[list[dict[str, Any]]]) -> list[float]:
    """Per epoch after the first: Tune's time between two reports minus the epoch's training."""
    gaps = []
    for results in trials:
        for before, after in zip(results, results[1:]):
            if after.get("epoch", 0) >= HANDOVER_EPOCHS_FROM and "time_this_iter_s" in after:
                gaps.append(after["time_this_iter_s"] - (after["train_time_s"] - before["train_time_s"]))
    return gaps


def _report_s(trials: list[list[dict[str, Any]]]) -> list[float]:
    """Per epoch: the seconds its worker spent on the report (writing the checkpoint, handing it
    over), from the running total each report carries (`search.trial.settings.REPORT_S_KEY`)."""
    costs = []
    for results in trials:
        for before, after in zip(results, results[1:]):
            if REPORT_S_KEY in before and REPORT_S_KEY in after:
                costs.append(after[REPORT_S_KEY] - before[REPORT_S_KEY])
    return costs


def _checkpoint_bytes(out: Path) -> list[int]:
    """The size of every checkpoint folder left in OUT/train (each holds one epoch's state)."""
    return [sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) for folder in out.glob("train/*/epoch-*")]


def run_search(experiment: Experiment, folder: Path, cache_dir: Path) -> tuple[Path, int]:
    """`search.run.main` on `experiment` (written to `folder`/experiment.py) in a local Ray of its
    own on every core, without the dashboard (the lent GPU machine lacks its packages; the
    service frees stopped trials' workers without it); its OUT and how many trials ran at once."""
    import ray

    folder.mkdir(parents=True, exist_ok=True)
    file, out = folder / "experiment.py", folder / "out"
    file.write_text(f"from search.experiment.spec import *\n\nexperiment = {experiment!r}\n")
    with contextlib.redirect_stdout(sys.stderr):
        ray.init(address="local", num_cpus=CPUS, include_dashboard=False, configure_logging=False,
                 log_to_driver=False, runtime_env={"env_vars": LOCAL_RAY_ENV})
        try:
            from search.driver.tune_setup import resolve

            concurrency = resolve(experiment, ray.cluster_resources()).concurrency
            exit_code = run.main([str(file), "--out", str(out), "--cache", str(cache_dir)])
        finally:
            ray.shutdown()
    if exit_code != 0:
        raise RuntimeError(f"the search {experiment.name} failed (exit code {exit_code}); its output is above")
    return out, concurrency


def our_search(experiment: Experiment, work: Path, cache_dir: Path) -> Record:
    """Our search through `search.run.main` on a local Ray, measured from what it stored."""
    out, concurrency = run_search(experiment, work / "overhead", cache_dir)
    report = pd.read_csv(out / "report.csv")
    summary = json.loads((out / "summary.json").read_text())
    # The command's wall (the finish included: serving measurements, export, report) and the
    # search's alone (Tune's trials, what the plain loop does): issue 12's ratio is the search's.
    wall_s, search_s = summary["wall_time_s"], summary["time"]["slot_s"] / concurrency
    train_s = float(report["train_time_s"].fillna(0).sum())
    epochs = _epoch_results(out)
    handover, reports, checkpoints = _handover_s(epochs), _report_s(epochs), _checkpoint_bytes(out)
    trials = len(report)
    return {"case": "overhead: our search (Tune + Train per trial)", "arch": None, "size_px": experiment.image_size_px,
            "seconds": wall_s, "trials": trials, "concurrency": concurrency, "train_time_s": train_s,
            "useful_fraction": train_s / (wall_s * concurrency),
            "overhead_per_trial_s": (wall_s * concurrency - train_s) / trials,
            "search_wall_s": search_s, "search_useful_fraction": train_s / (search_s * concurrency),
            "search_overhead_per_trial_s": (search_s * concurrency - train_s) / trials,
            "startup_s_median": statistics.median(report["startup_s"].dropna()),
            "handover_s_median": statistics.median(handover) if handover else None,
            "report_s_median": statistics.median(reports) if reports else None,
            "report_s_max": max(reports) if reports else None,
            "checkpoint_mb_per_epoch": statistics.median(checkpoints) / 1e6 if checkpoints else None,
            "best_val_acc": float(report["val_acc"].max()), "epochs_run": int(report["epochs"].sum())}


def _empty_trial(config: dict[str, Any]) -> None:
    """A Tune trial that runs an empty TorchTrainer loop: Ray's own cost of a trial."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    started = time.time()

    def loop(cfg: dict[str, Any]) -> None:
        ray.train.report({"startup_s": time.time() - cfg["started"]})

    TorchTrainer(loop, train_loop_config={"started": started},
                 scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=ray.train.RunConfig(name=f"empty-{tune.get_context().get_trial_id()}",
                                                storage_path=config["storage"],
                                                callbacks=[TuneReportCallback()])).fit()


def bare_ray(trials: int, work: Path) -> Record:
    """Tune trials of an empty TorchTrainer loop, as many at once as our search runs."""
    import ray
    from ray import tune

    from search.driver.placement_groups import PlacementGroupReaper

    with contextlib.redirect_stdout(sys.stderr):
        ray.init(address="local", num_cpus=CPUS, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        try:
            started = time.perf_counter()
            grid = tune.Tuner(
                tune.with_resources(_empty_trial, {"CPU": 0, "memory": 256 * 1024**2}),
                param_space={"storage": str(work / "bare_ray")},
                tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=CPUS),
                run_config=tune.RunConfig(storage_path=str(work / "bare_ray"), name="tune", verbose=0,
                                          callbacks=[PlacementGroupReaper()])).fit()
            wall_s = time.perf_counter() - started
        finally:
            ray.shutdown()
    startup = [r.metrics["startup_s"] for r in grid if r.metrics and "startup_s" in r.metrics]
    return {"case": "naive: bare Ray trial (empty TorchTrainer loop), start-up", "arch": None, "size_px": 0,
            "seconds": statistics.median(startup), "trials": len(startup), "wall_s": wall_s,
            "startup_s": startup}


def optuna_loop(experiment: Experiment, arrays: data.ArrayData, batch: int = 1, constant_liar: bool = False,
                device: torch.device = CPU) -> tuple[Any, float]:
    """The experiment's space searched by Optuna in this process, no Ray: TPE as the service
    configures it, successive halving as ASHA's rungs, the recipes first, every trial trained on
    `device`. `batch` trials are asked before any is told, as `batch` trials at once would be;
    returns (study, wall seconds)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = experiment.budget
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=experiment.seed, multivariate=True, group=True,
                                             n_startup_trials=max(2, min(10, budget.trials // 3)),
                                             constant_liar=constant_liar)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=budget.grace_period_epochs,
                                                    reduction_factor=budget.reduction_factor)
    study = optuna.create_study(direction="maximize" if experiment.mode == "max" else "minimize",
                                sampler=sampler, pruner=pruner)
    for point in recipe_points(experiment):
        study.enqueue_trial(point)
    define = space_function(experiment.space)

    def evaluate(trial: optuna.Trial, constants: dict[str, Any]) -> float:
        hp = hparams({**trial.params, **constants}, experiment.weights)
        values: list[float] = []

        def report(metrics: dict[str, float], state: dict[str, Any]) -> None:
            values.append(metrics[experiment.objective])
            trial.report(metrics[experiment.objective], metrics["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        with contextlib.suppress(optuna.TrialPruned):  # pruned: its best epoch still counts, as ASHA's
            fit(hp, arrays, budget.max_epochs, report, seed=experiment.seed, device=device)
        return max(values) if experiment.mode == "max" else min(values)

    started = time.perf_counter()
    while len(study.trials) < budget.trials:
        asked = [study.ask() for _ in range(min(batch, budget.trials - len(study.trials)))]
        proposals = [(trial, define(trial)) for trial in asked]
        for trial, constants in proposals:
            study.tell(trial, evaluate(trial, constants))
    return study, time.perf_counter() - started


def plain_optuna(experiment: Experiment, arrays: data.ArrayData, device: torch.device) -> Record:
    """The plain in-process Optuna loop a user could write instead of our search, on the device ours trains on."""
    study, wall_s = optuna_loop(experiment, arrays, device=device)
    return {"case": "plain Optuna loop in one process (no Ray), same space and budget", "arch": None,
            "device": device.type, "size_px": experiment.image_size_px, "seconds": wall_s, "trials": len(study.trials),
            "best_val_acc": study.best_value}


def liar_cases(root: Path, quick: bool, cache_dir: Path, seeds: int = 3) -> list[Record]:
    """TPE proposing 2 trials at once, with and without constant_liar, for `seeds` seeds: the
    best value each reaches and the trial that first reached it (median over seeds)."""
    base, _ = without_random_frozen_backbones(overhead_experiment(root, quick))
    cache = data.prepare(root.resolve(), base.image_size_px, base.val_fraction, base.seed, cache_dir)
    arrays = data.load(cache.path)
    records = []
    for liar in (False, True):
        best, reached, walls = [], [], []
        for seed in range(seeds):
            study, wall_s = optuna_loop(dataclasses.replace(base, seed=seed), arrays, batch=2, constant_liar=liar)
            values = [t.value for t in study.trials]
            best.append(max(values))
            reached.append(1 + values.index(max(values)))
            walls.append(wall_s)
        records.append({"case": f"TPE, 2 trials at once, constant_liar={liar}", "arch": None,
                        "size_px": base.image_size_px, "seconds": statistics.median(walls), "seeds": seeds,
                        "best_val_acc_median": statistics.median(best), "best_val_acc": best,
                        "trials_to_best_median": statistics.median(reached), "trials_to_best": reached})
        print(f"  constant_liar={liar}: best val_acc {best} (median {statistics.median(best):.3f}), reached at "
              f"trial {reached}", file=sys.stderr, flush=True)
    return records


def overhead_cases(root: Path, quick: bool, cache_dir: Path, work: Path, device: torch.device) -> list[Record]:
    """Our search, a bare Ray trial and the plain Optuna loop on the same data, one run."""
    experiment, note = without_random_frozen_backbones(overhead_experiment(root, quick))
    if note:
        print(f"  {note}", file=sys.stderr)
    cache = data.prepare(root.resolve(), experiment.image_size_px, experiment.val_fraction, experiment.seed, cache_dir)
    ours = our_search(experiment, work, cache_dir)
    naive = bare_ray(ours["trials"], work)
    plain = plain_optuna(experiment, data.load(cache.path), device)
    ours["ratio_vs_plain_optuna"] = ours["seconds"] / plain["seconds"]
    ours["search_ratio_vs_plain_optuna"] = ours["search_wall_s"] / plain["seconds"]
    ours["startup_vs_bare_ray"] = ours["startup_s_median"] / naive["seconds"]
    summary = (f"our command {ours['seconds']:.1f} s for {ours['trials']} trials ({ours['concurrency']} at once), "
               f"its search {ours['search_wall_s']:.1f} s: useful fraction {ours['useful_fraction']:.2f} "
               f"({ours['search_useful_fraction']:.2f} of the search), overhead {ours['overhead_per_trial_s']:.1f} s a "
               f"trial ({ours['search_overhead_per_trial_s']:.1f} in the search), "
               f"start-up median {ours['startup_s_median']:.1f} s (bare Ray {naive['seconds']:.1f} s), hand-over "
               f"{ours['handover_s_median'] or float('nan'):.2f} s an epoch (the worker's report "
               f"{ours['report_s_median'] or float('nan'):.3f} s, at most {ours['report_s_max'] or float('nan'):.3f}), "
               f"checkpoints "
               f"{ours['checkpoint_mb_per_epoch'] or float('nan'):.2f} MB an epoch; the plain Optuna loop "
               f"{plain['seconds']:.1f} s (ours {ours['ratio_vs_plain_optuna']:.1f}x it, our search "
               f"{ours['search_ratio_vs_plain_optuna']:.1f}x it), best val_acc "
               f"{plain['best_val_acc']:.3f} vs ours {ours['best_val_acc']:.3f}")
    print(f"  {summary}", file=sys.stderr, flush=True)
    ours["note"] = summary
    from bench.frozen_heads import frozen_cases  # it builds on this module's search and loop

    return [ours, naive, plain, *frozen_cases(root, quick, cache_dir, work, device)]
