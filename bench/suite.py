"""The GPU suite's bookkeeping and its search step: what `bash bench/gpu_suite.sh` calls.

    python -m bench.suite begin --out OUT --device cuda|cpu [--quick] [--commit C] [--wheels TEXT]
    python -m bench.suite step --out OUT --name NAME --command TEXT --limit-s S --started T --ended T
                               --exit-code N --log-from BYTES
    python -m bench.suite search asha|full --out OUT --work WORK --device cuda|cpu [--quick]
    python -m bench.suite finish --out OUT

`OUT/suite.json` holds the machine, every step (seconds, exit code, the end of its log) and the
two searches' figures; `finish` adds the CUDA tests' counts and writes `OUT/gpu-results.json`,
every record of the run with the device as torch names it (issue 13: commit it as
`bench/gpu-results.json`). Torch, Ray and the search load only in the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

if TYPE_CHECKING:
    from search.experiment.spec import Experiment

# The files the suite leaves in OUT (the device tool brings back at most 8); gpu_suite.sh names the same.
SUITE_FILE = "suite.json"
LOG_FILE = "suite.log"
JUNIT_FILE = "gpu-tests.xml"
BENCH_FILES = ("bench.json", "bench-overhead.json", "bench-decode.json")
RESULTS_FILE = "gpu-results.json"
LOG_TAIL_CHARS = 3000
TIMED_OUT = (124, 137)  # timeout's exit codes: TERM at the limit, KILL after its grace
SEARCH_MODES = ("asha", "full")

# The search step's trials, pinned as recipes so that both runs train the same ones (TPE proposes
# nothing of its own while recipes last): on a GPU, half small CNNs and half Inception v3 trained
# in its top blocks, 4 at once on a quarter of the GPU each.
CNN_RECIPES = ((32, 3, 1e-3, 64), (64, 4, 3e-3, 128), (32, 4, 3e-4, 128), (64, 3, 1e-2, 64))  # width, depth, lr, batch
INCEPTION_RECIPES = ((1, 1e-3, 64), (2, 3e-4, 128), (3, 1e-3, 128), (2, 3e-3, 64))  # unfrozen blocks, lr, batch
GPU_SEARCH = {"images": 4000, "size_px": 299, "max_epochs": 3}
QUICK_SEARCH = {"images": 64, "size_px": 32, "max_epochs": 2}


def read(out: Path) -> dict[str, Any]:
    path = out / SUITE_FILE
    return json.loads(path.read_text()) if path.exists() else {"steps": [], "search": {}}


def write(out: Path, suite: dict[str, Any]) -> None:
    tmp = out / f"{SUITE_FILE}.tmp"
    tmp.write_text(json.dumps(suite, indent=1) + "\n")
    tmp.replace(out / SUITE_FILE)  # a suite killed mid-write still leaves the last whole file


def begin(out: Path, device: str, quick: bool, commit: str, wheels: str) -> None:
    """A new suite.json: the machine as torch sees it, and no steps yet."""
    import torch

    from bench.measure import CPUS

    cuda = device == "cuda" and torch.cuda.is_available()
    write(out, {"device": torch.cuda.get_device_name() if cuda else device, "device_type": device, "quick": quick,
                "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                "cpus": CPUS, "commit": commit, "wheels": wheels,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "steps": [], "search": {}})


def step(out: Path, name: str, command: str, limit_s: float, seconds: float, exit_code: int, log_from: int) -> None:
    """Add one step's record to suite.json, with the end of what it wrote to suite.log."""
    with open(out / LOG_FILE, "rb") as log:
        log.seek(log_from)
        tail = log.read().decode(errors="replace")[-LOG_TAIL_CHARS:]
    suite = read(out)
    suite["steps"].append({"step": name, "command": command, "limit_s": limit_s, "seconds": round(seconds, 1),
                           "exit_code": exit_code, "timed_out": exit_code in TIMED_OUT, "log_tail": tail})
    write(out, suite)
    print(f"=== {name}: exit code {exit_code}{' (timed out)' * (exit_code in TIMED_OUT)} after {seconds:.1f} s",
          flush=True)


