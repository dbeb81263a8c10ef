"""The training loop's CUDA path on a real GPU: each core arch in bf16 and channels-last, the
images held on the GPU, the frozen-feature cache there, and a GPU-trained model's ONNX export.

Every test skips without CUDA; `bash bench/gpu_suite.sh` runs them on a lent GPU (`-m gpu`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.cases import stand_in_imagenet_weights
from search.best.export import export_best
from search.best.loader import load_best
from search.data.generated import generate_coats
from tests.search.best.test_export import CLASSES, SIZE_PX, assert_onnx_matches, onnx_client, write_images
from tests.search.best.test_export import HP as EXPORT_HP
from tests.trainables.test_features import EPOCHS, FROZEN, assert_same_metrics, run
from tests.trainables.test_loop import HP
from trainables import data, loop
from trainables.archs import CORE_ARCHS
from trainables.loop import cache_features, fit
from trainables.models import create_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a GPU)")]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def arrays(coats: Path, tmp_path_factory: pytest.TempPathFactory) -> data.ArrayData:
    cache = data.prepare(coats, 75, 0.25, 0, tmp_path_factory.mktemp("cache"))  # Inception's smallest input
    return data.load(cache.path)


@pytest.mark.parametrize("arch", CORE_ARCHS)
def test_one_epoch_of_each_arch_trains_in_bf16_and_channels_last(arch: str, arrays: data.ArrayData) -> None:
    convs: list[tuple[torch.dtype, bool]] = []

    def seen(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d) and module.training:
            convs.append((output.dtype, output.is_contiguous(memory_format=torch.channels_last)))

    reports: list[dict] = []
    hook = nn.modules.module.register_module_forward_hook(seen)
    try:
        model = fit(HP.replace(arch=arch, unfrozen_blocks=2, head_units=32), arrays, 1,
                    lambda metrics, state: reports.append(metrics), device=CUDA)
    finally:
        hook.remove()
    [metrics] = reports
    assert metrics["train_images"] == len(arrays.train.labels) and np.isfinite(metrics["train_loss"])
    assert 0 <= metrics["val_acc"] <= 1
    assert convs and all(dtype == torch.bfloat16 for dtype, _ in convs), {dtype for dtype, _ in convs}
    assert all(channels_last for _, channels_last in convs)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_cuda and w.dtype == torch.float32 for w in model.parameters())  # autocast keeps fp32 weights
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def test_the_training_images_are_held_on_the_gpu(arrays: data.ArrayData, monkeypatch: pytest.MonkeyPatch) -> None:
    held = []
    on_device = loop.on_device
    monkeypatch.setattr(loop, "on_device", lambda images, device: held.append(on_device(images, device)) or held[-1])
    fit(HP, arrays, 1, lambda metrics, state: None, device=CUDA)
    [images] = held
    assert isinstance(images, torch.Tensor) and images.is_cuda
    assert torch.equal(images.cpu(), torch.from_numpy(arrays.train.images))
    # Over its share of the free memory the array stays on the host.
    assert on_device(arrays.train.images, CUDA, max_fraction=0) is arrays.train.images


def test_the_frozen_feature_cache_on_the_gpu_gives_what_recomputing_gives(arrays: data.ArrayData,
                                                                          tmp_path: Path) -> None:
    with stand_in_imagenet_weights(arrays, FROZEN, CUDA, tmp_path):
        cached, plain = run(FROZEN, arrays, device=CUDA), run(FROZEN, arrays, device=CUDA, feature_cache=False)
        features = cache_features(create_model(len(arrays.classes), FROZEN).to(CUDA), arrays, FROZEN, CUDA, seed=0)
    assert features is not None and features.train.is_cuda and features.val.is_cuda
    images = len(arrays.train.labels) + len(arrays.val.labels)
    assert cached["backbone_images"] == images and plain["backbone_images"] == EPOCHS * images
    assert cached["trained"] == [cached["model"].head]
    # The features are bf16 either way, but computed in other batches (cuDNN may pick other
    # kernels, rounding differently): the same within one validation image.
    assert_same_metrics(cached["metrics"], plain["metrics"], 1 / len(arrays.val.labels) + 1e-6)
    assert cached["metrics"][-1]["train_loss"] < cached["metrics"][0]["train_loss"]


def test_a_model_trained_on_the_gpu_exports_to_onnx_that_agrees_on_the_cpu(tmp_path: Path) -> None:
    root = generate_coats(tmp_path / "data", train_per_class=8, test_per_class=2, size_px=SIZE_PX, classes=CLASSES)
    arrays = data.load(data.prepare(root, SIZE_PX, 0.25, 0, tmp_path / "cache").path)
    states: list[dict] = []
    model = fit(EXPORT_HP, arrays, 1, lambda metrics, state: states.append(state), device=CUDA)
    # As a search does: the worker saves its state with CUDA tensors, the export loads it onto the CPU.
    torch.save(states[-1], tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    out = tmp_path / "out"
    export_best(out, state, CLASSES, EXPORT_HP, {"val_acc": 0.5}, "trial_gpu", SIZE_PX)
    assert_onnx_matches(out / "best", model.cpu().eval(), SIZE_PX)
    # The export predicts on the GPU (bf16) as ONNX Runtime does on the CPU, within bf16's rounding.
    paths = write_images(tmp_path / "photos")
    _, probabilities = onnx_client(out / "best", paths)
    frame = load_best(out, CUDA.type).predict(paths)
    np.testing.assert_allclose(frame[list(CLASSES)].to_numpy(dtype=np.float64), probabilities, atol=2e-2)
