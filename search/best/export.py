"""Writes the best trial's model as `best/`: weights, ONNX, and all a client needs to feed it.

`best/model.pt` is a plain state dict (`torch.load(..., weights_only=True)` reads it);
`best/model.onnx` the same model for ONNX Runtime and other tools (see `search.best.onnx`);
`best/meta.json` holds the classes in output order, the architecture and its hyperparameters,
the preprocessing, the metrics, the sha256 of each model file, the library versions, what the
caller adds (why this trial was selected, the top trials' serving cost: `search.finish`), and
`meta_sha256`, the sha256 of meta.json's own content, so that an edit to its classes or config
cannot pass for the export. `search.best.loader` reads it back.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.best import serving
from search.best.onnx import export_onnx
from search.state.names import BEST_DIR, META_FILE, MODEL_FILE, ONNX_FILE, json_default, write_json
from trainables.data import file_sha256
from trainables.hparams import HParams
from trainables.loop import MEAN, STD
from trainables.models import create_model

META_DIGEST = "meta_sha256"  # meta.json's field holding the sha256 of the rest of it
ENSEMBLE = "ensemble"  # meta.json's "arch" of an exported ensemble (search.best.ensemble)


def build_model(classes: list[str] | tuple[str, ...], hp: HParams, weights: dict[str, Any]) -> nn.Module:
    """The architecture `hp` describes, with these trained weights, in eval mode on the CPU.

    Raises ValueError naming the first weight that does not fit, above all a final layer whose
    outputs are not one per class (load_state_dict's own error is a traceback listing keys).
    """
    # The state dict carries every weight, so never fetch pretrained ones just to overwrite
    # them; the layout they imply (Inception's [-1, 1] input scaling) is kept.
    model = create_model(len(classes), hp, load_weights=False)
    problem = _misfit(model.state_dict(), weights, len(classes), hp.arch)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(weights)
    return model.eval()


def build_exported(meta: dict[str, Any], weights: dict[str, Any]) -> nn.Module:
    """The model meta.json describes, with these weights, in eval mode on the CPU: one trial's
    architecture (`config`), or an ensemble of trials (`arch` "ensemble", its `members`).
    Raises ValueError as `build_model` does."""
    if meta.get("arch") != ENSEMBLE:
        return build_model(meta["classes"], HParams.from_dict(meta["config"]), weights)
    from search.best import ensemble  # noqa: PLC0415 (ensemble imports calibration; a plain export needs neither)

    model = ensemble.build(len(meta["classes"]), meta["members"])
    problem = _misfit(model.state_dict(), weights, len(meta["classes"]), ENSEMBLE)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(weights)
    return model.eval()


def _misfit(expected: dict[str, torch.Tensor], weights: dict[str, Any], num_classes: int, arch: str) -> str | None:
    """Why `weights` cannot load into a model whose state dict is `expected`, or None when they can."""
    matrices = [name for name, value in expected.items() if value.ndim == 2]
    head = weights.get(matrices[-1]) if matrices else None  # the final layer: its rows are the outputs
    if isinstance(head, torch.Tensor) and head.ndim == 2 and head.shape[0] != num_classes:
        return f"the weights' final layer {matrices[-1]} gives {head.shape[0]} outputs for {num_classes} classes"
    for name, value in expected.items():
        if name not in weights:
            return f"the weights lack {name}, which {arch} needs"
        shape = list(getattr(weights[name], "shape", []))
        if shape != list(value.shape):
            return f"the weights' {name} has shape {shape}, {arch} needs {list(value.shape)}"
    extra = next((name for name in weights if name not in expected), None)
    return f"the weights hold {extra}, which {arch} lacks" if extra else None


def meta_sha256(meta: dict[str, Any]) -> str:
    """sha256 of `meta` without its `meta_sha256` field, as canonical JSON (keys sorted, no
    spaces): written by `export_best`, checked by the loader before meta.json is used."""
    body = {key: value for key, value in meta.items() if key != META_DIGEST}
    # Through JSON first, so the writer hashes what a reader parses (int keys become strings).
    parsed = json.loads(json.dumps(body, default=json_default))
    return hashlib.sha256(json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def export_best(out: Path, state: dict[str, Any], classes: tuple[str, ...], hp: HParams,
                metrics: dict[str, Any], trial_id: str, image_size_px: int, temperature: float = 1.0,
                tta: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                members: list[dict[str, Any]] | None = None) -> Path:
    """Write `out/best/` from `state`: the whole model's state dict ("model", every weight, as
    `trainables.state.restore_model` rebuilds it from a checkpoint) and its "epoch"; replaces an
    earlier export atomically.

    model.pt always lands; model.onnx only when the model exports, else meta.json's "onnx"
    says why. `temperature` (fitted on the val split, `search.best.calibration`) divides the
    logits before the softmax for calibrated probabilities; `tta` says whether the logits are
    the mean of the image's and its mirror's ("mode": "flip") and what that was measured to give.
    `extra` adds fields to meta.json (why this trial was selected, the top trials' serving cost).
    `members` (an ensemble's: each one's trial_id, config, backbone, temperature and weight, as
    `search.best.ensemble.build` reads them): `state["model"]` is the ensemble's, `hp` and
    `trial_id` its best member's; meta.json's "arch" is "ensemble" and its "config" null.
    """
    meta = {
        "classes": list(classes),
        "arch": ENSEMBLE if members else hp.arch,
        "config": None if members else hp.to_dict(),
        **({"members": members} if members else {}),
        "metrics": metrics,
        "trial_id": trial_id,
        "epoch": state["epoch"],
        "output": "logits",
        "temperature": temperature,
        "tta": tta or {"mode": None},
        "preprocess": {"resize": [image_size_px, image_size_px], "mean": list(MEAN), "std": list(STD),
                       "layout": "NCHW, RGB, values scaled to [0, 1] before mean/std"},
        "versions": _versions(),
        **(extra or {}),
    }
    for stale in [*out.glob(f".{BEST_DIR}.tmp-*"), *out.glob(f".{BEST_DIR}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed mid-export (OUT is locked: not in use)
    staging = out / f".{BEST_DIR}.tmp-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        torch.save(state["model"], staging / MODEL_FILE)
        model = build_exported(meta, state["model"])
        meta["onnx"] = export_onnx(model, staging, image_size_px)
        if "error" in meta["onnx"]:
            print(f"warning: {out / BEST_DIR / ONNX_FILE} not written ({meta['onnx']['error']}); model.pt is "
                  f"complete; details in {out / BEST_DIR / meta['onnx']['log']}", file=sys.stderr, flush=True)
        meta["serving"] = serving.measure(model, staging, MODEL_FILE, meta["onnx"], image_size_px)
        listed = [MODEL_FILE] + ([meta["onnx"]["file"]] if "file" in meta["onnx"] else [])
        meta["files"] = {name: file_sha256(staging / name) for name in listed}
        meta[META_DIGEST] = meta_sha256(meta)
        write_json(staging / META_FILE, meta)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = out / BEST_DIR
    if final.exists():
        old = out / f".{BEST_DIR}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)
    return final


def _versions() -> dict[str, str | None]:
    """The libraries that wrote the export: what a client needs to reproduce its numbers."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("torchvision", "onnx", "onnxscript"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions
