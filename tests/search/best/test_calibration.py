"""Temperature scaling: fitted on val, it makes an overconfident model's probabilities honest
on test; load_best and the ONNX client apply the exported temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from search.best import calibration
from search.best.loader import load_best
from tests.search.best.test_export import CLASSES, TEMPERATURE, make_export, write_images
from trainables.data import decode
from trainables.loop import predict_logits


def overconfident(n: int, seed: int, sharpen: float = 4.0) -> tuple[torch.Tensor, np.ndarray]:
    """Logits `sharpen` times sharper than the probabilities the labels were drawn from."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, (n, 4))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probs])
    return torch.tensor(true_logits * sharpen, dtype=torch.float32), labels


def test_the_fitted_temperature_undoes_overconfidence_and_lowers_the_test_ece() -> None:
    val_logits, val_labels = overconfident(2000, seed=0)
    test_logits, test_labels = overconfident(2000, seed=1)
    result = calibration.calibrate(val_logits, val_labels, test_logits, test_labels)
    assert result["temperature"] == pytest.approx(4.0, rel=0.15)
    assert result["test_ece_after"] < result["test_ece_before"] / 3
    predicted = calibration.softmax(test_logits).argmax(1)
    assert (calibration.softmax(test_logits, result["temperature"]).argmax(1) == predicted).all()  # same classes


def test_reliability_bins_count_every_prediction_and_an_honest_model_scores_near_zero() -> None:
    logits, labels = overconfident(4000, seed=2, sharpen=1.0)  # the labels' own probabilities
    probs = calibration.softmax(logits)
    bins = calibration.reliability(probs, labels)
    assert sum(b["count"] for b in bins) == 4000 and len(bins) == calibration.BINS
    assert all(b["low"] <= b["confidence"] <= b["high"] for b in bins if b["count"])
    assert calibration.expected_calibration_error(probs, labels) < 0.03


def test_too_little_to_fit_on_keeps_the_logits_as_they_are() -> None:
    assert calibration.fit_temperature(torch.zeros(1, 3), np.array([0])) == 1.0


def test_load_best_mirrors_and_divides_the_logits_as_the_export_says(tmp_path: Path) -> None:
    model = make_export(tmp_path)
    paths = write_images(tmp_path / "images")
    table = load_best(tmp_path).predict(paths)
    ok = table[table["error"].isna()]
    images = np.stack([decode(Path(p), 32) for p in ok["file"]])
    cpu = torch.device("cpu")
    expected = torch.softmax(predict_logits(model, images, cpu, tta="flip") / TEMPERATURE, 1).numpy()
    assert np.allclose(ok[list(CLASSES)].to_numpy(), expected, atol=1e-5)
    plain = torch.softmax(predict_logits(model, images, cpu), 1).numpy()
    assert not np.allclose(plain, expected, atol=1e-3)  # the temperature and the mirror made a difference


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 6, 3))
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    mirrored = predict_logits(model, np.ascontiguousarray(images[:, :, ::-1]), cpu)
    both = predict_logits(model, images, cpu, tta="flip")
    assert torch.allclose(both, (predict_logits(model, images, cpu) + mirrored) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="only 'flip'"):
        predict_logits(model, images, cpu, tta="rotate")


def test_tta_is_kept_only_when_it_lowers_the_val_loss() -> None:
    labels = np.array([0, 1, 0, 1])
    sure = torch.tensor([[2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, 2.0]])
    unsure = sure / 4
    assert calibration.choose_tta(unsure, sure, labels)["mode"] == "flip"
    kept = calibration.choose_tta(sure, unsure, labels)
    assert kept["mode"] is None and kept["val_loss_plain"] < kept["val_loss_flip"] and kept["val_acc_flip"] == 1.0
