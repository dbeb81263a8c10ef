"""Checkpoint bytes per epoch, before (the whole model) and now (what training changes).

    python -m bench.checkpoint_size [--size-px 75] [--json PATH]

Trains one epoch of each tutorial architecture with `trainables.loop.fit` on generated data
(Inception with stand-in ImageNet weights, as `python -m bench` does) and writes the epoch's
checkpoint both ways: "before" the whole state dict with the optimizer's and the loop's state,
as checkpoints were until they became slim (`torch.save`); "now" what `fit` reports, as a
trial writes it (`save_checkpoint`). "tensors" counts the bytes of the tensors a checkpoint
must hold (trainable parameters, moving buffers, optimizer state); "raw write" the time of
writing that many bytes to a file, the floor of any format; "written then copied" how a trial's
report wrote "now" until it wrote it in place: into a temporary folder, then Ray Train's copy into OUT.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.cases import stand_in_imagenet_weights
from bench.measure import HP, VAL_FRACTION
from search.data.generated import generate_coats
from trainables import data
from trainables.loop import fit
from trainables.state import FROZEN_SHA256, TRAINABLE, save_checkpoint, tensor_bytes

CASES = {
    "small_cnn": HP,
    "inception_frozen": HP.replace(arch="inception_frozen", weights="imagenet", augment=0.0),
    "inception_partial": HP.replace(arch="inception_partial", weights="imagenet", unfrozen_blocks=2, augment=0.0),
}
WRITES = 9  # rounds of writes; the fastest is reported, as `python -m bench` reports its rounds


def _write_s(writers: dict[str, Callable[[Any], object]], folder: Path) -> dict[str, float]:
    """The fewest seconds each writer takes to write its file, the writers taking turns so that
    a busy moment of the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in writers}
    for _ in range(WRITES):
        for name, write in writers.items():
            path = folder / f"write-{name}"
            started = time.perf_counter()
            write(path)
            times[name].append(time.perf_counter() - started)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return {name: min(seconds) for name, seconds in times.items()}


def _written_then_copied(state: dict[str, Any], path: Path) -> None:
    """How a report wrote a checkpoint until it was written in place: into the worker's own
    temporary folder, then copied by Ray Train into OUT (`persist_current_checkpoint`, Ray 2.60)."""
    import pyarrow.fs
    from ray.train.v2._internal.execution.storage import _pyarrow_fs_copy_files

    with tempfile.TemporaryDirectory(dir=path.parent) as own:
        save_checkpoint(state, Path(own) / "state.pt")
        local = pyarrow.fs.LocalFileSystem()
        path.mkdir()
        _pyarrow_fs_copy_files(own, str(path), source_filesystem=local, destination_filesystem=local)


def measure(name: str, arrays: data.ArrayData, folder: Path) -> dict[str, Any]:
    """One epoch of `name`; the bytes and write times of its checkpoint before and now."""
    states: list[dict[str, Any]] = []
    model = fit(CASES[name], arrays, 1, lambda metrics, state: states.append(state), device=torch.device("cpu"))
    now = states[-1]
    loop = {key: value for key, value in now.items() if key not in (TRAINABLE, FROZEN_SHA256, "seed")}
    before = {**loop, "model": model.state_dict()}
    raw = bytes(tensor_bytes(now))
    writers = {"before": lambda path: torch.save(before, path), "now": lambda path: save_checkpoint(now, path),
               "raw": lambda path: path.write_bytes(raw), "copied": lambda path: _written_then_copied(now, path)}
    sizes = {}
    for label in ("before", "now"):
        buffer = io.BytesIO()
        writers[label](buffer)
        sizes[label] = buffer.tell()
    seconds = _write_s(writers, folder)
    return {"arch": name, "before_bytes": sizes["before"], "now_bytes": sizes["now"], "tensor_bytes": len(raw),
            "now_vs_tensors": sizes["now"] / len(raw), **{f"{key}_write_s": value for key, value in seconds.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-px", type=int, default=75, help="image size (Inception's smallest: 75)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = generate_coats(work / "coats", train_per_class=16, test_per_class=4, size_px=args.size_px, seed=1)
        arrays = data.load(data.prepare(root, args.size_px, VAL_FRACTION, 0, work / "cache").path)
        with stand_in_imagenet_weights(arrays, CASES["inception_frozen"], torch.device("cpu"), work / "torch"):
            rows = [measure(name, arrays, work) for name in CASES]
    print("| arch | before (MB) | now (MB) | tensors (MB) | now / tensors | before write (ms) | now write (ms) "
          "| raw write (ms) | written then copied (ms) |\n" + "| --- " + "| ---: " * 8 + "|")
    for row in rows:
        print(f"| {row['arch']} | {row['before_bytes'] / 1e6:.2f} | {row['now_bytes'] / 1e6:.3f} | "
              f"{row['tensor_bytes'] / 1e6:.3f} | {row['now_vs_tensors']:.3f} | {row['before_write_s'] * 1e3:.1f} | "
              f"{row['now_write_s'] * 1e3:.1f} | {row['raw_write_s'] * 1e3:.1f} | {row['copied_write_s'] * 1e3:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
