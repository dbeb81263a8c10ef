"""`best/`: model.pt, model.onnx and meta.json, checked on load, usable without this project."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from search.best.export import export_best, meta_sha256
from search.best.loader import ExportError, load_best, top_k
from trainables import archs, models
from trainables.hparams import HParams

CLASSES = ("cheetah", "hyena", "jaguar")
HP = HParams(arch="small_cnn", cnn_width=8, cnn_depth=2, augment=0.0, optimizer="adam", lr=1e-3,
      momentum=None, batch_size=16, dropout=0.0, weights="none", unfrozen_blocks=None,
      head_units=128)
SIZE_PX = 32
TEMPERATURE = 1.7  # as if fitted on a val split: every reader of the export must divide by it


def make_export(out: Path, hp: HParams = HP, image_size_px: int = SIZE_PX, model: nn.Module | None = None,
                trial_id: str = "trial_1") -> nn.Module:
    """Export a random-weight model (or `model`) as a search would; returns the model in eval mode."""
    torch.manual_seed(0)
    model = model if model is not None else models.create_model(len(CLASSES), hp)
    export_best(out, {"model": model.state_dict(), "epoch": 1}, CLASSES, hp, {"val_acc": 0.5}, trial_id,
                image_size_px, temperature=TEMPERATURE, tta={"mode": "flip"})
    return model.eval()


def write_images(folder: Path) -> list[Path]:
    """Three small readable images (PNG, JPEG, one in a subfolder) and one file of random bytes."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    paths = [folder / "a.png", folder / "b.jpg", folder / "sub" / "c.png"]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    (folder / "broken.jpg").write_bytes(rng.bytes(200))
    return paths


def onnx_client(best: Path, paths: list[Path]) -> tuple[list[str], np.ndarray]:
    """A client that knows only meta.json and model.onnx (the README shows this code)."""
    meta = json.loads((best / "meta.json").read_text())
    pre, spec = meta["preprocess"], meta["onnx"]
    session = ort.InferenceSession(str(best / spec["file"]), providers=["CPUExecutionProvider"])
    mean, std = np.float32(pre["mean"]), np.float32(pre["std"])

    def load(path: Path) -> np.ndarray:
        image = Image.open(path)
        image.draft(None, (2 * pre["resize"][0], 2 * pre["resize"][1]))  # a large JPEG decodes reduced, as here
        image = ImageOps.exif_transpose(image).convert("RGB")
        pixels = np.asarray(image.resize(tuple(pre["resize"]), Image.Resampling.BILINEAR), dtype=np.float32)
        return ((pixels / 255 - mean) / std).transpose(2, 0, 1)  # HWC -> CHW

    logits = session.run([spec["output"]], {spec["input"]: np.stack([load(p) for p in paths])})[0]
    if meta["tta"]["mode"] == "flip":  # the mean of the image's logits and its mirror's
        mirrored = np.stack([load(p)[:, :, ::-1] for p in paths])
        logits = (logits + session.run([spec["output"]], {spec["input"]: mirrored})[0]) / 2
    logits = logits / meta["temperature"]  # calibrated probabilities
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return [meta["classes"][i] for i in probs.argmax(axis=1)], probs


