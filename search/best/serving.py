"""What the exported model costs to serve, measured at export: its size, and onnxruntime's
CPU latency (batch 1, p50 and p95) and throughput (batch 32) on the machine that exported it.

The figures go to meta.json's "serving" and the report. They are this machine's: another CPU
(or a GPU provider) gives others, so they are recorded with the CPU and how many of them the process could use.
Each measurement stops after `BUDGET_S` seconds, so a large model at 299 px costs an export
seconds, not minutes.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

WARMUP_RUNS = 3
LATENCY_RUNS = 500  # a sub-millisecond model needs hundreds for a stable p50; BUDGET_S bounds a slow one
THROUGHPUT_RUNS = 5
THROUGHPUT_BATCH = 32
BUDGET_S = 4.0


def measure(model: nn.Module, folder: Path, model_file: str, onnx: dict[str, Any],
            image_size_px: int) -> dict[str, Any]:
    """meta.json's "serving": parameters, file sizes and, when model.onnx was written, its
    onnxruntime CPU figures (or why they are missing)."""
    cost: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()),
                            "model_pt_bytes": (folder / model_file).stat().st_size}
    if "file" not in onnx:
        return {**cost, "onnxruntime_cpu": {"error": "no model.onnx to measure"}}
    cost["onnx_bytes"] = (folder / onnx["file"]).stat().st_size
    try:
        cost["onnxruntime_cpu"] = onnxruntime_cpu(folder / onnx["file"], onnx["input"], image_size_px)
    except Exception as err:  # a measurement, not the export: a failure is recorded, never raised
        cost["onnxruntime_cpu"] = {"error": f"{type(err).__name__}: {err}"}
    return cost


def onnxruntime_cpu(onnx_file: Path, input_name: str, image_size_px: int,
                    budget_s: float = BUDGET_S) -> dict[str, Any]:
    """Batch-1 latency (ms, p50 and p95 over up to `LATENCY_RUNS` runs) and batch-32
    throughput (images/s, the best of up to `THROUGHPUT_RUNS` runs) with onnxruntime's CPU
    provider; each of the two measurements stops after `budget_s` seconds."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    one = rng.random((1, 3, image_size_px, image_size_px), dtype=np.float32)
    batch = rng.random((THROUGHPUT_BATCH, 3, image_size_px, image_size_px), dtype=np.float32)
    for _ in range(WARMUP_RUNS):
        session.run(None, {input_name: one})
    latencies = _timed(lambda: session.run(None, {input_name: one}), LATENCY_RUNS, budget_s)
    session.run(None, {input_name: batch})
    batches = _timed(lambda: session.run(None, {input_name: batch}), THROUGHPUT_RUNS, budget_s)
    latencies_ms = sorted(1000 * s for s in latencies)
    return {"batch1_p50_ms": round(statistics.median(latencies_ms), 3),
            "batch1_p95_ms": round(latencies_ms[min(len(latencies_ms) - 1, int(0.95 * len(latencies_ms)))], 3),
            "batch1_runs": len(latencies_ms),
            f"batch{THROUGHPUT_BATCH}_images_per_s": round(THROUGHPUT_BATCH / min(batches), 1), **machine()}


def machine() -> dict[str, Any]:
    """What the figures depend on besides the graph: the CPUs this process may use, the CPU, onnxruntime."""
    import onnxruntime as ort

    return {"cpus": _cpus(), "cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__}


def _timed(call: Any, runs: int, budget_s: float) -> list[float]:
    """Seconds of each of up to `runs` calls, stopping once `budget_s` is spent (at least one)."""
    seconds: list[float] = []
    started = time.perf_counter()
    while len(seconds) < runs and (not seconds or time.perf_counter() - started < budget_s):
        before = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - before)
    return seconds


def _cpus() -> int:
    """The CPUs this process may use (onnxruntime's default threads follow the cores)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