def search_experiment(root: Path, asha: bool, device: str, quick: bool) -> Experiment:
    """The search step's experiment: the same trials with ASHA's early stops (grace 1 epoch,
    reduction factor 2) or without any (a grace period of every epoch)."""
    from bench.measure import CPUS
    from search.experiment.spec import Budget, Choice, Experiment, IntRange, LogUniform, Resources, Space, Uniform

    size = QUICK_SEARCH if quick else GPU_SEARCH
    if quick:
        space = Space(arch="small_cnn", cnn_width=8, cnn_depth=2, batch_size=16, augment=0.0, dropout=0.0,
                      optimizer="adam", lr={"adam": LogUniform(1e-3, 3e-2)})
        recipes: tuple[dict[str, Any], ...] = ({"lr": 3e-3}, {"lr": 3e-2})
    else:
        space = Space(arch=Choice("small_cnn", "inception_partial"), unfrozen_blocks=IntRange(1, 3),
                      cnn_width=Choice(32, 64), cnn_depth=IntRange(3, 4), augment=Uniform(0.0, 0.5),
                      optimizer="adam", lr={"adam": LogUniform(1e-4, 1e-2)}, batch_size=Choice(64, 128),
                      dropout=Uniform(0.0, 0.5))
        common = {"augment": 0.3, "dropout": 0.2}
        recipes = (*({"arch": "small_cnn", "cnn_width": w, "cnn_depth": d, "lr": lr, "batch_size": b, **common}
                     for w, d, lr, b in CNN_RECIPES),
                   *({"arch": "inception_partial", "unfrozen_blocks": u, "lr": lr, "batch_size": b, **common}
                     for u, lr, b in INCEPTION_RECIPES))
    gpus = 0.25 if device == "cuda" else 0.0
    epochs = size["max_epochs"]
    return Experiment(
        name=f"gpu-suite-{'asha' if asha else 'full'}", data=str(root.resolve()), image_size_px=size["size_px"],
        weights="none", space=space, recipes=recipes,
        budget=Budget(trials=len(recipes), max_epochs=epochs, grace_period_epochs=1 if asha else epochs),
        resources=Resources(workers=1, cpus_per_worker=max(1, CPUS // 4) if gpus else 1, gpus_per_worker=gpus))


def search_data(work: Path, quick: bool) -> Path:
    """The generated 4-class JPEGs both searches train on, made once (renamed into place when whole)."""
    from bench.inputs import generate

    size = QUICK_SEARCH if quick else GPU_SEARCH
    root = work / "search-data"
    if not root.exists():
        staging = work / "search-data.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        generate(staging, size["images"], size["size_px"])
        staging.rename(root)
    return root


def search(out: Path, work: Path, mode: str, device: str, quick: bool) -> None:
    """One real search (`search.run.main` on a local Ray of its own); its figures into suite.json."""
    import pandas as pd

    from bench.overhead import run_search

    experiment = search_experiment(search_data(work, quick), mode == "asha", device, quick)
    folder = work / f"search-{mode}"
    shutil.rmtree(folder, ignore_errors=True)
    search_out, concurrency = run_search(experiment, folder, work / "cache")
    summary = json.loads((search_out / "summary.json").read_text())
    report = pd.read_csv(search_out / "report.csv")
    time_split = summary["time"]
    figures = {"case": f"search: {len(report)} trials of up to {experiment.budget.max_epochs} epochs, "
                       + ("ASHA" if mode == "asha" else "no early stopping"),
               "size_px": experiment.image_size_px, "images": len(pd.read_csv(search_out / "data_report.csv")),
               "trials": summary["trials"], "status": summary["status"], "concurrency": concurrency,
               "gpus_per_worker": experiment.resources.gpus_per_worker, "wall_time_s": summary["wall_time_s"],
               "search_wall_s": time_split["slot_s"] / concurrency, **time_split,
               "epochs_run": int(report["epochs"].sum()), "startup_s_median": float(report["startup_s"].median()),
               "best_val_acc": summary.get("best", {}).get("val_acc"),
               "best_test_acc": summary.get("best", {}).get("test_acc")}
    suite = read(out)
    suite["search"][mode] = figures
    write(out, suite)
    print(f"search {mode}: {figures['wall_time_s']:.1f} s wall, useful fraction {figures['useful_fraction']:.2f}, "
          f"{figures['epochs_run']} epochs in {figures['trials']} trials", flush=True)


def finish(out: Path) -> dict[str, Any]:
    """The CUDA tests' counts into suite.json; every record of the run into gpu-results.json."""
    suite = read(out)
    junit = out / JUNIT_FILE
    if junit.exists():
        root = ElementTree.parse(junit).getroot()
        tests = root if root.tag == "testsuite" else root.find("testsuite")
        suite["gpu_tests"] = {key: int(tests.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    searches = suite["search"]
    if set(SEARCH_MODES) <= set(searches):
        suite["asha_vs_full"] = {"wall_time": searches["asha"]["wall_time_s"] / searches["full"]["wall_time_s"],
                                 "epochs": searches["asha"]["epochs_run"] / searches["full"]["epochs_run"]}
    write(out, suite)
    records = [record for name in BENCH_FILES if (out / name).exists()
               for record in json.loads((out / name).read_text())]
    records += [searches[mode] for mode in SEARCH_MODES if mode in searches]
    device = suite.get("device", "unknown")
    for record in records:
        record["device"] = device  # as torch names it (bench's records say "cuda")
    (out / RESULTS_FILE).write_text(json.dumps(records, indent=1) + "\n")
    for entry in suite["steps"]:
        print(f"{entry['step']:<16} exit {entry['exit_code']:>3}  {entry['seconds']:>7.1f} s"
              + ("  TIMED OUT" if entry["timed_out"] else ""))
    for mode, figures in searches.items():
        print(f"search {mode:<9} {figures['wall_time_s']:>7.1f} s wall, useful fraction "
              f"{figures['useful_fraction']:.2f}, {figures['epochs_run']} epochs")
    if "gpu_tests" in suite:
        print("gpu tests: " + ", ".join(f"{value} {key}" for key, value in suite["gpu_tests"].items()))
    return suite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("begin", "step", "search", "finish"):
        commands.add_parser(name).add_argument("--out", type=Path, required=True)
    commands.choices["begin"].add_argument("--device", choices=("cuda", "cpu"), required=True)
    commands.choices["begin"].add_argument("--quick", action="store_true")
    commands.choices["begin"].add_argument("--commit", default="unknown")
    commands.choices["begin"].add_argument("--wheels", default="none")
    for flag, kind in (("--name", str), ("--limit-s", float), ("--started", float), ("--ended", float),
                       ("--exit-code", int), ("--log-from", int)):
        commands.choices["step"].add_argument(flag, type=kind, required=True)
    commands.choices["step"].add_argument("--command", dest="command_line", required=True)
    commands.choices["search"].add_argument("mode", choices=SEARCH_MODES)
    commands.choices["search"].add_argument("--work", type=Path, required=True)
    commands.choices["search"].add_argument("--device", choices=("cuda", "cpu"), required=True)
    commands.choices["search"].add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "begin":
        begin(args.out, args.device, args.quick, args.commit, args.wheels)
    elif args.command == "step":
        step(args.out, args.name, args.command_line, args.limit_s, args.ended - args.started, args.exit_code,
             args.log_from)
    elif args.command == "search":
        search(args.out, args.work, args.mode, args.device, args.quick)
    else:
        finish(args.out)


if __name__ == "__main__":
    main()
