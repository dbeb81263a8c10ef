"""The top trials as one model: calibrated members, weights chosen on val, kept only when it helps.

`Experiment(ensemble="auto")`: after the search, the leaderboard's top trials (up to
`search.best.select.TOP_K`) are candidate members. Each member's probabilities are calibrated
by its own temperature (`search.best.calibration`), and greedy forward selection with
replacement (Caruana et al., 2004) adds, one at a time, the member that lowers the val loss of
the weighted mean of probabilities most, until none does.

The weights and temperatures are fitted on the val split, so the val loss they reach is
optimistic. Whether to keep the ensemble is therefore decided on held-out folds of val
(`decide`): the whole procedure (temperatures, then weights) is fitted on all folds but one and
scored on the one left out, for the ensemble and for the single best trial alike. The ensemble
is kept only when its held-out loss is lower and its held-out accuracy no lower; the exported
weights are then fitted on the whole val split.

`Ensemble` is one `nn.Module` with the single model's input and output (log-probabilities,
which a softmax turns back into the ensemble's probabilities), so the export, the loader,
`search.serve` and ONNX clients treat it as any model. Members whose backbone is frozen and
identical (ImageNet weights, no block unfrozen: the tutorials' main recipe) share one backbone:
one backbone pass, then a small head each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search.best.calibration import fit_temperature, softmax
from trainables.hparams import HParams
from trainables.models import BackboneClassifier, create_model

ROUNDS = 10  # additions after the first member: weights in tenths at most, and little to overfit
FOLDS = 5  # held-out folds of val that decide whether the ensemble is kept
MIN_FOLD_IMAGES = 2  # a fold smaller than this scores nothing: too little val to decide on
EPS = 1e-12
NO_BACKBONE = -1  # a member computed whole, from the image (`Ensemble.backbone_of`)


class Ensemble(nn.Module):
    """The weighted mean of members' calibrated probabilities, as log-probabilities [B, classes].

    `members[i]` is a whole model (`backbone_of[i] == NO_BACKBONE`) or the head of one whose
    frozen backbone is `backbones[backbone_of[i]]`, computed once for every head that shares it."""

    def __init__(self, members: Sequence[nn.Module], backbones: Sequence[nn.Module], backbone_of: Sequence[int],
                 temperatures: Sequence[float], weights: Sequence[float]) -> None:
        super().__init__()
        if not (len(members) == len(backbone_of) == len(temperatures) == len(weights)) or not members:
            raise ValueError("an ensemble needs one backbone index, temperature and weight per member, and a member")
        self.members = nn.ModuleList(members)
        self.backbones = nn.ModuleList(backbones)
        self.backbone_of = [int(i) for i in backbone_of]
        total = float(sum(weights))
        self.register_buffer("temperatures", torch.tensor([float(t) for t in temperatures]))
        self.register_buffer("log_weights", torch.tensor([math.log(float(w) / total) for w in weights]))

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's own logits (before its temperature), each shared backbone run once."""
        features = [backbone(x) for backbone in self.backbones]
        return [member(x if i == NO_BACKBONE else features[i]) for member, i in zip(self.members, self.backbone_of)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [F.log_softmax(logits.float() / self.temperatures[m], dim=1) + self.log_weights[m]
                 for m, logits in enumerate(self.member_logits(x))]
        return torch.logsumexp(torch.stack(parts), dim=0)


class MemberLogits(nn.Module):
    """An ensemble's members' logits side by side [B, members x classes], for one pass over
    images with `trainables.loop.predict_logits` (which joins batches along the first axis)."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([logits.float() for logits in self.ensemble.member_logits(x)], dim=1)


def shared_backbones(models: Sequence[nn.Module], hps: Sequence[HParams]) -> list[int]:
    """For each model, the index of the shared backbone it uses, or NO_BACKBONE. Backbones are
    shared between frozen ones of the same architecture and weights whose weights are equal."""
    groups: list[tuple[str, str, nn.Module]] = []
    backbone_of = []
    for model, hp in zip(models, hps):
        index = NO_BACKBONE
        if isinstance(model, BackboneClassifier) and model.frozen:
            for g, (arch, weights, backbone) in enumerate(groups):
                if (arch, weights) == (hp.arch, hp.weights) and _equal(backbone, model.backbone):
                    index = g
                    break
            else:
                groups.append((hp.arch, hp.weights, model.backbone))
                index = len(groups) - 1
        backbone_of.append(index)
    return backbone_of


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def assemble(models: Sequence[nn.Module], backbone_of: Sequence[int], temperatures: Sequence[float],
             weights: Sequence[float]) -> Ensemble:
    """The ensemble of `models` (eval mode): a model sharing backbone g contributes its head, and
    the first model of group g its backbone."""
    backbones: dict[int, nn.Module] = {}
    members: list[nn.Module] = []
    for model, g in zip(models, backbone_of):
        if g == NO_BACKBONE:
            members.append(model)
            continue
        if not isinstance(model, BackboneClassifier):
            raise ValueError(f"member {len(members)} shares backbone {g} but has no backbone of its own")
        backbones.setdefault(g, model.backbone)
        members.append(model.head)
    if sorted(backbones) != list(range(len(backbones))):
        raise ValueError(f"backbone indices {sorted(backbones)} are not 0..{len(backbones) - 1}")
    return Ensemble(members, [backbones[g] for g in range(len(backbones))], backbone_of, temperatures, weights).eval()


def build(num_classes: int, members: Sequence[dict[str, Any]]) -> Ensemble:
    """An ensemble laid out as meta.json's `members` describe it (config, backbone, temperature,
    weight), with random weights: for an exported state dict to load into."""
    models = [create_model(num_classes, HParams.from_dict(m["config"]), load_weights=False) for m in members]
    return assemble(models, [m["backbone"] for m in members], [m["temperature"] for m in members],
                    [m["weight"] for m in members])


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, None)).mean())


def _acc(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(torch.as_tensor(logits), temperature).astype(np.float64)


def greedy_weights(probs: np.ndarray, labels: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """Weights (summing to 1) of `probs` [members, N, classes] by greedy forward selection with
    replacement: the member of lowest loss first, then whichever addition lowers the loss of the
    mean most, until none does or `rounds` are added. Ties go to the earlier member."""
    counts = np.zeros(len(probs))
    first = int(np.argmin([_nll(p, labels) for p in probs]))
    counts[first], total = 1, probs[first].copy()
    current = _nll(total, labels)
    for _ in range(rounds):
        scores = [_nll((total + p) / (counts.sum() + 1), labels) for p in probs]
        pick = int(np.argmin(scores))
        if not scores[pick] < current - EPS:
            break
        counts[pick] += 1
        total += probs[pick]
        current = scores[pick]
    return counts / counts.sum()


@dataclass(frozen=True)
class Fitted:
    """Temperatures and weights of the members, fitted on some images."""

    temperatures: list[float]
    weights: list[float]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The ensemble's probabilities from the members' logits [members, N, classes]."""
        return sum(w * _probabilities(lg, t) for lg, t, w in zip(logits, self.temperatures, self.weights))


