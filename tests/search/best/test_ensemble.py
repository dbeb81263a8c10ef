"""The top trials as one model: greedy weights, the held-out decision, one graph, one export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from search.best import ensemble
from search.best.combine import Member, member_logits, try_ensemble
from search.best.export import export_best
from search.best.loader import ExportError, load_best
from search.best.select import TOP_K, reach
from search.experiment.spec import Experiment, SpecError
from tests.search.best.test_export import CLASSES, HP, edit_meta
from trainables.data import ArrayData, Split
from trainables.hparams import HParams
from trainables.models import create_model
from trainables.state import checkpoint, frozen_sha256

SIZE_PX = 32
FROZEN = HParams(arch="efficientnet_b0_frozen", optimizer="adam", lr=1e-3, batch_size=16, weights="imagenet",
                 head_units=0)


def confident(labels: np.ndarray, right: np.ndarray, classes: int = 3, strength: float = 4.0) -> np.ndarray:
    """Logits [N, classes] that put `strength` on the true label where `right`, else on the next one."""
    logits = np.zeros((len(labels), classes), dtype=np.float32)
    guess = np.where(right, labels, (labels + 1) % classes)
    logits[np.arange(len(labels)), guess] = strength
    return logits


def two_experts(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two members right on different, overlapping 70% of the images, and a third no better than chance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    first = rng.random(n) < 0.7
    second = np.where(first, rng.random(n) < 0.6, rng.random(n) < 0.85)
    noise = rng.normal(0, 1, (n, 3)).astype(np.float32)
    return np.stack([confident(labels, first), confident(labels, second), noise]), labels


def test_greedy_weights_combine_complementary_members_and_drop_a_useless_one() -> None:
    logits, labels = two_experts()
    probs = np.stack([ensemble._probabilities(lg, 2.0) for lg in logits])
    weights = ensemble.greedy_weights(probs, labels)
    assert weights.sum() == pytest.approx(1.0) and weights[0] > 0 and weights[1] > 0 and weights[2] == 0
    mixed = sum(w * p for w, p in zip(weights, probs))
    assert ensemble._nll(mixed, labels) < min(ensemble._nll(p, labels) for p in probs)


def test_complementary_members_are_kept_and_beat_the_best_one_on_held_out_folds() -> None:
    logits, labels = two_experts()
    decision = ensemble.decide(logits, labels, single=0)
    assert decision.kept and decision.used == 2, decision.reason
    assert decision.held_out_loss < decision.single_held_out_loss
    assert decision.held_out_acc >= decision.single_held_out_acc
    assert decision.val_loss < decision.single_val_loss
    assert decision.reason.startswith("kept")


@pytest.mark.parametrize("case", ["copies", "noise", "too_few"])
def test_an_ensemble_that_cannot_help_is_not_kept(case: str) -> None:
    logits, labels = two_experts()
    if case == "copies":  # the same model twice: its mean is itself
        logits = np.stack([logits[0], logits[0]])
    elif case == "noise":  # a strong model and one of random logits
        logits = np.stack([confident(labels, np.random.default_rng(1).random(len(labels)) < 0.95), logits[2]])
    else:
        logits, labels = logits[:, :5], labels[:5]
    decision = ensemble.decide(logits, labels, single=0)
    assert not decision.kept and decision.reason.startswith("not kept"), decision


@pytest.mark.parametrize("loss, acc, kept, says", [
    (0.5, 0.8, True, "kept: on held-out val folds its loss 0.5 beats the best trial's 0.6, accuracy 0.8 against 0.8"),
    (0.5, 0.7, False, "not kept: on held-out val folds its accuracy (0.7) is not better than the best trial's (0.8)"),
    (0.6, 0.9, False, "not kept: on held-out val folds its loss (0.6) is not better than the best trial's (0.6)"),
])
def test_the_held_out_figures_decide_and_the_reason_says_which(loss: float, acc: float, kept: bool, says: str) -> None:
    held = {"held_out_loss": loss, "held_out_acc": acc, "single_held_out_loss": 0.6, "single_held_out_acc": 0.8}
    assert ensemble.judge(held) == (kept, says)


def test_the_ensemble_outputs_the_log_of_its_weighted_calibrated_probabilities() -> None:
    torch.manual_seed(0)
    models = [create_model(3, HP.replace(cnn_width=w)).eval() for w in (4, 8)]
    model = ensemble.assemble(models, [ensemble.NO_BACKBONE] * 2, [0.5, 2.0], [0.25, 0.75])
    x = torch.randn(5, 3, SIZE_PX, SIZE_PX)
    with torch.no_grad():
        expected = 0.25 * F.softmax(models[0](x) / 0.5, 1) + 0.75 * F.softmax(models[1](x) / 2.0, 1)
        torch.testing.assert_close(model(x).exp(), expected)


def test_members_on_one_frozen_backbone_share_one_backbone_pass() -> None:
    hps = [FROZEN, FROZEN.replace(head_units=16, dropout=0.3)]
    models = []
    for hp in hps:
        torch.manual_seed(0)  # the same (stand-in ImageNet) weights, as from one weights file
        models.append(create_model(3, hp, load_weights=False).eval())
    for m in models[1].head.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight)
    backbone_of = ensemble.shared_backbones(models, hps)
    assert backbone_of == [0, 0]
    shared = ensemble.assemble(models, backbone_of, [1.0, 1.0], [0.5, 0.5])
    alone = ensemble.assemble(models, [ensemble.NO_BACKBONE] * 2, [1.0, 1.0], [0.5, 0.5])
    x = torch.randn(2, 3, SIZE_PX, SIZE_PX)
    with torch.no_grad():
        expected = alone(x)
    calls = []
    shared.backbones[0].register_forward_hook(lambda *args: calls.append(1))  # also models[0]'s: counted once
    with torch.no_grad():
        torch.testing.assert_close(shared(x), expected)
    assert len(calls) == 1
    # A backbone whose weights differ is not shared, nor one that trained (unfrozen blocks).
    with torch.no_grad():
        next(models[1].backbone.parameters()).add_(1.0)
    assert ensemble.shared_backbones(models, hps) == [0, 1]
    partial = create_model(3, FROZEN.replace(arch="efficientnet_b0_partial", unfrozen_blocks=1), load_weights=False)
    assert ensemble.shared_backbones([models[0], partial], [hps[0], FROZEN]) == [0, ensemble.NO_BACKBONE]


def arrays(n: int = 60) -> ArrayData:
    rng = np.random.default_rng(0)

    def split(k: int) -> Split:
        return Split(rng.integers(0, 256, (k, SIZE_PX, SIZE_PX, 3), dtype=np.uint8), rng.integers(0, 3, k),
                     tuple(f"{i}.png" for i in range(k)))

    return ArrayData(CLASSES, split(n), split(n), split(n))


def test_member_logits_are_each_models_own() -> None:
    data = arrays()
    models = []
    for width in (4, 8):
        torch.manual_seed(width)
        models.append(create_model(3, HP.replace(cnn_width=width)).eval())
    logits = member_logits(models, [HP.replace(cnn_width=w) for w in (4, 8)], data.val.images)
    assert logits.shape == (2, len(data.val.labels), 3)
    from trainables.loop import predict_logits

    for model, got in zip(models, logits):
        np.testing.assert_allclose(got, predict_logits(model, data.val.images, torch.device("cpu")).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_an_unreadable_member_leaves_the_single_trial_and_says_why() -> None:
    tried = try_ensemble([Member("a", HP, {"model": {}}), Member("b", HP, {"model": {}})], arrays())
    assert not tried.kept and tried.error and tried.to_dict()["reason"].startswith("not tried")


def small_member(trial_id: str, width: int, **extra: object) -> Member:
    hp = HP.replace(cnn_width=width)
    torch.manual_seed(width)
    model = create_model(3, hp)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Member(trial_id, hp, {**checkpoint(model, optimizer, frozen_sha256(model), epoch=1, seed=width), **extra})


def test_the_val_logits_the_checkpoints_keep_decide_without_running_a_model(monkeypatch) -> None:
    (first, second, noise), labels = two_experts()
    data = arrays(len(labels))
    data = ArrayData(CLASSES, data.train, Split(data.val.images, labels, data.val.paths), data.test)
    members = [small_member(t, w, val_logits=torch.as_tensor(lg))
               for t, w, lg in (("a", 4, first), ("b", 8, second), ("c", 6, noise))]
    monkeypatch.setattr("search.best.combine.member_logits", lambda *args: pytest.fail("a model ran on val"))
    tried = try_ensemble(members, data)
    assert tried.kept and [m["trial_id"] for m in tried.members] == ["a", "b"], tried.to_dict()
    assert len(tried.model.members) == 2  # the member of weight 0 is not in the graph
    # Logits that do not fit the val split (another split, an older checkpoint) are computed again.
    monkeypatch.undo()
    short = [small_member(m.trial_id, w, val_logits=torch.zeros(3, 3)) for m, w in zip(members, (4, 8, 6))]
    assert try_ensemble(short, data).decision is not None


def exported_ensemble(out: Path, monkeypatch) -> tuple[ensemble.Ensemble, list[dict]]:
    """Two small CNNs trained to different random weights, forced into a kept ensemble, exported."""
    states = [small_member(f"t{width}", width) for width in (4, 8)]
    kept = ensemble.Decision(True, "kept: forced", ensemble.Fitted([0.7, 1.3], [0.4, 0.6]), 2, 1.0, 0.5, 1.1, 0.5,
                             0.9, 0.5, 1.0, 0.5)
    monkeypatch.setattr("search.best.combine.decide", lambda *args, **kwargs: kept)
    tried = try_ensemble(states, arrays())
    assert tried.kept and [m["trial_id"] for m in tried.members] == ["t4", "t8"], tried.error
    export_best(out, {"model": tried.model.state_dict(), "epoch": 1}, CLASSES, states[0].hp, {"val_acc": 0.5}, "t4",
                SIZE_PX, extra={"ensemble": tried.to_dict()}, members=tried.members)
    return tried.model, tried.members


def test_an_exported_ensemble_loads_in_one_line_and_its_onnx_gives_the_same_outputs(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    model, members = exported_ensemble(tmp_path, monkeypatch)
    meta = json.loads((tmp_path / "best" / "meta.json").read_text())
    assert meta["arch"] == "ensemble" and meta["config"] is None and meta["members"] == members
    assert meta["ensemble"]["kept"] and [m["weight"] for m in meta["ensemble"]["members"]] == [0.4, 0.6]
    x = torch.randn(3, 3, SIZE_PX, SIZE_PX)
    loaded = load_best(tmp_path, "cpu")
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(loaded.model(x), expected)
    session = ort.InferenceSession(str(tmp_path / "best" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {meta["onnx"]["input"]: x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    assert meta["serving"]["onnxruntime_cpu"]["batch1_p50_ms"] > 0
    # A member's config edited (and meta.json resealed) no longer fits the weights: refused.
    edit_meta(tmp_path, lambda m: m["members"][1]["config"].update(cnn_width=16), reseal=True)
    with pytest.raises(ExportError, match="does not fit"):
        load_best(tmp_path, "cpu")


def test_the_experiment_names_the_setting_and_retention_keeps_the_top_trials_for_it(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="Experiment.ensemble"):
        Experiment(name="e", data=str(tmp_path), ensemble="on")
    assert reach(None, ensemble=True).top_k == reach(0.01, ensemble=True).top_k == TOP_K
    assert reach(None, ensemble=True).within is None and reach(None).top_k == 1


@pytest.mark.slow  # a whole search: ~30 s on 2 cores
def test_a_kept_ensemble_is_what_the_search_exports_reports_and_loads(ray_session, coats: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """The whole path, in-process: greedy selection made to weigh every trial but the best one
    (which it may leave out) and the held-out test made to keep it, so the search's end exports,
    reports and loads the ensemble of the other two, led by the better of them."""
    from search import run_search
    from search.report.__main__ import main as report_main
    from tests.conftest import tiny_experiment

    def all_but_the_first(probs: np.ndarray, labels: np.ndarray, rounds: int = 0) -> np.ndarray:
        return np.ones(1) if len(probs) == 1 else np.array([0.0] + [1 / (len(probs) - 1)] * (len(probs) - 1))

    monkeypatch.setattr(ensemble, "greedy_weights", all_but_the_first)
    monkeypatch.setattr(ensemble, "judge", lambda held: (True, "kept: as the test wants"))
    result = run_search(tiny_experiment(tmp_path, coats, trials=3, epochs=2), out=tmp_path / "out", concurrency=2)
    assert result.status == "finished"
    out = tmp_path / "out"
    meta = json.loads((out / "best" / "meta.json").read_text())
    report = result.table
    assert meta["arch"] == "ensemble" and [m["trial_id"] for m in meta["members"]] == list(report["trial_id"][1:])
    assert meta["ensemble"]["kept"] and meta["ensemble"]["reason"] == "kept: as the test wants"
    assert meta["ensemble"]["candidates"] == list(report["trial_id"])  # the best kept its checkpoint: select's
    assert meta["trial_id"] == report["trial_id"].iloc[1] and meta["selection"]["chosen"]["trial_id"] == "ensemble"
    assert meta["selection"]["best"]["trial_id"] == report["trial_id"].iloc[0]
    assert meta["metrics"]["val_loss"] == pytest.approx(meta["ensemble"]["val_loss"])
    assert "file" in meta["onnx"] and meta["serving"]["onnxruntime_cpu"]["batch1_p50_ms"] > 0
    assert result.summary["ensemble"]["exported"] and len(result.summary["ensemble"]["members"]) == 2
    predictor = result.best
    assert len(predictor.model.members) == 2
    predictions = predictor.predict(sorted(coats.glob("test/*/*"))[:6])
    assert predictions["prediction"].notna().all()
    np.testing.assert_allclose(predictions[meta["classes"]].sum(axis=1), 1.0, atol=1e-5)
    page = (out / "report.md").read_text()
    assert f"Winner: an ensemble of 2 trials led by trial {meta['trial_id']}" in page
    members = ", ".join(m["trial_id"] for m in meta["members"])
    assert f"the exported model is the ensemble of trials {members}, not a point of its own" in page
    sentence = next(line for line in page.splitlines() if "**Exported: the ensemble** of trials" in line)
    single = next(r["batch1_p50_ms"] for r in meta["serving_top_k"] if r["trial_id"] == meta["trial_id"])
    assert f"batch-1 p50 {meta['serving']['onnxruntime_cpu']['batch1_p50_ms']:.3g} ms against the best trial's " \
           f"{single:.3g} ms" in sentence
    (out / "report.md").unlink()
    assert report_main([str(out)]) == 0 and (out / "report.md").read_text() == page
    # bench.ensemble's comparison on test/ (the benchmark's alone) still reads this export
    from bench.ensemble import test_figures

    figures = test_figures(out, meta, coats / "test")
    assert set(figures) == {f"{m} test_{w}" for m in ("ensemble", "best trial") for w in ("acc", "loss")}


@pytest.mark.slow  # EfficientNet's ONNX export: ~6 s on 2 cores
def test_heads_on_one_frozen_backbone_export_one_backbone_and_load_back_the_same(tmp_path: Path) -> None:
    hps = [FROZEN, FROZEN.replace(head_units=16)]
    models = []
    for hp in hps:
        torch.manual_seed(0)  # one weights file
        models.append(create_model(3, hp, load_weights=False).eval())
    backbone_of = ensemble.shared_backbones(models, hps)
    model = ensemble.assemble(models, backbone_of, [1.2, 0.8], [0.5, 0.5])
    members = [{"trial_id": f"t{i}", "config": hp.to_dict(), "backbone": g, "temperature": t, "weight": 0.5}
               for i, (hp, g, t) in enumerate(zip(hps, backbone_of, (1.2, 0.8)))]
    export_best(tmp_path, {"model": model.state_dict(), "epoch": 1}, CLASSES, hps[0], {"val_acc": 0.5}, "t0",
                SIZE_PX, members=members)
    weights = torch.load(tmp_path / "best" / "model.pt", weights_only=True)
    assert not any(key.startswith("members.") and ".backbone." in key for key in weights)  # heads only
    assert sum(key.startswith("backbones.0.") for key in weights) == len(models[0].backbone.state_dict())
    x = torch.randn(2, 3, SIZE_PX, SIZE_PX)
    with torch.no_grad():
        torch.testing.assert_close(load_best(tmp_path, "cpu").model(x), model(x))