def edit_meta(out: Path, change: Callable[[dict[str, Any]], object], reseal: bool = False) -> None:
    """Apply `change` to out/best/meta.json; with `reseal`, also recompute its meta_sha256 as
    someone who knows the format would (only the model check can then catch a misfit)."""
    path = out / "best" / "meta.json"
    meta = json.loads(path.read_text())
    change(meta)
    if reseal:
        meta["meta_sha256"] = meta_sha256(meta)
    path.write_text(json.dumps(meta, indent=2))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_onnx_matches(best: Path, model: nn.Module, size_px: int) -> None:
    """model.onnx gives the PyTorch model's logits for batches of 1 and of 3, as close to the
    exact logits (a float64 run of the model) as fp32 PyTorch itself is, within a factor: over
    Inception's depth both are ~1e-4 of the logits' scale off, more where a calibrated head
    shrinks the logits and not the error, so a fixed tolerance would test rounding."""
    import copy

    meta = json.loads((best / "meta.json").read_text())
    session = ort.InferenceSession(str(best / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [meta["onnx"]["input"]]
    assert [o.name for o in session.get_outputs()] == [meta["onnx"]["output"]] == ["logits"]
    exact_model = copy.deepcopy(model).double()
    for batch in (1, 3):
        x = torch.randn(batch, 3, size_px, size_px, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected, exact = model(x).numpy(), exact_model(x.double()).numpy()
        got = session.run(None, {meta["onnx"]["input"]: x.numpy()})[0]
        assert got.shape == (batch, len(CLASSES))
        torch_error = np.abs(expected - exact).max()
        tolerance = max(4 * torch_error, 1e-5 * max(1.0, np.abs(exact).max()))
        np.testing.assert_allclose(got, exact, atol=tolerance, rtol=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    out = tmp_path_factory.mktemp("search")
    return out, make_export(out)


@pytest.fixture
def copy(exported: tuple[Path, nn.Module], tmp_path: Path) -> Path:
    """A private copy of the export, to modify."""
    shutil.copytree(exported[0] / "best", tmp_path / "out" / "best")
    return tmp_path / "out"


def test_model_pt_is_a_state_dict_and_meta_lists_classes_preprocess_and_digests(exported) -> None:
    out, model = exported
    weights = torch.load(out / "best" / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["output"] == "logits"
    assert meta["preprocess"]["resize"] == [SIZE_PX, SIZE_PX] and len(meta["preprocess"]["mean"]) == 3
    assert meta["files"] == {name: sha256(out / "best" / name) for name in ("model.pt", "model.onnx")}
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}  # what the README tells a client to hash
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert meta["meta_sha256"] == hashlib.sha256(canonical).hexdigest()
    assert set(meta["versions"]) >= {"torch", "torchvision", "onnx", "python"}
    assert meta["onnx"]["input"] == "image" and meta["onnx"]["dynamic_axes"]["image"] == {"0": "batch"}
    assert sorted(p.name for p in (out / "best").iterdir()) == ["meta.json", "model.onnx", "model.pt"]


def test_meta_says_what_the_model_costs_to_serve(exported) -> None:
    """Size and onnxruntime CPU figures, measured at export (timings are this machine's: only
    their consistency is checked here; bench/RESULTS.md compares them with an independent timing)."""
    out, model = exported
    serving = json.loads((out / "best" / "meta.json").read_text())["serving"]
    assert serving["parameters"] == sum(p.numel() for p in model.parameters())
    assert serving["model_pt_bytes"] == (out / "best" / "model.pt").stat().st_size
    assert serving["onnx_bytes"] == (out / "best" / "model.onnx").stat().st_size
    cpu = serving["onnxruntime_cpu"]
    assert 0 < cpu["batch1_p50_ms"] <= cpu["batch1_p95_ms"] and cpu["batch1_runs"] >= 1
    assert cpu["batch32_images_per_s"] > 0 and cpu["cpus"] >= 1 and cpu["onnxruntime"]


def test_onnx_gives_the_pytorch_logits_for_any_batch_size(exported) -> None:
    out, model = exported
    opset = {o.domain: o.version for o in onnx.load(out / "best" / "model.onnx").opset_import}[""]
    assert opset >= 17 and opset == json.loads((out / "best" / "meta.json").read_text())["onnx"]["opset"]
    assert_onnx_matches(out / "best", model, SIZE_PX)


def test_a_client_with_only_meta_json_and_onnx_gets_the_same_predictions(exported, tmp_path: Path) -> None:
    out, _ = exported
    paths = write_images(tmp_path / "photos")
    labels, probs = onnx_client(out / "best", paths)
    frame = load_best(out, "cpu").predict(paths)
    assert labels == frame["prediction"].tolist()
    np.testing.assert_allclose(probs, frame[list(CLASSES)].to_numpy(), atol=1e-4)


def calibrated(model: nn.Module, size_px: int) -> nn.Module:
    """Batch-norm statistics from real activations, as training leaves them: a random Inception
    with untouched unit statistics puts out logits of ~1e10, where 1e-4 says nothing."""
    model.eval()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration batch
        norm.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size_px, size_px))
    return model.eval()


@pytest.mark.slow  # Inception's ONNX export: ~25 s on 2 cores
def test_inception_from_imagenet_weights_exports_and_reloads_exactly(tmp_path: Path, monkeypatch) -> None:
    from torchvision.models import inception_v3

    # Stands in for the ImageNet download: same layout, random values.
    monkeypatch.setattr(models, "load_pretrained",
                        lambda arch: inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict())
    hp = HP.replace(arch="inception_partial", unfrozen_blocks=2, weights="imagenet")
    torch.manual_seed(0)
    size = 75  # the smallest input Inception v3 takes: keeps the test to seconds
    model = calibrated(models.create_model(len(CLASSES), hp), size)
    make_export(tmp_path, hp, size, model)
    assert_onnx_matches(tmp_path / "best", model, size)
    # Rebuilt from model.pt, it still rescales its input as ImageNet-trained Inception does.
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(load_best(tmp_path, "cpu").model(x), model(x))


def test_a_tampered_model_file_is_refused(copy: Path) -> None:
    path = copy / "best" / "model.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"model\.pt: sha256 differs.*tampered or partial export; re-run"):
        load_best(copy)


def test_a_partial_export_is_refused(copy: Path) -> None:
    (copy / "best" / "model.onnx").unlink()
    with pytest.raises(ExportError, match=r"model\.onnx: missing; tampered or partial export"):
        load_best(copy)
    (copy / "best" / "meta.json").unlink()
    with pytest.raises(ExportError, match=r"meta\.json: missing or unreadable"):
        load_best(copy)


# Every edit that changes what the model's outputs mean; the first two once gave wrong labels with exit 0.
MEANINGFUL_EDITS = {
    "classes reordered": lambda meta: meta["classes"].reverse(),
    "class added": lambda meta: meta["classes"].append("lion"),
    "class removed": lambda meta: meta["classes"].pop(),
    "config edited": lambda meta: meta["config"].update(cnn_width=16),
    "preprocess edited": lambda meta: meta["preprocess"].update(resize=[48, 48]),
    "digests removed": lambda meta: meta.pop("files"),
}


@pytest.mark.parametrize("edit", MEANINGFUL_EDITS)
def test_an_edited_meta_json_is_refused_in_one_line(copy: Path, edit: str) -> None:
    edit_meta(copy, MEANINGFUL_EDITS[edit])
    with pytest.raises(ExportError, match=r"meta\.json: modified after export.*re-run the search or re-export") as err:
        load_best(copy)
    assert "\n" not in str(err.value)


def test_meta_json_reformatted_without_changing_its_content_still_loads(copy: Path) -> None:
    path = copy / "best" / "meta.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(dict(reversed(meta.items())), indent=4, sort_keys=False))
    assert load_best(copy).classes == list(CLASSES)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda meta: meta.pop("meta_sha256"), "carries no meta_sha256 of its own content.*older version.*re-export"),
    (lambda meta: (meta.pop("meta_sha256"), meta.pop("files")), "carries no meta_sha256.*older version"),
])
def test_an_export_from_an_older_version_is_refused(copy: Path, edit: Callable, expected: str) -> None:
    edit_meta(copy, edit)
    with pytest.raises(ExportError, match=expected):
        load_best(copy)


