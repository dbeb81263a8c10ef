"""Decoding photos: reduced-size JPEG decoding stays close to a full decode, the parallel
decode gives what a serial one gives (skipped files included), and a long decode says how far it got."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from search.data.photos import photo_folder, photo_jpeg
from search.data.progress import DecodeProgress
from trainables import data, parallel


@pytest.mark.parametrize("size_px", [299, 150, 75])
def test_a_reduced_decode_of_a_large_jpeg_stays_close_to_a_full_one(tmp_path: Path, size_px: int) -> None:
    photo = photo_jpeg(tmp_path / "photo.jpg", 2000, 1500)
    full = data.decode(photo, size_px, reduced=False).astype(np.int16)
    reduced = data.decode(photo, size_px).astype(np.int16)
    difference = np.abs(full - reduced)
    assert reduced.shape == (size_px, size_px, 3)
    assert difference.mean() < 1.5 and np.percentile(difference, 99) < 16, (difference.mean(), difference.max())


def test_a_small_jpeg_is_decoded_whole(tmp_path: Path) -> None:
    photo = photo_jpeg(tmp_path / "small.jpg", 200, 150)
    assert np.array_equal(data.decode(photo, 150), data.decode(photo, 150, reduced=False))


def test_the_parallel_decode_gives_the_serial_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = photo_folder(tmp_path / "photos", classes=2, per_class=12, width=400, height=300)
    (root / "train" / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    paths = sorted(root.rglob("*.jpg"))
    serial = list(parallel.decode_files(paths, 32, workers=1))
    monkeypatch.setattr(parallel, "PARALLEL_FROM", 2)
    monkeypatch.setattr(parallel, "CHUNK", 4)
    told: list[int] = []
    spread = list(parallel.decode_files(paths, 32, told.append, workers=2))
    assert len(spread) == len(serial) == len(paths) and sum(told) == len(paths)
    for one, other in zip(serial, spread):
        assert (one == other) if isinstance(one, str) else np.array_equal(one, other)
    assert sum(isinstance(result, str) for result in spread) == 1  # the broken file, with its reason


def test_prepare_reports_progress_over_both_splits(tmp_path: Path) -> None:
    root = photo_folder(tmp_path / "photos", classes=2, per_class=8, width=320, height=240)
    heard: list[tuple[int, int]] = []
    data.prepare(root, 32, 0.25, 0, tmp_path / "cache", progress=lambda done, total: heard.append((done, total)))
    assert heard[-1] == (20, 20) and [done for done, _ in heard] == sorted(done for done, _ in heard)


def test_progress_speaks_after_a_few_seconds_then_now_and_then_and_at_the_end() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = DecodeProgress(out, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] = done * 0.1  # 10 images a second
        progress(done, 100)
    lines = out.getvalue().splitlines()
    assert lines[0] == "  decoding: 30 of 100 images (10/s, ~7 s left)"
    assert lines[-1] == "  decoding: 100 of 100 images (10/s, 10 s)" and len(lines) == 3
    quiet = io.StringIO()
    short = DecodeProgress(quiet, clock=lambda: 0.5)
    short(10, 10)
    assert quiet.getvalue() == ""  # a short decode says nothing


def test_files_decoded_ahead_are_taken_by_prepare_not_decoded_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = photo_folder(tmp_path / "photos", classes=2, per_class=12, width=400, height=300)
    (root / "train" / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    plain = data.load(data.prepare(root, 32, 0.25, 0, tmp_path / "plain").path)
    monkeypatch.setattr(parallel, "CHUNK", 4)
    with parallel.Prefetch(32, workers=2) as prefetch:
        for path in sorted(root.rglob("*.jpg")):
            prefetch.add(path)
        decoded_again: list[Path] = []
        real = parallel.decode_files

        def counted(paths: list[Path], *args: object, **kwargs: object):  # noqa: ANN202
            decoded_again.extend(paths)
            return real(paths, *args, **kwargs)

        monkeypatch.setattr(parallel, "decode_files", counted)
        ahead = data.load(data.prepare(root, 32, 0.25, 0, tmp_path / "ahead", prefetch=prefetch).path)
    assert decoded_again == []
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(plain, split).images, getattr(ahead, split).images)
        assert np.array_equal(getattr(plain, split).labels, getattr(ahead, split).labels)
    assert plain.skipped == ahead.skipped and len(ahead.skipped) == 1  # the broken file, with its reason


def test_many_photos_are_generated_on_every_core_exactly_as_one_by_one(tmp_path: Path) -> None:
    root = photo_folder(tmp_path / "photos", classes=4, per_class=16, width=160, height=120)  # 64 + 16 files
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 80
    # the same seeds in the same order as the serial loop: test/class3's last photo is the 80th
    again = photo_jpeg(tmp_path / "one.jpg", 160, 120, seed=79)
    assert (root / "test" / "class3" / "00003.jpg").read_bytes() == again.read_bytes()
