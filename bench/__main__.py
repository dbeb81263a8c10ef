"""Benchmark our data and training path against the classic tutorials' naive one, side by side.

`python -m bench [--device cpu|cuda] [--quick] [--json FILE] [--cases CASE ...] [--images N] [--size-px PX]`

Generates a data set of JPEGs, then measures in one run: building and reusing our decoded
cache, one epoch of data work the naive way (torchvision `ImageFolder`, PIL decode and
augment per image, a `DataLoader`) and our way (uint8 cache, batched augment on the device),
and per architecture a training step fed each way, plus the model alone (the ceiling); then
(`search.bench_cases`) the frozen-feature cache against running the backbone every epoch, and
several training processes sharing the device against one alone. Every claim about speed
should be a ratio between cases of one run: the machine is the same, its load is the same.
No Ray in these, so the figures are the data path's and the model's, not Tune's; the
`startup` case, asked for on its own, runs a tiny search on a local Ray and reports how long
its trials took to start.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from search.spec import INCEPTION_MIN_SIZE_PX
from trainables import data
from trainables.augment import augment
from trainables.loop import MEAN, STD, normalize, to_input
from trainables.models import REGISTRY, create_model
from trainables.optimizers import create_optimizer
from search.datasets.generated import CLASSES, generate_coats

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
Measure = Callable[[int], tuple[int, float]]  # round -> (images, seconds)
Record = dict[str, Any]

ARCHS = tuple(REGISTRY)
# The tutorials' recipes: the cats-vs-dogs convnet (32-64-128-128) at 150 px, Inception v3
# at 299 px with a Dense 128 head; RMSprop 1e-4, batch 32, full augmentation.
USUAL_PX = {"small_cnn": 150, "inception_frozen": 299, "inception_partial": 299}
HP: dict[str, Any] = {"cnn_width": 32, "cnn_depth": 4, "augment": 1.0, "optimizer": "rmsprop", "lr": 1e-4,
                      "momentum": None, "dropout": 0.2, "weights": "none", "unfrozen_blocks": 2, "head_units": 128}
BATCH_SIZE = 32
VAL_FRACTION = 0.2
WARMUP_BATCHES = 2
TIMED_BATCHES = {"quick": 5, "full": 50}  # per round
ROUNDS = 3
IMAGES = {"quick": 800, "full": 4000}
SIZE_PX = {"quick": 96, "full": 299}
CPUS = len(os.sched_getaffinity(0))
NAIVE = "naive"  # every baseline case has this word in its name; ratios are against them
ONE_OFF = ("cache reuse", "cache load")  # not a pass over the data: no ratio to an epoch
CASES = ("data", "train", "features", "sharing", "startup")
IN_ALL = ("data", "train", "features", "sharing")  # startup starts Ray and runs a search: asked for by name
SHARING = 4  # processes sharing the device: trials with gpus_per_worker=0.25
SHARING_STEPS = 4  # x --batches steps per process: long enough that their start-up skew is noise
STARTUP_TRIALS = 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # CUDA work is queued: read the clock only once it has run


def record(case: str, rounds: list[tuple[int, float]], **fields: Any) -> Record:
    """The case's fastest round (noise from other processes only ever adds time), all rounds kept."""
    rates = [images / seconds for images, seconds in rounds]
    images, seconds = rounds[int(np.argmax(rates))]
    print(f"  {case} {fields.get('arch') or ''}: " + ", ".join(f"{r:.1f}" for r in rates) + " images/s",
          file=sys.stderr, flush=True)
    return {"case": case, "images_per_s": images / seconds, "images": images, "seconds": seconds,
            "images_per_s_rounds": rates, **fields}


def interleaved(measures: dict[str, Measure], rounds: int) -> dict[str, list[tuple[int, float]]]:
    """Run every measure once per round, in turn, so that load from other processes on a shared
    machine falls on all cases alike instead of on whichever ran during it."""
    results: dict[str, list[tuple[int, float]]] = {name: [] for name in measures}
    for round_ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure(round_))
    return results


def _generate_part(args: tuple[Path, int, int, int, int]) -> None:
    root, train_per_class, test_per_class, size_px, seed = args
    generate_coats(root, train_per_class=train_per_class, test_per_class=test_per_class, size_px=size_px, seed=seed)


