"""What the ensemble of the top trials gives and costs (`Experiment.ensemble="auto"`), in one run.

`python -m bench.ensemble [--size-px 299] [--heads 3] [--trials 6] [--skip-search]`:

- **Serving cost.** onnxruntime CPU batch-1 p50 of one frozen Inception v3 head, of an
  ensemble of `--heads` heads sharing its backbone (what the export builds for the
  tutorials' main recipe), and of the same heads each with a backbone of its own (what sharing
  saves). Graphs with random weights in the ImageNet layout: latency does not depend on them.
- **Accuracy.** A search on the generated coats (small convnets of several widths and
  learning rates, every trial trained to the end so that several are good), through
  `search.run_search`; then the ensemble's decision (kept or not, val loss and accuracy beside
  the best trial's, on held-out val folds and in-sample), test accuracy and loss of the exported
  model, and, for the benchmark only, of the best single trial on the same test images.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from search.best.candidates import measure_model
from search.best.ensemble import NO_BACKBONE, assemble, shared_backbones
from trainables.hparams import HParams
from trainables.models import create_model

HEAD = HParams(arch="inception_frozen", optimizer="rmsprop", lr=1e-4, batch_size=32, weights="imagenet",
               head_units=128)


def serving_cases(size_px: int, heads: int) -> dict[str, Any]:
    """Batch-1 p50 (ms) of one head, `heads` heads on one backbone, and `heads` whole models."""
    models, hps = [], [HEAD.replace(head_units=64 * (i + 1)) for i in range(heads)]
    for hp in hps:
        torch.manual_seed(0)  # one weights file: equal backbones
        models.append(create_model(10, hp, load_weights=False).eval())
    shared = assemble(models, shared_backbones(models, hps), [1.0] * heads, [1.0 / heads] * heads)
    others = []
    for seed, hp in enumerate(hps):
        torch.manual_seed(seed)  # backbones that differ (partly unfrozen ones, say): onnxruntime cannot merge them
        others.append(create_model(10, hp, load_weights=False).eval())
    alone = assemble(others, [NO_BACKBONE] * heads, [1.0] * heads, [1.0 / heads] * heads)
    figures = {"single head": measure_model(models[0], size_px),
               f"{heads} heads, one shared backbone": measure_model(shared, size_px),
               f"{heads} heads, a backbone each": measure_model(alone, size_px)}
    base = figures["single head"]["batch1_p50_ms"]
    return {name: {"batch1_p50_ms": f.get("batch1_p50_ms"), "vs_single": round(f["batch1_p50_ms"] / base, 2)
                   if f.get("batch1_p50_ms") else None, "parameters": f.get("parameters"), "error": f.get("error")}
            for name, f in figures.items()}


def search_case(trials: int, folder: Path) -> dict[str, Any]:
    """A search whose trials all train to the end; the ensemble's figures and both test accuracies."""
    from search import run_search
    from search.spec import Budget, Choice, Experiment, IntRange, LogUniform, Space

    experiment = Experiment(
        name="ensemble-bench", data=str(folder / "coats"), generate="coats", image_size_px=48, weights="none",
        space=Space(arch="small_cnn", cnn_width=Choice(8, 16, 32), cnn_depth=IntRange(2, 3), augment=0.3,
                    optimizer="adam", lr={"adam": LogUniform(3e-4, 3e-3)}, batch_size=32, dropout=0.3),
        budget=Budget(trials=trials, max_epochs=6, grace_period_epochs=6), seed=0)
    result = run_search(experiment, out=folder / "out")
    meta = result.best.meta
    ensemble = meta.get("ensemble") or {}
    figures = {"status": result.status, "exported": meta["arch"], "test_acc": meta["metrics"]["test_acc"],
               "test_loss": meta["metrics"]["test_loss"], **{k: ensemble.get(k) for k in (
                   "kept", "reason", "candidates", "members", "val_loss", "single_val_loss", "val_acc",
                   "single_val_acc", "held_out_loss", "single_held_out_loss", "held_out_acc", "single_held_out_acc",
                   "seconds")}}
    if meta["arch"] == "ensemble":
        figures["test"] = test_figures(result.out, meta, Path(experiment.data) / "test")
    return figures


def test_figures(out: Path, meta: dict[str, Any], test: Path) -> dict[str, float]:
    """Test accuracy and loss (no test-time augmentation) of the exported ensemble and, for this
    comparison only (the search itself never shows test/ to a model but the exported one), of
    the best trial alone (calibrated by its own temperature where it is a member)."""
    from search.best.loader import load_best
    from trainables.data import decode
    from trainables.folders import is_image_file
    from trainables.loop import predict_logits
    from trainables.state import restore_model

    size = int(meta["preprocess"]["resize"][0])
    files = [(p, i) for i, name in enumerate(meta["classes"]) for p in sorted((test / name).iterdir())
             if is_image_file(p)]
    images = np.stack([decode(p, size) for p, _ in files])
    labels = torch.tensor([i for _, i in files])
    from search.experiment.space import hparams

    inputs = json.loads((Path(out) / "report_inputs.json").read_text())
    best = meta["selection"]["best"]["trial_id"]  # the best trial, a member or not
    config = next(t["config"] for t in inputs["trials"] if t["trial_id"] == best)
    temperature = next((m["temperature"] for m in meta["members"] if m["trial_id"] == best), 1.0)
    folder = next((Path(out) / "train" / f"train-{best}").glob("epoch-*"))
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    single = restore_model(len(meta["classes"]), hparams(config, "none"), state)
    cpu = torch.device("cpu")
    logits = {"ensemble": predict_logits(load_best(out, "cpu").model, images, cpu) / meta["temperature"],
              "best trial": predict_logits(single, images, cpu) / temperature}
    return {f"{name} {what}": round(value, 4) for name, z in logits.items() for what, value in (
        ("test_acc", float((z.argmax(1) == labels).float().mean())), ("test_loss", float(F.cross_entropy(z, labels))))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-px", type=int, default=299)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"serving": serving_cases(args.size_px, args.heads)}
    print(json.dumps(results, indent=1), flush=True)
    if not args.skip_search:
        with tempfile.TemporaryDirectory(prefix="ensemble-bench-") as folder:
            results["search"] = search_case(args.trials, Path(folder))
    if "search" in results:
        print(json.dumps(results["search"], indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
