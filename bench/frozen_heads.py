"""Frozen Inception heads, our search against the plain in-process Optuna loop, side by side.

Part of `python -m bench --cases overhead`: 6 trials of `inception_frozen` heads (no augmentation,
a weights file in place: random stand-in weights, `bench.cases.stand_in_imagenet_weights`) at
80 px and at 299 px (`--quick`: 80 px only). Our search computes the backbone's features once
for every trial, its parts on the cores of every trial waiting for them; the plain loop runs
the backbone in every trial. The ratio is the plain loop's wall over our whole command's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch

from bench.cases import stand_in_imagenet_weights
from bench.overhead import optuna_loop, overhead_experiment, run_search
from bench.records import Record
from search.experiment.spec import Budget, Choice, Experiment, Space, Uniform
from trainables import data
from trainables.hparams import HParams

TRIALS = 6
SIZES_PX = (80, 299)


def frozen_experiment(root: Path, size_px: int) -> Experiment:
    """6 frozen Inception heads on the quickstart's data, the quickstart's budget otherwise."""
    base = overhead_experiment(root, quick=False)
    space = Space(arch="inception_frozen", head_units=Choice(0, 64, 128), augment=0.0, dropout=Uniform(0.0, 0.3),
                  optimizer="adam", batch_size=32)
    return dataclasses.replace(base, name=f"frozen{size_px}", image_size_px=size_px, weights="imagenet", space=space,
                               recipes=(), budget=dataclasses.replace(base.budget, trials=TRIALS))


def frozen_cases(root: Path, quick: bool, cache_dir: Path, work: Path, device: torch.device) -> list[Record]:
    records = []
    for size_px in SIZES_PX[:1] if quick else SIZES_PX:
        experiment = frozen_experiment(root, size_px)
        if quick:
            experiment = dataclasses.replace(experiment, budget=Budget(trials=4, max_epochs=2, grace_period_epochs=1))
        cache = data.prepare(root.resolve(), size_px, experiment.val_fraction, experiment.seed, cache_dir)
        arrays = data.load(cache.path)
        hp = HParams(arch="inception_frozen", optimizer="adam", lr=1e-3, batch_size=32, augment=0.0, dropout=0.0,
                     weights="imagenet", head_units=64)
        torch_home = work / f"torch{size_px}"
        with stand_in_imagenet_weights(arrays, hp, torch.device("cpu"), torch_home):
            previous = os.environ.get("TORCH_HOME")
            os.environ["TORCH_HOME"] = str(torch_home)  # the search's workers load the weights file from there
            try:
                out, concurrency = run_search(experiment, work / f"frozen{size_px}", cache_dir)
            finally:
                if previous is None:
                    os.environ.pop("TORCH_HOME", None)
                else:
                    os.environ["TORCH_HOME"] = previous
            study, plain_s = optuna_loop(experiment, arrays, device=device)
        summary = json.loads((out / "summary.json").read_text())
        report = pd.read_csv(out / "report.csv", dtype={"trial_id": str})
        ours_s = summary["wall_time_s"]
        computed = report["features_s"][report["features_shared"] == 0]
        note = (f"{len(report)} frozen heads at {size_px} px: our command {ours_s:.1f} s ({concurrency} at once; "
                f"features computed by {len(computed)} trial(s) side by side in {computed.max():.1f} s at most), "
                f"the plain loop {plain_s:.1f} s: ours {plain_s / ours_s:.2f}x faster; best val_acc "
                f"{report['val_acc'].max():.3f} vs {study.best_value:.3f}")
        print(f"  {note}", file=sys.stderr, flush=True)
        records += [{"case": f"overhead: {TRIALS} frozen heads, our search", "arch": "inception_frozen",
                     "size_px": size_px, "seconds": ours_s, "trials": len(report), "concurrency": concurrency,
                     "speedup_vs_plain_optuna": plain_s / ours_s, "features_s_max": float(computed.max()),
                     "best_val_acc": float(report["val_acc"].max()), "note": note},
                    {"case": f"overhead: {TRIALS} frozen heads, plain Optuna loop (backbone in every trial)",
                     "arch": "inception_frozen", "size_px": size_px, "seconds": plain_s,
                     "trials": len(study.trials), "best_val_acc": study.best_value}]
    return records