def fit(logits: np.ndarray, labels: np.ndarray, rounds: int = ROUNDS) -> Fitted:
    """Each member's temperature, then the greedy weights of the calibrated members."""
    temperatures = [fit_temperature(torch.as_tensor(lg), labels) for lg in logits]
    probs = np.stack([_probabilities(lg, t) for lg, t in zip(logits, temperatures)])
    return Fitted(temperatures, [float(w) for w in greedy_weights(probs, labels, rounds)])


@dataclass(frozen=True)
class Decision:
    """Whether the ensemble is kept, its weights on the whole val split, and the figures behind it:
    `held_out_*` on the val folds left out of the fit, for the ensemble and the single best; `val_*`
    in-sample on the whole val split (the exported model's)."""

    kept: bool
    reason: str
    fitted: Fitted
    used: int  # members of nonzero weight
    held_out_loss: float | None
    held_out_acc: float | None
    single_held_out_loss: float | None
    single_held_out_acc: float | None
    val_loss: float
    val_acc: float
    single_val_loss: float
    single_val_acc: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(logits: np.ndarray, labels: np.ndarray, single: int, seed: int = 0, folds: int = FOLDS,
           rounds: int = ROUNDS) -> Decision:
    """Whether the ensemble of the members whose val logits are `logits` [members, N, classes]
    beats the single member `single` (the best trial), on held-out folds of val (see the module)."""
    labels = np.asarray(labels, dtype=np.int64)
    fitted = fit(logits, labels, rounds)
    alone = fit(logits[single:single + 1], labels)
    ens_p, one_p = fitted.probabilities(logits), alone.probabilities(logits[single:single + 1])
    figures = dict(val_loss=_nll(ens_p, labels), val_acc=_acc(ens_p, labels), single_val_loss=_nll(one_p, labels),
                   single_val_acc=_acc(one_p, labels))
    used = sum(w > 0 for w in fitted.weights)
    if used < 2:
        return Decision(False, "not kept: greedy selection on val added no member to the best one", fitted, used,
                        None, None, None, None, **figures)
    order = np.random.default_rng(seed).permutation(len(labels))
    parts = [part for part in np.array_split(order, folds) if len(part) >= MIN_FOLD_IMAGES]
    if len(parts) < 2:
        return Decision(False, f"not kept: {len(labels)} val images are too few to decide on held-out folds", fitted,
                        used, None, None, None, None, **figures)
    ens_held, one_held = np.zeros((len(labels), logits.shape[2])), np.zeros((len(labels), logits.shape[2]))
    best = logits[single:single + 1]
    for part in parts:
        rest = np.setdiff1d(order, part)
        ens_held[part] = fit(logits[:, rest], labels[rest], rounds).probabilities(logits[:, part])
        one_held[part] = fit(best[:, rest], labels[rest]).probabilities(best[:, part])
    scored = np.concatenate(parts)
    ens_held, one_held, truth = ens_held[scored], one_held[scored], labels[scored]
    held = dict(held_out_loss=_nll(ens_held, truth), held_out_acc=_acc(ens_held, truth),
                single_held_out_loss=_nll(one_held, truth), single_held_out_acc=_acc(one_held, truth))
    kept, reason = judge(held)
    return Decision(kept, reason, fitted, used, **held, **figures)


def judge(held: dict[str, float]) -> tuple[bool, str]:
    """Whether the held-out figures keep the ensemble (lower loss, no lower accuracy than the
    best trial's), and the reason in words."""
    better = held["held_out_loss"] < held["single_held_out_loss"]
    no_worse = held["held_out_acc"] >= held["single_held_out_acc"]
    if better and no_worse:
        return True, (f"kept: on held-out val folds its loss {held['held_out_loss']:.4g} beats the best trial's "
                      f"{held['single_held_out_loss']:.4g}, accuracy {held['held_out_acc']:.4g} against "
                      f"{held['single_held_out_acc']:.4g}")
    what, key = ("loss", "loss") if not better else ("accuracy", "acc")
    return False, (f"not kept: on held-out val folds its {what} ({held[f'held_out_{key}']:.4g}) is not better than "
                   f"the best trial's ({held[f'single_held_out_{key}']:.4g})")
