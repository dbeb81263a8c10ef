"""The best model leaves the search as `best/`: weights, and all a client needs to feed it.

`best/model.pt` is a plain state dict (`torch.load(..., weights_only=True)` reads it);
`best/meta.json` holds the classes in output order, the architecture and its config, the
metrics, the trial id and the preprocessing. `load_best(out)` rebuilds the model from them.
The folder is written aside and renamed into place, so a crash never leaves half of it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainables.data import decode, is_image_file
from trainables.loop import MEAN, STD, default_device, predict_logits
from trainables.models import create_model

BEST_DIR = "best"
STATE_FILE = "state.pt"  # inside a trial's checkpoint (search/trial.py writes it)


def read_checkpoint(checkpoint_dir: Path) -> dict[str, Any]:
    """The training state a trial saved (model and optimizer state dicts, epoch)."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def build_model(classes: list[str] | tuple[str, ...], hp: dict[str, Any], weights: dict[str, Any]) -> nn.Module:
    """The architecture `hp` describes, with these trained weights, in eval mode on the CPU."""
    # The state dict carries every weight, so never fetch pretrained ones just to overwrite them.
    model = create_model(len(classes), {**hp, "weights": "none"})
    model.load_state_dict(weights)
    return model.eval()


def export_best(out: Path, state: dict[str, Any], classes: tuple[str, ...], hp: dict[str, Any],
                metrics: dict[str, Any], trial_id: str, image_size_px: int) -> Path:
    """Write `out/best/` from a trial's saved state; replaces an earlier export atomically."""
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
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    staging = out / f".{BEST_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save(state["model"], staging / "model.pt")
    (staging / "meta.json").write_text(json.dumps(meta, indent=2, default=_jsonable))
    final = out / BEST_DIR
    if final.exists():
        old = out / f".{BEST_DIR}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)
    return final


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in meta.json")


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


def _expand(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if is_image_file(p))
        else:
            files.append(path)
    return files


def load_best(out: str | Path, device: str | torch.device | None = None) -> Predictor:
    """Load `out/best/` (written by a search) as a `Predictor`."""
    folder = Path(out) / BEST_DIR
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no exported model here; run a search with --out {out} first")
    meta = json.loads(meta_path.read_text())
    model = build_model(meta["classes"], meta["config"],
                        torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    target = torch.device(device) if device else default_device()
    return Predictor(model.to(target), meta, target)
