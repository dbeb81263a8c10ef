"""The GPU issue's cases of `python -m bench`: the frozen-feature cache, several trials
sharing one device, and a trial's start-up under Ray.

Each returns records like the data and training cases: "case", "images_per_s" (the fastest
round) and "baseline" and "ratio_vs_baseline" (the case each is compared with). The start-up
record has seconds instead ("seconds" the median trial's, "seconds_min", "seconds_max",
"startup_s" each trial's).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from bench.measure import CPUS, HP, VAL_FRACTION, Measure, fixed_batch, interleaved, timed, train_measure
from bench.records import Record, record, vs_baseline
from search import run
from search.data.generated import CLASSES
from search.driver.ray_cluster import LOCAL_RAY_ENV
from search.experiment.spec import Budget, Experiment, LogUniform, Resources, Space
from trainables import data
from trainables.archs import ARCHS
from trainables.hparams import HParams
from trainables.loop import cache_features, fit, normalize, to_input
from trainables.models import create_model

FEATURES_ARCH = "inception_frozen"
FEATURES_BASELINE = "features: backbone every epoch"
# The first epoch is not timed: it holds cuDNN's autotuning and, with the cache, the extraction.
FEATURE_EPOCHS = 3
SHARING_ARCH = "small_cnn"  # what `gpus_per_worker=0.25` is meant for (README, "Speed")
SHARING_BASELINE = "sharing: 1 process alone"
SHARING_START_TIMEOUT_S = 600  # a process that fails before the start must not leave the others waiting


# --- the frozen-feature cache ---------------------------------------------------------------


@contextlib.contextmanager
def stand_in_imagenet_weights(arrays: data.ArrayData, hp: HParams, device: torch.device,
                              folder: Path) -> Iterator[None]:
    """Within the block, torch hub's folder is `folder`, holding random weights for `hp.arch`'s
    backbone where its ImageNet file goes (the table's `weights_file`): `fit` then builds a frozen
    `weights="imagenet"` backbone without a download. Its batch-norm statistics are one train
    batch's: with unit statistics the features are ~1e-8 and the head's numbers would mean
    nothing (timing would not change)."""
    model = create_model(len(arrays.classes), hp, load_weights=False).to(device)
    for module in model.backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average: one pass sets the statistics
    with torch.no_grad():
        model.backbone.train()(normalize(to_input(arrays.train.images[:hp.batch_size], device)))
    state = {key: value.cpu() for key, value in model.backbone.state_dict().items()}
    target = folder / "hub" / "checkpoints" / ARCHS[hp.arch].weights_file
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    # torch.hub keeps a folder once set: restoring get_dir()'s answer would pin today's
    # TORCH_HOME for good; restoring "unset" lets TORCH_HOME decide again.
    previous = torch.hub._hub_dir
    torch.hub.set_dir(str(folder / "hub"))
    try:
        yield
    finally:
        torch.hub._hub_dir = previous


def features_cases(root: Path, size_px: int, device: torch.device, batch_size: int, cache_dir: Path,
                   work: Path, rounds: int) -> list[Record]:
    """`inception_frozen` (ImageNet layout, no augmentation) trained by `trainables.loop.fit`: an
    epoch that runs the backbone, an epoch on the cached features (head only), and the one-off
    extraction (`cache_features`). Images: every train and val image an epoch or the extraction
    goes through; epoch seconds as `fit` counts them (`train_time_s`: training and validation)."""
    arrays = data.load(data.prepare(root, size_px, VAL_FRACTION, 0, cache_dir).path)
    hp = HP.replace(arch=FEATURES_ARCH, weights="imagenet", augment=0.0, batch_size=batch_size)
    images = len(arrays.train.labels) + len(arrays.val.labels)

    def epochs(feature_cache: bool) -> Measure:
        def measure(round_: int) -> tuple[int, float]:
            times: list[float] = []
            fit(hp, arrays, FEATURE_EPOCHS, lambda metrics, _: times.append(metrics["train_time_s"]), device=device,
                feature_cache=feature_cache)
            return images * (len(times) - 1), times[-1] - times[0]
        return measure

    def extraction(round_: int) -> tuple[int, float]:
        model = create_model(len(arrays.classes), hp).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)  # as fit trains it

        def extract() -> int:
            cache_features(model, arrays, hp, device, seed=0)
            return images
        return timed(device, extract)

    measures: dict[str, Measure] = {
        FEATURES_BASELINE: epochs(feature_cache=False),
        "features: cached, head only": epochs(feature_cache=True),
        "features: extraction (once)": extraction,
    }
    with stand_in_imagenet_weights(arrays, hp, device, work / "torch_home"):
        results = interleaved(measures, rounds)
    common = {"arch": FEATURES_ARCH, "device": device.type, "size_px": size_px, "batch_size": batch_size}
    return vs_baseline([record(case, rounds_, **common) for case, rounds_ in results.items()], FEATURES_BASELINE)


# --- several trials sharing one device --------------------------------------------------------


@dataclass(frozen=True)
class SharingTask:
    """What each of `processes` concurrent processes runs: `steps` training steps on a fixed batch."""

    processes: int
    size_px: int
    batch_size: int
    steps: int
    device: str


_BARRIERS: dict[int, Any] = {}  # in each worker process: one start barrier per number of processes


def _keep_barriers(barriers: dict[int, Any]) -> None:
    _BARRIERS.update(barriers)


def _sharing_steps(task: SharingTask) -> tuple[int, float, float]:
    """In a worker: warm up, wait for the others, time the steps; (images, start, end) on the
    system-wide monotonic clock, so that the parent can take the span of all processes."""
    # Together the processes use every core, as trials with their share of a machine's CPUs would.
    torch.set_num_threads(max(1, CPUS // task.processes))
    device = torch.device(task.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    batch = fixed_batch(task.batch_size, task.size_px, len(CLASSES), device)
    measure = train_measure(SHARING_ARCH, len(CLASSES), device, True, task.steps, lambda: itertools.repeat(batch),
                            ready=lambda: _BARRIERS[task.processes].wait(SHARING_START_TIMEOUT_S))
    images, seconds = measure(0)
    ended = time.monotonic()
    return images, ended - seconds, ended


def sharing_cases(size_px: int, device: torch.device, batch_size: int, steps: int, processes: int,
                  rounds: int) -> list[Record]:
    """Total images/s of `small_cnn` training steps (inputs already on the device, as the
    model-only case) in 1 process alone and in `processes` processes at once on one device:
    what trials with `gpus_per_worker=1/processes` gain from sharing a GPU."""
    context = multiprocessing.get_context("spawn")  # a forked child cannot use CUDA
    barriers = {count: context.Barrier(count) for count in (1, processes)}
    # Started once, outside the timing: a task blocked at its barrier holds its worker, so the
    # tasks of one round land on as many distinct workers.
    with context.Pool(processes, initializer=_keep_barriers, initargs=(barriers,)) as pool:
        def at_once(count: int) -> Measure:
            task = SharingTask(count, size_px, batch_size, steps, device.type)

            def measure(round_: int) -> tuple[int, float]:
                done = pool.map(_sharing_steps, [task] * count, chunksize=1)
                return sum(d[0] for d in done), max(d[2] for d in done) - min(d[1] for d in done)
            return measure

        results = interleaved({SHARING_BASELINE: at_once(1), f"sharing: {processes} processes at once":
                               at_once(processes)}, rounds)
    note = {} if device.type == "cuda" else {"note": "sharing on a CPU: the processes split the same cores, so "
                                                     "expect about 1x or below; the figure that matters is a GPU's"}
    records = [record(case, rounds_, arch=SHARING_ARCH, device=device.type, size_px=size_px, batch_size=batch_size,
                      processes=count, threads_per_process=max(1, CPUS // count), steps_per_process=steps, **note)
               for (case, rounds_), count in zip(results.items(), (1, processes))]
    return vs_baseline(records, SHARING_BASELINE)


# --- a trial's start-up under Ray ---------------------------------------------------------------


def startup_experiment(root: Path, trials: int, at_once: int, device: torch.device) -> Experiment:
    """A tiny search of 1-epoch `small_cnn` trials, `at_once` sharing the GPU when there is one."""
    gpus = 0.0 if device.type == "cpu" else math.floor(100 / at_once) / 100
    return Experiment(
        name="startup", data=str(root.resolve()), image_size_px=32, weights="none",
        space=Space(arch=SHARING_ARCH, cnn_width=8, cnn_depth=2, batch_size=16, augment=0.0, dropout=0.0,
                    optimizer="adam", lr={"adam": LogUniform(1e-3, 1e-2)}),
        budget=Budget(trials=trials, max_epochs=1), resources=Resources(cpus_per_worker=1, gpus_per_worker=gpus))


def startup_cases(root: Path, device: torch.device, trials: int, cache_dir: Path, work: Path) -> list[Record]:
    """A real search through `search.run.main` on a local Ray of our own (no dashboard): each
    trial's `startup_s` from OUT/report.csv, the time from its driver's start to its worker
    being about to train (Ray Train's job, worker and process group included)."""
    # Here, not above: Ray takes seconds to import and only this case uses it; the other cases,
    # and `import bench`, stay free of Ray (a test checks it).
    import ray

    at_once = max(1, min(trials, CPUS))
    experiment = startup_experiment(root, trials, at_once, device)
    file, out = work / "startup_experiment.py", work / "startup_out"
    file.write_text(f"from search.experiment.spec import *\n\nexperiment = {experiment!r}\n")
    with contextlib.redirect_stdout(sys.stderr):  # Ray's and Tune's messages; stdout is the table
        started = time.perf_counter()
        ray.init(address="local", num_cpus=at_once, include_dashboard=False, configure_logging=False,
                 log_to_driver=False, runtime_env={"env_vars": LOCAL_RAY_ENV})
        ray_start_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            exit_code = run.main([str(file), "--out", str(out), "--cache", str(cache_dir)])
            search_s = time.perf_counter() - started
        finally:
            ray.shutdown()
    if exit_code != 0:
        raise RuntimeError(f"the start-up search failed (exit code {exit_code}); its output is above")
    startup_s = pd.read_csv(out / "report.csv")["startup_s"].dropna().tolist()
    if not startup_s:
        raise RuntimeError(f"no trial of the start-up search reported startup_s: see {out / 'report.csv'}")
    median = statistics.median(startup_s)
    note = (f"startup_s of {len(startup_s)} trials ({at_once} at once): median {median:.2f} s, min "
            f"{min(startup_s):.2f} s, max {max(startup_s):.2f} s; Ray started in {ray_start_s:.1f} s, "
            f"the search took {search_s:.1f} s")
    print(f"  {note}", file=sys.stderr, flush=True)
    return [{"case": "startup: trial start to first batch (startup_s)", "arch": SHARING_ARCH, "device": device.type,
             "size_px": experiment.image_size_px, "batch_size": experiment.space.batch_size, "trials": len(startup_s),
             "trials_at_once": at_once, "seconds": median, "seconds_min": min(startup_s),
             "seconds_max": max(startup_s), "startup_s": startup_s, "ray_start_s": ray_start_s,
             "search_s": search_s, "note": note}]