def generate(root: Path, images: int, size_px: int) -> Path:
    """`images` JPEGs in 4 classes, a tenth of them in test/, rendered on every core.

    One core renders about 15 images/s at 299 px, so 4000 would take minutes: each process
    writes its share into a folder of its own, then the files move into one tree.
    """
    per_class = max(4, images // len(CLASSES))
    test = max(2, per_class // 10)
    parts = max(1, min(CPUS, per_class // 16))
    shares = [(root / f".part{k}", len(t), len(v), size_px, k)
              for k, (t, v) in enumerate(zip(np.array_split(range(per_class - test), parts),
                                             np.array_split(range(test), parts)))]
    with ProcessPoolExecutor(parts) as pool:
        list(pool.map(_generate_part, shares))
    for part, *_ in shares:
        for path in part.glob("*/*/*.jpg"):
            target = root / path.parent.relative_to(part) / f"{part.name[1:]}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        shutil.rmtree(part)
    return root


def naive_loader(root: Path, size_px: int, workers: int, batch_size: int, train: bool = False) -> DataLoader:
    """The tutorials' pipeline in PyTorch: decode and augment each JPEG with PIL in every epoch.

    Ranges follow Keras's strongest setting (rotation 50, shift 0.2, shear 0.2, zoom 0.3,
    flip, brightness 0.2). For training, workers persist across epochs and the last partial
    batch is dropped, so the timed steps are steps, not worker start-ups.
    """
    transform = transforms.Compose([
        transforms.Resize((size_px, size_px)),
        transforms.RandomAffine(degrees=50, translate=(0.2, 0.2), scale=(0.7, 1.3), shear=0.2),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.2),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    return DataLoader(datasets.ImageFolder(str(root / "train"), transform), batch_size=batch_size, shuffle=True,
                      num_workers=workers, persistent_workers=train and workers > 0, drop_last=train)


def naive_batches(loader: Iterable, device: torch.device) -> Batches:
    """One epoch of the naive loader's batches, moved to `device`."""
    for images, labels in loader:
        yield images.to(device), labels.to(device)


def cached_batches(split: data.Split, batch_size: int, device: torch.device, generator: torch.Generator,
                   seed: int) -> Batches:
    """One epoch of our input as `trainables.loop.fit` builds it: shuffled uint8 rows of the
    cache, moved to the device, augmented as one batch at full strength, normalized."""
    order = np.random.default_rng(seed).permutation(len(split.labels))
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start:start + batch_size])
        images = normalize(augment(to_input(split.images[idx], device), 1.0, generator))
        yield images, torch.as_tensor(split.labels[idx], device=device)


def _every_epoch(epoch: Callable[[int], Batches]) -> Batches:
    return itertools.chain.from_iterable(map(epoch, itertools.count()))


def timed(device: torch.device, work: Callable[[], int]) -> tuple[int, float]:
    """(images, seconds) of `work()`, which returns how many images it handled."""
    _sync(device)
    started = time.perf_counter()
    images = work()
    _sync(device)
    return images, time.perf_counter() - started


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


def _model(arch: str, n_classes: int, device: torch.device, ours: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model(n_classes, {**HP, "arch": arch}).to(device)
    if ours and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, create_optimizer(HP["optimizer"], trainable, HP["lr"], HP["momentum"])


def train_measure(arch: str, n_classes: int, device: torch.device, ours: bool, timed_batches: int,
                  batches: Callable[[], Batches], ready: Callable[[], object] = lambda: None) -> Measure:
    """A measure of `timed_batches` training steps, data included, each round after a warm-up
    of its own (the naive loader's workers start anew each round); `ready()` runs between the two."""
    model, optimizer = _model(arch, n_classes, device, ours)
    bf16 = ours and device.type == "cuda"

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> int:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # both real loops read the loss every step, which waits for the GPU
        return len(labels)

    def measure(round_: int) -> tuple[int, float]:
        # batch norm cannot train on one image; loop.fit skips such a batch too
        usable = (batch for batch in batches() if len(batch[1]) > 1)
        for inputs, labels in itertools.islice(usable, WARMUP_BATCHES):
            step(inputs, labels)
        ready()
        return timed(device, lambda: sum(itertools.starmap(step, itertools.islice(usable, timed_batches))))

    return measure


def fixed_batch(batch_size: int, size_px: int, n_classes: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch already on the device (channels-last on CUDA), to time the model with no data path."""
    inputs = normalize(torch.rand(batch_size, 3, size_px, size_px, device=device))
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, torch.arange(batch_size, device=device) % n_classes


def train_cases(root: Path, arch: str, size_px: int, device: torch.device, batch_size: int, timed_batches: int,
                cache_dir: Path, rounds: int) -> list[Record]:
    """One architecture's training step: naive data + fp32, ours (cache, batched augment, and on
    CUDA bf16 + channels-last as `trainables.loop` trains), and the model alone (the ceiling)."""
    arrays = data.load(data.prepare(root, size_px, VAL_FRACTION, 0, cache_dir).path)
    n_classes, cuda = len(arrays.classes), device.type == "cuda"
    precision = "bf16 + channels_last" if cuda else "fp32"
    generator = torch.Generator(device=device).manual_seed(0)
    ours = _every_epoch(lambda epoch: cached_batches(arrays.train, batch_size, device, generator, epoch))
    fixed = fixed_batch(batch_size, size_px, n_classes, device)

    def naive() -> Batches:
        loader = naive_loader(root, size_px, CPUS, batch_size, train=True)
        return _every_epoch(lambda _: naive_batches(loader, device))

    measures = {
        f"{NAIVE} train step: JPEG DataLoader {CPUS} workers + fp32":
            train_measure(arch, n_classes, device, False, timed_batches, naive),
        f"ours train step: uint8 cache + batched augment + {precision}":
            train_measure(arch, n_classes, device, True, timed_batches, lambda: ours),
        f"model only train step: inputs on the device, {precision}":
            train_measure(arch, n_classes, device, True, timed_batches, lambda: itertools.repeat(fixed)),
    }
    common = {"arch": arch, "device": device.type, "size_px": size_px, "batch_size": batch_size}
    return [record(case, results, **common) for case, results in interleaved(measures, rounds).items()]


def add_ratios(records: list[Record]) -> list[Record]:
    """Ratio of each case to its naive baseline: the faster naive data epoch for the data cases
    (the fairer, harder one to beat), the naive train step of the same arch for training cases;
    ours train step also as a fraction of the model-only ceiling."""
    for arch in {r["arch"] for r in records}:
        group = [r for r in records if r["arch"] == arch]
        naive = max((r for r in group if NAIVE in r["case"]), key=lambda r: r["images_per_s"], default=None)
        ceiling = next((r for r in group if r["case"].startswith("model only")), None)
        for r in group:
            if naive and not r["case"].startswith(ONE_OFF):
                r["baseline"] = naive["case"]
                r["ratio_vs_naive"] = r["images_per_s"] / naive["images_per_s"]
            if ceiling and r["case"].startswith("ours"):
                r["fraction_of_model_only"] = r["images_per_s"] / ceiling["images_per_s"]
    return records


def table(records: list[Record]) -> str:
    """The records as a fixed-width table, one row a case."""
    head = f"{'case':<68} {'arch':<18} {'px':>4} {'images':>6} {'seconds':>8} {'images/s':>9} " \
           f"{'vs baseline':>11} {'of model-only':>13}"
    rows = [head, "-" * len(head)]
    for r in records:
        ratio = r.get("ratio_vs_naive", r.get("ratio_vs_baseline"))
        share = f"{r['fraction_of_model_only']:.0%}" if "fraction_of_model_only" in r else ""
        rate = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"  # startup: seconds only
        rows.append(f"{r['case']:<68} {r['arch'] or '-':<18} {r['size_px']:>4} {r.get('images', '-'):>6} "
                    f"{r['seconds']:>8.2f} {rate:>9} {'' if ratio is None else f'{ratio:.2f}x':>11} {share:>13}")
    notes = sorted({r["note"] for r in records if r.get("note")})
    return "\n".join(rows + [f"note: {note}" for note in notes])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help=f"{IMAGES['quick']} images at {SIZE_PX['quick']} px, "
                        f"every arch at that size, {TIMED_BATCHES['quick']} timed steps a round: minutes on a CPU")
    parser.add_argument("--json", type=Path, help="write the records (a JSON list) here")
    parser.add_argument("--images", type=int, help=f"JPEGs to generate (default {IMAGES['full']})")
    parser.add_argument("--size-px", type=int, help=f"size of the generated JPEGs and of the data cases (default "
                        f"{SIZE_PX['full']}); training uses each arch's usual size, or this one with --quick")
    parser.add_argument("--cases", nargs="+", choices=("all", *CASES), default=["all"],
                        help=f"any of: data (cache, data epochs), train (training steps), features (frozen-feature "
                        f"cache), sharing (processes sharing the device), startup (trials' start under Ray); "
                        f"all: {', '.join(IN_ALL)} (default)")
    parser.add_argument("--sharing", type=int, default=SHARING, help=f"processes at once in the sharing case "
                        f"(default {SHARING}), each running {SHARING_STEPS} x --batches steps")
    parser.add_argument("--startup-trials", type=int, default=STARTUP_TRIALS,
                        help=f"1-epoch trials of the startup case's search (default {STARTUP_TRIALS})")
    parser.add_argument("--batches", type=int, help=f"timed training steps per case and round (default "
                        f"{TIMED_BATCHES['full']})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="each case runs once per round, in turn; "
                        f"the fastest round counts (default {ROUNDS})")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--work", type=Path, help="folder for the generated images and caches (absent or empty)")
    parser.add_argument("--keep", action="store_true", help="keep the generated images and caches")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    for name, defaults in (("images", IMAGES), ("size_px", SIZE_PX), ("batches", TIMED_BATCHES)):
        if getattr(args, name) is None:
            setattr(args, name, defaults[mode])
    for flag, value, low in (("--images", args.images, 16), ("--size-px", args.size_px, 16),
                             ("--batches", args.batches, 1), ("--rounds", args.rounds, 1),
                             ("--batch-size", args.batch_size, 2), ("--sharing", args.sharing, 2),
                             ("--startup-trials", args.startup_trials, 1)):
        if value < low:
            parser.exit(2, f"error: {flag}: {value} is too small; at least {low}\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device: cuda is not available here; use --device cpu\n")
    if args.work and args.work.exists() and any(args.work.iterdir()):
        parser.exit(2, f"error: --work: {args.work} is not empty; give a new or empty folder\n")
    args.cases = [case for case in CASES if case in args.cases or ("all" in args.cases and case in IN_ALL)]
    return args


def train_size_px(arch: str, args: argparse.Namespace) -> int:
    """Each arch's usual size; with --quick the data size, raised to what Inception accepts."""
    if not args.quick:
        return USUAL_PX[arch]
    return max(args.size_px, INCEPTION_MIN_SIZE_PX) if arch.startswith("inception") else args.size_px


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainables.loop sets it; for every case alike
    gpu = f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    print(f"search.bench: {args.images} images at {args.size_px} px on {device.type}{gpu}, {CPUS} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)", file=sys.stderr, flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="imagesearch-bench-"))
    cases, cache = args.cases, work / "cache"
    records: list[Record] = []
    try:
        if set(cases) - {"sharing"}:  # sharing needs no images
            started = time.perf_counter()
            root = generate(work / "coats", args.images, args.size_px)
            print(f"  generated {args.images} JPEGs in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if "data" in cases:
            records += data_cases(root, args.size_px, device, args.batch_size, cache, args.rounds)
        if "train" in cases:
            for arch in ARCHS:
                records += train_cases(root, arch, train_size_px(arch, args), device, args.batch_size,
                                       args.batches, cache, args.rounds)
        add_ratios(records)
        from search import bench_cases  # here, not above: it imports this module

        if "features" in cases:
            records += bench_cases.features_cases(root, train_size_px("inception_frozen", args), device,
                                                  args.batch_size, cache, work, args.rounds)
        if "sharing" in cases:
            records += bench_cases.sharing_cases(train_size_px("small_cnn", args), device, args.batch_size,
                                                 SHARING_STEPS * args.batches, args.sharing, args.rounds)
        if "startup" in cases:
            records += bench_cases.startup_cases(root, device, args.startup_trials, cache, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