def test_a_resealed_meta_without_digests_is_refused(copy: Path) -> None:
    edit_meta(copy, lambda meta: meta.pop("files"), reseal=True)
    with pytest.raises(ExportError, match="lists no sha256"):
        load_best(copy)


@pytest.mark.parametrize(("edit", "expected"), [
    (MEANINGFUL_EDITS["class added"], r"final layer head\.4\.weight gives 3 outputs for 4 classes"),
    (MEANINGFUL_EDITS["class removed"], "gives 3 outputs for 2 classes"),
    (MEANINGFUL_EDITS["config edited"], r"features\.0\.weight has shape \[8, 3, 3, 3\], small_cnn needs \[16, "),
])
def test_weights_that_do_not_fit_a_resealed_meta_are_refused_before_loading(copy: Path, edit: Callable,
                                                                           expected: str) -> None:
    edit_meta(copy, edit, reseal=True)
    with pytest.raises(ExportError, match=r"model\.pt: does not fit meta\.json: the weights.*" + expected):
        load_best(copy)


def test_no_export_says_to_run_a_search(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no exported model here; run a search"):
        load_best(tmp_path)


def test_export_replaces_the_earlier_one_atomically(tmp_path: Path, capfd) -> None:
    make_export(tmp_path, trial_id="first")
    make_export(tmp_path, trial_id="second")
    assert capfd.readouterr() == ("", "")  # the exporter's chatter stays off the console
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no staging or old folder left
    assert load_best(tmp_path).meta["trial_id"] == "second"
    # A failing export leaves the earlier best/ as it was, and no staging folder.
    wrong = {"model": {"not": torch.zeros(1)}, "epoch": 2}
    with pytest.raises(ValueError, match="the weights lack features.0.weight, which small_cnn needs"):
        export_best(tmp_path, wrong, CLASSES, HP, {}, "third", SIZE_PX)
    assert [p.name for p in tmp_path.iterdir()] == ["best"]
    assert load_best(tmp_path).meta["trial_id"] == "second"


class DataDependent(nn.Module):
    """Branches on a value of its input, which torch.export cannot trace."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return self.linear(pooled) if pooled.mean() > 0 else -self.linear(pooled)


def test_a_model_onnx_cannot_express_still_exports_its_weights(tmp_path: Path, monkeypatch, capfd) -> None:
    # A new architecture is one table entry plus one builder.
    monkeypatch.setitem(archs.ARCHS, "data_dependent", archs.Arch("data_dependent", "data_dependent", (), 16))
    monkeypatch.setitem(models.BUILDERS, "data_dependent",
                        lambda arch, hp, num_classes, load_weights: DataDependent(num_classes))
    make_export(tmp_path, HP.replace(arch="data_dependent"))
    out, err = capfd.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("warning: ")
    assert "model.onnx not written" in err and "model.pt is complete" in err
    meta = json.loads((tmp_path / "best" / "meta.json").read_text())
    assert "torch.export" in meta["onnx"]["error"] and "\n" not in meta["onnx"]["error"]
    assert "Traceback" in (tmp_path / "best" / meta["onnx"]["log"]).read_text()
    assert list(meta["files"]) == ["model.pt"] and not (tmp_path / "best" / "model.onnx").exists()
    assert load_best(tmp_path).classes == list(CLASSES)


def test_top_k_keeps_the_likeliest_classes_and_the_errors() -> None:
    frame = pd.DataFrame({"file": ["a", "b"], "prediction": ["hyena", None], "cheetah": [0.1, None],
                          "hyena": [0.7, None], "jaguar": [0.2, None], "error": [None, "OSError: bad"]})
    table = top_k(frame, CLASSES, 2)
    assert list(table.columns) == ["file", "prediction", "top1", "top1_prob", "top2", "top2_prob", "error"]
    assert table.iloc[0][["top1", "top2"]].tolist() == ["hyena", "jaguar"]
    assert table.iloc[0]["top1_prob"] == pytest.approx(0.7)
    assert pd.isna(table.iloc[1]["top1"]) and pd.isna(table.iloc[1]["top1_prob"])
    assert table.iloc[1]["error"] == "OSError: bad"
    with pytest.raises(ValueError, match="1 to 3"):
        top_k(frame, CLASSES, 4)


def test_a_quick_export_for_timing_gives_the_same_logits_and_falls_back_where_refused(tmp_path: Path) -> None:
    """The candidates' ONNX (timed, never shipped: search.best.candidates) comes from torch's
    TorchScript exporter where it takes the graph, in a second instead of ten for an Inception."""
    from search.best.onnx import _torchscript_export, export_onnx

    images = torch.rand(3, 3, 90, 90)  # the small CNN pools 22x22 to 4x4, which that exporter refuses
    for arch, takes in (("inception_partial", True), ("small_cnn", False)):
        model = models.create_model(3, HP.replace(arch=arch, weights="none", unfrozen_blocks=1),
                                    load_weights=False).eval()
        folder = tmp_path / arch
        folder.mkdir()
        assert _torchscript_export(model, images, folder / "probe.onnx", folder / "probe.log") is takes
        entry = export_onnx(model, folder, 90, quick=True)
        session = ort.InferenceSession(str(folder / entry["file"]), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {entry["input"]: images.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(images).numpy(), rtol=1e-3, atol=1e-4)
