"""Tries the ensemble of the top trials at export (`Experiment.ensemble="auto"`): their val
logits as their checkpoints keep them (or, for checkpoints without them, from their models in
one pass over val, shared backbones once), the decision of `search.best.ensemble.decide`, and
the model to export, built from the members it uses, when it is kept.

A failure here never costs the search its export: it is recorded, and the single trial goes out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from search.best.ensemble import NO_BACKBONE, Decision, Ensemble, MemberLogits, assemble, decide, shared_backbones
from trainables.data import ArrayData
from trainables.hparams import HParams
from trainables.loop import VAL_LOGITS, default_device, predict_logits
from trainables.state import restore_model

logger = logging.getLogger(__name__)
ENSEMBLE_ID = "ensemble"  # the exported ensemble's name where a trial id would stand (selection, plots)


@dataclass(frozen=True)
class Member:
    """A candidate member: a top trial, its hyperparameters and its best checkpoint's state."""

    trial_id: str
    hp: HParams
    state: dict[str, Any]


@dataclass
class Tried:
    """What trying the ensemble gave: the decision (None when it could not be tried), the model
    to export and meta.json's members when it is kept, and why not otherwise."""

    candidates: list[str]
    decision: Decision | None = None
    model: Ensemble | None = None
    members: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)  # its serving cost, where measured as a candidate

    @property
    def kept(self) -> bool:
        return self.model is not None

    def to_dict(self) -> dict[str, Any]:
        """meta.json's and the report's "ensemble" (the members' configs are in meta.json's "members")."""
        decision = self.decision.to_dict() if self.decision else {}
        decision.pop("fitted", None)
        reason = self.error or (self.decision.reason if self.decision else "not tried")
        return {"candidates": self.candidates, "kept": self.kept, "reason": reason, "seconds": round(self.seconds, 2),
                **({"serving": self.figures} if self.figures else {}),
                "members": [{k: m[k] for k in ("trial_id", "weight", "temperature", "backbone")} for m in self.members],
                **decision}


def try_ensemble(members: list[Member], arrays: ArrayData, seed: int = 0) -> Tried:
    """The ensemble of `members` (the leaderboard's top trials, the best first), kept when
    `decide` says it beats the best one; never raises."""
    started = time.perf_counter()
    tried = Tried([m.trial_id for m in members])
    try:
        logits = stored_logits(members, arrays)
        if logits is None:  # checkpoints of an older version: the members run on val once
            models = [restore_model(len(arrays.classes), m.hp, m.state) for m in members]
            logits = member_logits(models, [m.hp for m in members], arrays.val.images)
        tried.decision = decide(logits, arrays.val.labels, single=0, seed=seed)
        if tried.decision.kept:
            fitted = tried.decision.fitted
            used = [i for i, w in enumerate(fitted.weights) if w > 0]
            chosen = [restore_model(len(arrays.classes), members[i].hp, members[i].state) for i in used]
            backbone_of = shared_backbones(chosen, [members[i].hp for i in used])
            tried.model = assemble(chosen, backbone_of, [fitted.temperatures[i] for i in used],
                                   [fitted.weights[i] for i in used])
            tried.members = [{"trial_id": members[i].trial_id, "config": members[i].hp.to_dict(), "backbone": g,
                              "temperature": fitted.temperatures[i], "weight": fitted.weights[i]}
                             for i, g in zip(used, backbone_of)]
    except Exception as err:  # noqa: BLE001 (see the module docstring)
        logger.warning("the ensemble of the top trials was not tried: %s: %s", type(err).__name__, err)
        tried.error = f"not tried: {type(err).__name__}: {err}"[:300]
        tried.model, tried.members = None, []
    tried.seconds = time.perf_counter() - started
    return tried


def stored_logits(members: list[Member], arrays: ArrayData) -> np.ndarray | None:
    """The members' val logits as their checkpoints keep them [members, N, classes] (what the
    trial computed at that epoch), or None when one lacks them or they do not fit the val split."""
    shape = (len(arrays.val.labels), len(arrays.classes))
    found = [m.state.get(VAL_LOGITS) for m in members]
    if any(not isinstance(f, torch.Tensor) or tuple(f.shape) != shape for f in found):
        return None
    return np.stack([f.float().numpy() for f in found])


def member_logits(models: list[nn.Module], hps: list[HParams], images: np.ndarray) -> np.ndarray:
    """Each model's logits for `images`, [models, N, classes], in one pass over the images, each
    frozen backbone the models share computed once."""
    backbone_of = shared_backbones(models, hps)
    probe = assemble(models, backbone_of, [1.0] * len(models), [1.0] * len(models))
    joined = predict_logits(MemberLogits(probe), images, default_device()).numpy()
    return joined.reshape(len(images), len(models), -1).transpose(1, 0, 2)


def shares(members: list[dict[str, Any]]) -> int:
    """How many members share a backbone with another (for the report's sentence)."""
    groups = [m["backbone"] for m in members if m["backbone"] != NO_BACKBONE]
    return sum(groups.count(g) for g in set(groups) if groups.count(g) > 1)
