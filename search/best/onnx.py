"""Writes `best/model.onnx`: the best model for tools outside PyTorch (ONNX Runtime, TensorRT, OpenVINO).

torch's ONNX exporter (`torch.export` based, the default since torch 2.9) prints progress,
graphs and logging warnings, pages of them when a model does not export; all of it goes to a
log file instead of the console. A model that does not export is recorded, not raised: the
caller still has `model.pt`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.state.names import ONNX_FILE, ONNX_LOG

OPSET = 18  # ONNX Runtime has run opset 18 since 1.14 (2023); the exporter's own default
INPUT, OUTPUT, BATCH = "image", "logits", "batch"
_EXAMPLE_BATCH = 2  # an example batch of 1 would let torch.export specialise the batch size to 1
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_onnx(model: nn.Module, folder: Path, image_size_px: int, quick: bool = False) -> dict[str, Any]:
    """Write `folder/model.onnx` from `model` (eval mode, CPU, fp32) with a dynamic batch size.

    Returns meta.json's "onnx" entry: file, opset, input and output names and shapes, or, when
    the export fails, {"error": why, "log": the log file} and no model.onnx.

    `quick`: try torch's older TorchScript exporter first, for a file only timed, never
    shipped (`search.best.candidates`): an Inception v3 exports in ~1 s that way against ~11 s
    through `torch.export`. It refuses some graphs (the small CNN's adaptive pooling to a size
    that does not divide its input), which then take the usual path.
    """
    target = folder / ONNX_FILE
    example = torch.rand(_EXAMPLE_BATCH, 3, image_size_px, image_size_px)
    log = folder / ONNX_LOG
    if quick and _torchscript_export(model, example, target, log):
        log.unlink()
        return _entry(image_size_px)
    try:
        with tempfile.TemporaryDirectory() as artifacts, _output_to(log):
            program = torch.onnx.export(
                model.eval().cpu().float(), (example,), input_names=[INPUT], output_names=[OUTPUT],
                opset_version=OPSET, dynamic_shapes=({0: torch.export.Dim(BATCH, min=1)},),
                external_data=False, verbose=False, artifacts_dir=artifacts)
            program.save(target, external_data=False)
    except Exception as err:  # whatever the exporter raises, model.pt is complete and usable
        from search.state.disk import full_reason

        if full_reason(err):  # but a full disk is not the exporter's failure: the export as a whole fails
            target.unlink(missing_ok=True)
            raise
        with log.open("a") as file:
            file.write("\n" + "".join(traceback.format_exception(err)))
        target.unlink(missing_ok=True)
        return {"error": _reason(err), "log": ONNX_LOG}
    log.unlink()
    return _entry(image_size_px)


def _entry(image_size_px: int) -> dict[str, Any]:
    return {"file": ONNX_FILE, "opset": OPSET, "input": INPUT, "output": OUTPUT,
            "input_shape": [BATCH, 3, image_size_px, image_size_px], "output_shape": [BATCH, "classes"],
            "dynamic_axes": {INPUT: {"0": BATCH}, OUTPUT: {"0": BATCH}}}


def _torchscript_export(model: nn.Module, example: torch.Tensor, target: Path, log: Path) -> bool:
    """Whether torch's TorchScript-based exporter wrote `target` (its warnings go to `log`)."""
    try:
        with _output_to(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval().cpu().float(), (example,), str(target), input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=OPSET, dynamo=False,
                              dynamic_axes={INPUT: {0: BATCH}, OUTPUT: {0: BATCH}})
    except Exception:  # noqa: BLE001 - any refusal means: take the usual exporter
        target.unlink(missing_ok=True)
        return False
    return True


def _reason(err: BaseException) -> str:
    """The first line of the error and of its cause: torch's messages run to pages."""
    parts = []
    while err is not None and len(parts) < 2:
        first = _ANSI.sub("", str(err)).strip().splitlines()
        parts.append(f"{type(err).__name__}: {first[0] if first else ''}"[:300])
        err = err.__cause__
    return " (caused by ".join(parts) + ")" * (len(parts) - 1)


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Send stdout and stderr to `log`, at the file-descriptor level: torch's logging handlers
    hold the original streams and some messages come from C++. Output of other threads in
    these seconds lands in the log too."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with log.open("w") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
