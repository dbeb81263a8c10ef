"""The data cases of `python -m bench`: the decoded cache's build, reuse and load, and one
epoch of data work the naive way and ours, with no model; photo-sized JPEGs decoded, from a
folder and from S3."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from bench.inputs import cached_batches, naive_batches, naive_loader
from bench.measure import CPUS, VAL_FRACTION, Batches, Measure, interleaved, timed
from bench.records import NAIVE, Record, record, vs_baseline
from trainables import data


def data_cases(root: Path, size_px: int, device: torch.device, batch_size: int, cache_dir: Path,
               rounds: int) -> list[Record]:
    """Cache build (cold: a new folder each round), reuse and load, then one epoch of data work
    the naive way (0 and all-core workers, started each epoch as a plain DataLoader does) and ours."""
    cpu = torch.device("cpu")
    files = sum(len(items) for items in data.scan(root).files.values())
    cache = data.prepare(root, size_px, VAL_FRACTION, 0, cache_dir / "arrays").path
    arrays = data.load(cache)
    generator = torch.Generator(device=device).manual_seed(0)
    next(cached_batches(arrays.train, batch_size, device, generator, 0))  # warm-up: kernels, allocator

    def prepare(round_: int, reused: bool) -> int:
        prepared = data.prepare(root, size_px, VAL_FRACTION, 0, cache_dir / f"round{round_}")
        assert prepared.reused == reused, f"{prepared.path}: expected reused={reused}"
        return files

    def load() -> int:
        loaded = data.load(cache)
        return sum(len(split.labels) for split in (loaded.train, loaded.val, loaded.test))

    def epoch(batches: Callable[[int], Batches]) -> Measure:
        return lambda round_: timed(device, lambda: sum(len(labels) for _, labels in batches(round_)))

    def naive(workers: int) -> Measure:
        return epoch(lambda _: naive_batches(naive_loader(root, size_px, workers, batch_size), device))

    measures: dict[str, Measure] = {
        "cache build: decode every JPEG once (cold)": lambda r: timed(cpu, lambda: prepare(r, reused=False)),
        "cache reuse: content hash only": lambda r: timed(cpu, lambda: prepare(r, reused=True)),
        "cache load: read the .npz": lambda r: timed(cpu, load),
        **{f"{NAIVE} data epoch: PIL decode + augment, DataLoader {w} workers": naive(w) for w in sorted({0, CPUS})},
        "cached data epoch: uint8 cache + batched augment":
            epoch(lambda r: cached_batches(arrays.train, batch_size, device, generator, r + 1)),
    }
    common = {"arch": None, "device": device.type, "size_px": size_px, "batch_size": batch_size}
    return [record(case, results, **common) for case, results in interleaved(measures, rounds).items()]


def decode_cases(photos: Path, size_px: int, rounds: int) -> list[Record]:
    """Photo-sized JPEGs decoded to `size_px`: one file after another in full, as before
    (the baseline), against reduced-size decoding, every core, and both (the cache build's way)."""
    from trainables import parallel

    paths = sorted(photos.rglob("*.jpg"))

    def decoding(workers: int, reduced: bool) -> Measure:
        return lambda _: timed(torch.device("cpu"), lambda: sum(
            not isinstance(r, str) for r in parallel.decode_files(paths, size_px, workers=workers, reduced=reduced)))

    cores = parallel.cores()
    baseline = "decode: full, one file after another (before)"
    measures: dict[str, Measure] = {
        baseline: decoding(1, False),
        "decode: reduced-size (draft), one process": decoding(1, True),
        f"decode: full, {cores} processes": decoding(cores, False),
        f"decode: reduced-size, {cores} processes (now)": decoding(cores, True),
    }
    common = {"arch": None, "device": "cpu", "size_px": size_px, "batch_size": None, "photos": len(paths)}
    return vs_baseline([record(case, results, **common) for case, results in interleaved(measures, rounds).items()],
                       baseline)


def remote_cases(photos: Path, size_px: int, rounds: int, work: Path) -> list[Record]:
    """`--data s3://...`'s first run, from the local S3 server (bench/s3.py): the photos
    mirrored, then decoded (as before, the baseline) against decoded on every core as their
    downloads land (now). A new cache folder each round, so every round downloads and decodes
    all. A local server answers faster than S3 across a network, so the overlap measured here
    is a floor of what a real bucket gains."""
    from bench.s3 import local_s3, upload
    from search.data import remote
    from trainables import parallel

    files = sum(len(items) for items in data.scan(photos).files.values())
    with local_s3(work / "s3.log") as s3_uri:
        uri = s3_uri("bench-photos/photos")
        upload(photos, uri)

        def first_run(round_: int, overlapped: bool) -> int:
            cache_dir = work / f"remote-{'now' if overlapped else 'before'}-{round_}"
            with parallel.Prefetch(size_px) if overlapped else contextlib.nullcontext() as prefetch:
                folder, downloaded, _ = remote.mirror(uri, cache_dir, lambda done, total: None,
                                                      ready=prefetch.add if prefetch else None)
                prepared = data.prepare(folder, size_px, VAL_FRACTION, 0, cache_dir, prefetch=prefetch)
            assert downloaded == files and not prepared.reused, f"{cache_dir}: a round must start cold"
            shutil.rmtree(cache_dir)
            return files

        cpu = torch.device("cpu")
        baseline = "s3 data, first run: mirror, then decode (before)"
        measures: dict[str, Measure] = {
            baseline: lambda r: timed(cpu, lambda: first_run(r, overlapped=False)),
            "s3 data, first run: decode on every core as downloads land (now)":
                lambda r: timed(cpu, lambda: first_run(r, overlapped=True)),
        }
        results = interleaved(measures, rounds)
    common = {"arch": None, "device": "cpu", "size_px": size_px, "batch_size": None, "photos": files}
    return vs_baseline([record(case, runs, **common) for case, runs in results.items()], baseline)
