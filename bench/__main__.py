"""The benchmark's command line: parse the arguments, run the cases asked for, print the table.

`python -m bench [--device cpu|cuda] [--quick] [--json FILE] [--cases CASE ...] [--archs ARCH ...]
[--images N] [--size-px PX]`, from the repository root.

Generates a data set of JPEGs, then measures in one run: building and reusing our decoded
cache, one epoch of data work the naive way (torchvision `ImageFolder`, PIL decode and
augment per image, a `DataLoader`) and our way (uint8 cache, batched augment on the device)
(`bench.cases_data`); per architecture a training step fed each way, plus the model alone,
the ceiling (`bench.cases_train`); then the frozen-feature cache against running the backbone
every epoch, and several training processes sharing the device against one alone
(`bench.cases`). Every claim about speed should be a ratio between cases of one run: the
machine is the same, its load is the same. No Ray in these, so the figures are the data
path's and the model's, not Tune's; the `startup` case, asked for on its own, runs a tiny
search on a local Ray and reports how long its trials took to start, and the `serve` case
loads `search.serve`'s endpoint against a no-op Ray Serve deployment (`bench.serve_load`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.cases import FEATURES_ARCH, SHARING_ARCH, features_cases, sharing_cases, startup_cases
from bench.cases_data import data_cases, decode_cases, remote_cases
from bench.cases_train import DEFAULT_ARCHS, train_cases, train_size_px
from bench.inputs import generate
from bench.measure import BATCH_SIZE, CPUS
from bench.overhead import liar_cases, overhead_cases
from bench.records import Record, add_ratios, table
from bench.serve_load import serve_cases
from search.data.photos import photo_folder
from trainables.archs import ARCHS

DESCRIPTION = "Benchmark our data and training path against the classic tutorials' naive one, side by side."
TIMED_BATCHES = {"quick": 5, "full": 50}  # per round
ROUNDS = 3
IMAGES = {"quick": 800, "full": 4000}
SIZE_PX = {"quick": 96, "full": 299}
CASES = ("data", "train", "features", "sharing", "startup", "overhead", "liar", "decode", "remote", "serve")
PHOTOS = {"quick": 64, "full": 2000}  # the decode case's 2000x1500 JPEGs
IN_ALL = ("data", "train", "features", "sharing")  # the others run searches (startup, overhead: Ray): asked by name
SHARING = 4  # processes sharing the device: trials with gpus_per_worker=0.25
SHARING_STEPS = 4  # x --batches steps per process: long enough that their start-up skew is noise
STARTUP_TRIALS = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with --quick's or the full run's defaults filled in; a bad value exits 2."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help=f"{IMAGES['quick']} images at {SIZE_PX['quick']} px, "
                        f"every arch at that size, {TIMED_BATCHES['quick']} timed steps a round: minutes on a CPU")
    parser.add_argument("--json", type=Path, help="write the records (a JSON list) here")
    parser.add_argument("--images", type=int, help=f"JPEGs to generate (default {IMAGES['full']})")
    parser.add_argument("--size-px", type=int, help=f"size of the generated JPEGs and of the data cases (default "
                        f"{SIZE_PX['full']}); training uses each arch's usual size, or this one with --quick")
    parser.add_argument("--cases", nargs="+", choices=("all", *CASES), default=["all"],
                        help=f"any of: data (cache, data epochs), train (training steps), features (frozen-feature "
                        f"cache), sharing (processes sharing the device), startup (trials' start under Ray), "
                        f"overhead (where a search's time goes: ours, a bare Ray trial, a plain Optuna loop), "
                        f"liar (TPE's constant_liar for trials at once), decode (photo-sized JPEGs: serial full "
                        f"decoding against parallel reduced-size decoding), remote (the same photos from a local S3 "
                        f"server: mirrored then decoded against decoded as their downloads land), serve "
                        f"(search.serve's HTTP endpoint under 16 clients against a no-op Serve deployment); "
                        f"all: {', '.join(IN_ALL)} (default)")
    parser.add_argument("--photos", type=int, help=f"2000x1500 JPEGs of the decode and remote cases "
                        f"(default {PHOTOS['full']}, --quick {PHOTOS['quick']})")
    parser.add_argument("--archs", nargs="+", choices=tuple(ARCHS), default=list(DEFAULT_ARCHS), metavar="ARCH",
                        help=f"architectures of the train case, with random weights (default: "
                        f"{' '.join(DEFAULT_ARCHS)}; any of: {', '.join(ARCHS)})")
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
    for name, defaults in (("images", IMAGES), ("size_px", SIZE_PX), ("batches", TIMED_BATCHES), ("photos", PHOTOS)):
        if getattr(args, name) is None:
            setattr(args, name, defaults[mode])
    for flag, value, low in (("--images", args.images, 16), ("--size-px", args.size_px, 16),
                             ("--batches", args.batches, 1), ("--rounds", args.rounds, 1),
                             ("--batch-size", args.batch_size, 2), ("--sharing", args.sharing, 2),
                             ("--startup-trials", args.startup_trials, 1), ("--photos", args.photos, 1)):
        if value < low:
            parser.exit(2, f"error: {flag}: {value} is too small; at least {low}\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device: cuda is not available here; use --device cpu\n")
    if args.work and args.work.exists() and any(args.work.iterdir()):
        parser.exit(2, f"error: --work: {args.work} is not empty; give a new or empty folder\n")
    args.cases = [case for case in CASES if case in args.cases or ("all" in args.cases and case in IN_ALL)]
    args.archs = list(dict.fromkeys(args.archs))  # each once, in the order given
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainables.loop sets it; for every case alike
    gpu = f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    print(f"bench: {args.images} images at {args.size_px} px on {device.type}{gpu}, {CPUS} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)", file=sys.stderr, flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="imagesearch-bench-"))
    cases, cache = args.cases, work / "cache"

    def size_px(arch: str) -> int:
        return train_size_px(arch, args.quick, args.size_px)

    records: list[Record] = []
    try:
        if set(cases) - {"sharing", "decode", "remote", "serve"}:  # these need no images or make their own
            started = time.perf_counter()
            root = generate(work / "coats", args.images, args.size_px)
            print(f"  generated {args.images} JPEGs in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if "data" in cases:
            records += data_cases(root, args.size_px, device, args.batch_size, cache, args.rounds)
        if "train" in cases:
            for arch in args.archs:
                records += train_cases(root, arch, size_px(arch), device, args.batch_size, args.batches, cache,
                                       args.rounds)
        add_ratios(records)
        if "features" in cases:
            records += features_cases(root, size_px(FEATURES_ARCH), device, args.batch_size, cache, work,
                                      args.rounds)
        if "sharing" in cases:
            records += sharing_cases(size_px(SHARING_ARCH), device, args.batch_size, SHARING_STEPS * args.batches,
                                     args.sharing, args.rounds)
        if "startup" in cases:
            records += startup_cases(root, device, args.startup_trials, cache, work)
        if "overhead" in cases:
            records += overhead_cases(root, args.quick, cache, work, device)
        if "liar" in cases:
            records += liar_cases(root, args.quick, cache)
        if {"decode", "remote"} & set(cases):
            started = time.perf_counter()
            photos = photo_folder(work / "photos", classes=4, per_class=max(1, args.photos // 5))
            print(f"  generated {args.photos} photo JPEGs in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if "decode" in cases:
            records += decode_cases(photos, args.size_px, args.rounds)
        if "remote" in cases:
            records += remote_cases(photos, args.size_px, args.rounds, work)
        if "serve" in cases:
            records += serve_cases(args.size_px)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
