"""Loads a search's `best/` after checking it, and labels images with it (`load_best`, `Predictor`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from search.best.export import META_DIGEST, build_exported, meta_sha256
from search.state.names import BEST_DIR, META_FILE, MODEL_FILE
from trainables.data import decode, file_sha256
from trainables.folders import is_image_file
from trainables.loop import default_device, predict_logits

RERUN = "re-run the search or re-export"
REEXPORT = f"tampered or partial export; {RERUN}"


class ExportError(ValueError):
    """`best/` is not a complete, unmodified export; the message names the file."""


@dataclass
class Predictor:
    """The exported best model, ready to label images."""

    model: nn.Module
    meta: dict[str, Any]
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def size_px(self) -> int:
        """The side of the square images the model takes (`decode` resizes to it)."""
        return int(self.meta["preprocess"]["resize"][0])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """[n, classes] calibrated probabilities of uint8 images [n, size, size, 3] (`decode`'s)."""
        tta = (self.meta.get("tta") or {}).get("mode")  # mirrored too, when the export measured it helps
        logits = predict_logits(self.model, images, self.device, tta=tta)
        # Calibrated: the temperature fitted on the val split (exports without one: 1).
        return torch.softmax(logits / float(self.meta.get("temperature", 1.0)), dim=1).numpy()

    def predict(self, paths: list[str | Path] | str | Path) -> pd.DataFrame:
        """One row per image (folders are expanded): file, prediction, one probability per class.

        An image that cannot be read gets its reason in `error` instead of a prediction.
        """
        files = _expand([paths] if isinstance(paths, (str, Path)) else paths)
        size = self.size_px
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
            for row, p in zip(ok, self.probabilities(np.stack(images))):
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
    """`out/best/meta.json`, once its own content matches its `meta_sha256` and every model file
    it lists is there with its recorded sha256."""
    folder = Path(out) / BEST_DIR
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no exported model here; run a search with --out {out} first")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{meta_path}: missing or unreadable ({type(err).__name__}); {REEXPORT}") from None
    if not isinstance(meta, dict) or META_DIGEST not in meta:
        raise ExportError(f"{meta_path}: carries no {META_DIGEST} of its own content (an export from an older "
                          f"version, or an edited meta.json); {REEXPORT}")
    if meta[META_DIGEST] != meta_sha256(meta):
        raise ExportError(f"{meta_path}: modified after export (its content no longer matches its {META_DIGEST}); "
                          f"{RERUN}")
    files = meta.get("files")
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

    Raises FileNotFoundError when there is no export, ExportError when it is incomplete, was
    modified, or its weights do not fit its meta.json's classes and config.
    """
    if "://" in str(out):  # a search that wrote to s3://... or another URI: fetch best/ first
        from search.state.storage import open_output
        from trainables.data import default_cache_dir

        out = open_output(str(out), default_cache_dir()).fetch(BEST_DIR).parent
    meta = read_meta(out)
    model_path = Path(out) / BEST_DIR / MODEL_FILE
    weights = torch.load(model_path, map_location="cpu", weights_only=True)
    try:
        model = build_exported(meta, weights)
    except (ValueError, KeyError, TypeError) as err:  # the weights do not fit meta.json's classes or config
        raise ExportError(f"{model_path}: does not fit {META_FILE}: {err}; {REEXPORT}") from None
    target = torch.device(device) if device else default_device()
    return Predictor(model.to(target), meta, target)
