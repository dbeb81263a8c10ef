"""The best model leaves the search as `best/`: weights, and all a client needs to feed it.

`best/model.pt` is a plain state dict (`torch.load(..., weights_only=True)` reads it);
`best/model.onnx` the same model for ONNX Runtime and other tools (see `search.best.onnx`);
`best/meta.json` holds the classes in output order, the architecture and its config, the
metrics, the trial id, the preprocessing, the library versions and the sha256 of each model
file. `load_best(out)` checks those digests and rebuilds the model. The folder is written
aside and renamed into place, so a crash never leaves half of it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from search.best.onnx import export_onnx
from search.files import BEST_DIR, META_FILE, MODEL_FILE, ONNX_FILE, json_default
from trainables.data import decode, file_sha256, is_image_file
from trainables.loop import MEAN, STD, default_device, predict_logits
from trainables.models import create_model

REEXPORT = "tampered or partial export; re-run the search or re-export"


class ExportError(ValueError):
    """`best/` is not a complete, unmodified export; the message names the file."""


def build_model(classes: list[str] | tuple[str, ...], hp: dict[str, Any], weights: dict[str, Any]) -> nn.Module:
    """The architecture `hp` describes, with these trained weights, in eval mode on the CPU."""
    # The state dict carries every weight, so never fetch pretrained ones just to overwrite
    # them; the layout they imply (Inception's [-1, 1] input scaling) is kept.
    model = create_model(len(classes), hp, load_weights=False)
    model.load_state_dict(weights)
    return model.eval()


def export_best(out: Path, state: dict[str, Any], classes: tuple[str, ...], hp: dict[str, Any],
                metrics: dict[str, Any], trial_id: str, image_size_px: int) -> Path:
    """Write `out/best/` from a trial's saved state; replaces an earlier export atomically.

    model.pt always lands; model.onnx only when the model exports, else meta.json's "onnx"
    says why.
    """
    meta = {
        "classes": list(classes),
        "arch": hp["arch"],
        "config": hp,
        "metrics": metrics,
        "trial_id": trial_id,
        "epoch": state["epoch"],
        "output": "logits",
        "preprocess": {"resize": [image_size_px, image_size_px], "mean": list(MEAN), "std": list(STD),
                       "layout": "NCHW, RGB, values scaled to [0, 1] before mean/std"},
        "versions": _versions(),
    }
    staging = out / f".{BEST_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        torch.save(state["model"], staging / MODEL_FILE)
        meta["onnx"] = export_onnx(build_model(classes, hp, state["model"]), staging, image_size_px)
        if "error" in meta["onnx"]:
            print(f"warning: {out / BEST_DIR / ONNX_FILE} not written ({meta['onnx']['error']}); model.pt is "
                  f"complete; details in {out / BEST_DIR / meta['onnx']['log']}", file=sys.stderr, flush=True)
        listed = [MODEL_FILE] + ([meta["onnx"]["file"]] if "file" in meta["onnx"] else [])
        meta["files"] = {name: file_sha256(staging / name) for name in listed}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=json_default))
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


@dataclass
class Predictor:
    """The exported best model, ready to label images."""

    model: nn.Module
    meta: dict[str, Any]
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def predict(self, paths: list[str | Path] | str | Path) -> pd.DataFrame:
        """One row per image (folders are expanded): file, prediction, one probability per class.

        An image that cannot be read gets its reason in `error` instead of a prediction.
        """
        files = _expand([paths] if isinstance(paths, (str, Path)) else paths)
        size = self.meta["preprocess"]["resize"][0]
        images, rows = [], []
        for path in files:
            row: dict[str, Any] = {"file": str(path), "prediction": None, "error": None}
            try:
                images.append(decode(path, size))
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
        ok = [row for row in rows if row["error"] is None]
        if ok:
            probs = torch.softmax(predict_logits(self.model, np.stack(images), self.device), dim=1).numpy()
            for row, p in zip(ok, probs):
                row["prediction"] = self.classes[int(p.argmax())]
                row.update({name: float(v) for name, v in zip(self.classes, p)})
        return pd.DataFrame(rows, columns=["file", "prediction", *self.classes, "error"])


def top_k(predictions: pd.DataFrame, classes: Sequence[str], k: int) -> pd.DataFrame:
    """`Predictor.predict`'s table with the per-class probabilities replaced by the k likeliest
    classes (`top1`, `top1_prob`, ...): readable with 100+ classes."""
    if not 1 <= k <= len(classes):
        raise ValueError(f"top-k: {k} is not allowed; the model has {len(classes)} classes, so 1 to {len(classes)}")
    probs = predictions[list(classes)].to_numpy(dtype=float)
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1, kind="stable")[:, :k]
    ok = predictions["error"].isna().to_numpy()
    table = predictions[["file", "prediction"]].copy()
    for rank in range(k):
        index = order[:, rank]
        table[f"top{rank + 1}"] = [classes[i] if good else None for i, good in zip(index, ok)]
        table[f"top{rank + 1}_prob"] = np.where(ok, probs[np.arange(len(probs)), index], np.nan)
    table["error"] = predictions["error"]
    return table


def _expand(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if is_image_file(p))
        else:
            files.append(path)
    return files


def read_meta(out: str | Path) -> dict[str, Any]:
    """`out/best/meta.json`, once every model file it lists is there with its recorded sha256."""
    folder = Path(out) / BEST_DIR
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no exported model here; run a search with --out {out} first")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{meta_path}: missing or unreadable ({type(err).__name__}); {REEXPORT}") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise ExportError(f"{meta_path}: lists no sha256 of its model files (an export from an older version, "
                          f"or an edited meta.json); {REEXPORT}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{path}: missing; {REEXPORT}")
        if file_sha256(path) != expected:
            raise ExportError(f"{path}: sha256 differs from meta.json's; {REEXPORT}")
    return meta


def load_best(out: str | Path, device: str | torch.device | None = None) -> Predictor:
    """Load `out/best/` (written by a search) as a `Predictor`, after checking its files.

    `out` is the search's `--out`: a folder, or a URI such as s3://bucket/prefix.

    Raises FileNotFoundError when there is no export, ExportError when it is incomplete or
    was modified.
    """
    if "://" in str(out):  # a search that wrote to s3://... or another URI: fetch best/ first
        from search.storage import open_output
        from trainables.data import default_cache_dir

        out = open_output(str(out), default_cache_dir()).fetch(BEST_DIR).parent
    meta = read_meta(out)
    weights = torch.load(Path(out) / BEST_DIR / MODEL_FILE, map_location="cpu", weights_only=True)
    model = build_model(meta["classes"], meta["config"], weights)
    target = torch.device(device) if device else default_device()
    return Predictor(model.to(target), meta, target)
