"""The training loop, models and optimizers, without Ray."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from trainables import data, models, optimizers
from trainables.archs import ARCHS
from trainables.hparams import HParams
from trainables.loop import Stopped, evaluate, fit

HP = HParams(arch="small_cnn", cnn_width=16, cnn_depth=3, augment=0.0, optimizer="adam",
      lr=3e-3, momentum=None, batch_size=16, dropout=0.0, weights="none", unfrozen_blocks=None,
      head_units=128)


@pytest.fixture(scope="module")
def arrays(coats: Path, tmp_path_factory: pytest.TempPathFactory) -> data.ArrayData:
    cache = data.prepare(coats, 48, 0.25, 0, tmp_path_factory.mktemp("cache"))
    return data.load(cache.path)


def test_registries_hold_exactly_the_names_the_space_uses() -> None:
    assert {arch.family for arch in ARCHS.values()} == set(models.BUILDERS)
    assert len(models.INCEPTION_BLOCKS) == ARCHS["inception_partial"].blocks


def test_training_reduces_the_loss(arrays: data.ArrayData) -> None:
    reports: list[dict] = []
    model = fit(HP, arrays, 4, lambda metrics, state: reports.append(metrics), seed=0, device=torch.device("cpu"))
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    assert all(r["train_images"] == len(arrays.train.labels) for r in reports)
    for key in ("val_acc", "val_loss", "train_acc", "train_loss", "train_time_s"):
        assert all(key in r for r in reports)
    assert evaluate(model, arrays.val, torch.device("cpu"))[1] == pytest.approx(reports[-1]["val_acc"])


def test_resume_continues_after_the_saved_epoch(arrays: data.ArrayData, tmp_path: Path) -> None:
    states: list[dict] = []
    fit(HP, arrays, 2, lambda m, s: states.append(s), device=torch.device("cpu"))
    torch.save(states[-1], tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed: list[dict] = []
    fit(HP, arrays, 3, lambda m, s: resumed.append(m), state=state, device=torch.device("cpu"))
    assert [m["epoch"] for m in resumed] == [3]
    assert resumed[0]["train_time_s"] > state["train_time_s"]


def test_a_stop_set_from_another_thread_ends_the_run_before_its_next_batch(arrays: data.ArrayData) -> None:
    """A stopped trial's worker process is reused for the next trial (search/seam/kept_workers.py): the
    loop stops within a batch of being asked, not at the end of its epoch or run."""
    stop, batches = threading.Event(), []
    hp = HP.replace(batch_size=4)

    def report(metrics: dict, state: dict) -> None:
        batches.append(metrics["epoch"])
        stop.set()  # as the driver does from its own thread, once Tune stops the trial

    with pytest.raises(Stopped, match="epoch 2"):
        fit(hp, arrays, 5, report, device=torch.device("cpu"), stop=stop)
    assert batches == [1]
    stop.set()
    with pytest.raises(Stopped, match="epoch 1"):
        fit(hp, arrays, 5, lambda m, s: pytest.fail("reported after the stop"), device=torch.device("cpu"), stop=stop)


def test_a_diverging_run_fails_with_a_clear_error(arrays: data.ArrayData) -> None:
    hp = HP.replace(optimizer="sgd", lr=1e9, momentum=0.9)
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(hp, arrays, 2, lambda m, s: None, device=torch.device("cpu"))


@pytest.mark.parametrize("arch, extra", [("small_cnn", {"cnn_width": 8, "cnn_depth": 5}),
                                         ("inception_frozen", {}), ("inception_partial", {"unfrozen_blocks": 2})])
def test_every_arch_takes_the_smallest_allowed_image(arch: str, extra: dict) -> None:
    model = models.create_model(3, HP.replace(arch=arch, **extra))
    size = 75 if arch.startswith("inception") else 16
    model.train()
    assert model(torch.rand(2, 3, size, size)).shape == (2, 3)


def test_frozen_inception_trains_only_its_head_and_partial_its_top_blocks() -> None:
    frozen = models.create_model(2, HP.replace(arch="inception_frozen"))
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in frozen.named_parameters() if p.requires_grad}
    assert all(n.startswith("head.") for n in trainable)
    partial = models.create_model(2, HP.replace(arch="inception_partial", unfrozen_blocks=2))
    blocks = {n.split(".")[1] for n, p in partial.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert blocks == {"Mixed_7b", "Mixed_7c"}


def test_head_units_zero_is_one_linear_layer_on_the_pooled_features() -> None:
    linear = models.create_model(3, HP.replace(arch="inception_frozen", head_units=0))
    assert [type(m).__name__ for m in linear.head] == ["Dropout", "Linear"] and linear.head[1].in_features == 2048
    hidden = models.create_model(3, HP.replace(arch="inception_frozen", head_units=128))
    assert [m.out_features for m in hidden.head if isinstance(m, torch.nn.Linear)] == [128, 3]


def test_missing_imagenet_weights_say_which_file_to_place_where(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    with pytest.raises(models.WeightsUnavailable) as err:
        models.create_model(2, HP.replace(arch="inception_frozen", weights="imagenet"))
    message = str(err.value)
    assert "inception_v3_google-0cc3c7bd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "weights='none'" in message


def test_optimizers_are_built_with_their_settings() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = optimizers.create_optimizer("sgd", params, 0.1, 0.9)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"]
    assert isinstance(optimizers.create_optimizer("rmsprop", params, 1e-4), torch.optim.RMSprop)
    with pytest.raises(ValueError, match="allowed"):
        optimizers.create_optimizer("lion", params, 1e-4)
