"""Scanning a data folder, splitting it, decoding it once into a cache."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables import data


def make_folder(root: Path, classes=("a", "b"), train: int = 5, test: int = 2, size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("breakage, fragment", [
    (lambda r: None, "missing data folder"),
    (lambda r: (r / "test").mkdir(parents=True), "train: missing folder"),
    (lambda r: ((r / "train").mkdir(parents=True), (r / "test").mkdir()), "no class subfolders"),
    (lambda r: (r.mkdir(), (r / "train").write_text("x")), "is a file"),
])
def test_structure_errors_name_the_path(tmp_path: Path, breakage, fragment: str) -> None:
    root = tmp_path / "d"
    breakage(root)
    with pytest.raises(data.DataError) as err:
        data.scan(root)
    assert fragment in str(err.value) and str(root) in str(err.value)


def test_test_classes_must_match_train(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d")
    (root / "test" / "c").mkdir()
    with pytest.raises(data.DataError, match="differ from train"):
        data.scan(root)


def test_scan_matches_extensions_in_any_case_and_lists_what_it_does_not_read(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=2)
    folder = root / "train" / "a"
    os.rename(folder / "0.png", folder / "0.PNG")
    (folder / ".hidden.png").write_bytes((folder / "1.png").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    (folder / "nested" / "x.png").write_bytes((folder / "1.png").read_bytes())
    (root / "test" / "README").write_text("outside any class folder")
    found = data.scan(root)
    assert found.classes == ("a", "b")
    assert sorted(p.name for p, label in found.files["train"] if label == 0) == ["0.PNG", "1.png"]
    reasons = {Path(path).name: reason for path, reason in found.ignored}
    assert set(reasons) == {"notes.txt", "nested", "README"}  # hidden files are ignored silently
    assert "not an image" in reasons["notes.txt"] and "nested folder" in reasons["nested"]
    assert "outside a class folder" in reasons["README"]


def test_stratified_split_is_seeded_and_keeps_each_class() -> None:
    labels = np.array([0] * 10 + [1] * 30)
    train, val = data.stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[val]).tolist() == [2, 6]
    assert set(train) | set(val) == set(range(40)) and not set(train) & set(val)
    assert np.array_equal(val, data.stratified_split(labels, 0.2, seed=3)[1])
    assert not np.array_equal(val, data.stratified_split(labels, 0.2, seed=4)[1])


def test_prepare_decodes_once_and_rebuilds_when_a_file_changes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d")
    first = data.prepare(root, 16, 0.2, 0, tmp_path / "cache")
    assert not first.reused
    arrays = data.load(first.path)
    assert arrays.classes == ("a", "b")
    assert arrays.train.images.shape[1:] == (16, 16, 3) and arrays.train.images.dtype == np.uint8
    assert len(arrays.train.labels) + len(arrays.val.labels) == 10 and len(arrays.test.labels) == 4
    assert data.prepare(root, 16, 0.2, 0, tmp_path / "cache") == data.Prepared(first.path, reused=True)
    os.utime(root / "train" / "a" / "0.png", ns=(1, 1))  # touched, same content: still reused
    assert data.prepare(root, 16, 0.2, 0, tmp_path / "cache").path == first.path
    Image.new("RGB", (20, 20), "red").save(root / "train" / "a" / "0.png")
    changed = data.prepare(root, 16, 0.2, 0, tmp_path / "cache")
    assert changed.path != first.path and not changed.reused
    assert data.prepare(root, 24, 0.2, 0, tmp_path / "cache").path not in (first.path, changed.path)
    assert data.prepare(root, 16, 0.3, 0, tmp_path / "cache").path not in (first.path, changed.path)


def test_a_moved_or_renamed_folder_with_the_same_files_reuses_its_cache_under_its_new_paths(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d")
    first = data.prepare(root, 16, 0.2, 0, tmp_path / "cache")
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    root.rename(moved)
    again = data.prepare(moved, 16, 0.2, 0, tmp_path / "cache")
    assert again == data.Prepared(first.path, reused=True)
    arrays = data.load(again.path, moved)
    for split in (arrays.train, arrays.val, arrays.test):
        assert split.paths and all(Path(p).is_file() and Path(p).is_relative_to(moved) for p in split.paths)
    (moved / "train" / "a" / "0.png").rename(moved / "train" / "a" / "zero.png")  # another file name: decoded again
    assert data.prepare(moved, 16, 0.2, 0, tmp_path / "cache").path != first.path


def test_the_cache_folder_defaults_to_the_environment_then_the_user_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "shared"))
    root = make_folder(tmp_path / "d")
    assert data.prepare(root, 16, 0.2, 0).path.parent == tmp_path / "shared"
    monkeypatch.delenv(data.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "imagesearch"


def _png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims width x height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


BAD_FILES = {
    "zero.jpg": lambda: b"",
    "random.jpg": lambda: np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    "truncated.jpg": lambda: _jpeg(Image.effect_noise((64, 64), 60).convert("RGB"))[:700],
    "bomb.png": lambda: _png_claiming(40_000, 40_000),
    "bomb-below-pil-limit.png": lambda: _png_claiming(10_000, 9_000),
}


def test_every_kind_of_unreadable_file_is_skipped_with_a_reason(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=3)
    for name, content in BAD_FILES.items():
        (root / "train" / "a" / name).write_bytes(content())
    arrays = data.load(data.prepare(root, 16, 0.2, 0, tmp_path / "cache").path)
    reasons = {Path(path).name: reason for path, reason in arrays.skipped}
    assert set(reasons) == set(BAD_FILES)
    assert "UnidentifiedImageError" in reasons["zero.jpg"] and "UnidentifiedImageError" in reasons["random.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "decompression bomb" in reasons["bomb.png"].lower()
    assert "decompression bomb" in reasons["bomb-below-pil-limit.png"].lower()
    used = arrays.train.paths + arrays.val.paths
    assert len(used) == 6 and not any(Path(p).name in BAD_FILES for p in used)
    report = data.summary(arrays, root)
    assert f"skipped {len(BAD_FILES)} unreadable files" in report and "truncated.jpg" in report


def test_odd_but_valid_images_are_converted_to_rgb_and_used(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=3)
    folder = root / "train" / "a"
    Image.new("L", (30, 10), 128).save(folder / "gray.png")
    Image.new("RGBA", (10, 30), (0, 0, 0, 0)).save(folder / "transparent.png")
    Image.new("P", (12, 12)).save(folder / "palette.gif")
    Image.fromarray(np.full((8, 8), 60000, dtype=np.uint16)).save(folder / "deep.png")
    (folder / "cmyk.jpg").write_bytes(_jpeg(Image.new("CMYK", (20, 20), (0, 255, 255, 0))))  # red in CMYK
    Image.new("RGB", (3, 2), "blue").save(folder / "tiny.bmp")
    Image.new("RGB", (20, 20), "green").save(folder / "x.webp")
    Image.new("RGB", (20, 20), "green").save(folder / "x.tiff")
    # A portrait photo stored landscape with "rotate 90" in EXIF: top half white, bottom black once upright.
    landscape = Image.new("RGB", (40, 20), "black")
    landscape.paste((255, 255, 255), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    landscape.save(folder / "rotated.jpg", exif=exif, quality=95)
    arrays = data.load(data.prepare(root, 16, 0.2, 0, tmp_path / "cache").path)
    assert arrays.skipped == ()
    split = {Path(p).name: img for s in (arrays.train, arrays.val) for p, img in zip(s.paths, s.images)}
    names = ("gray.png", "transparent.png", "palette.gif", "deep.png", "cmyk.jpg", "tiny.bmp", "x.webp", "x.tiff",
             "rotated.jpg")
    assert all(split[n].shape == (16, 16, 3) for n in names)
    assert tuple(split["gray.png"][0, 0]) == (128, 128, 128)
    assert tuple(split["transparent.png"][0, 0]) == (255, 255, 255)  # transparency on white
    assert split["deep.png"][0, 0, 0] == round(60000 / 257)
    red, green, blue = (int(v) for v in split["cmyk.jpg"][8, 8])
    assert red > 200 and green < 60 and blue < 60
    assert tuple(split["tiny.bmp"][8, 8]) == (0, 0, 255)
    rotated = split["rotated.jpg"].mean(axis=(1, 2))
    assert rotated[:6].mean() > 200 and rotated[-6:].mean() < 50


@pytest.mark.parametrize("split, count, fragment", [
    ("train", 1, "has 1 image files"), ("test", 1, "has 1 image files"), ("test", 0, "has 0 image files"),
])
def test_a_class_needs_two_images_in_train_and_test(tmp_path: Path, split: str, count: int, fragment: str) -> None:
    root = make_folder(tmp_path / "d", train=5, test=3)
    for path in sorted((root / split / "b").iterdir())[count:]:
        path.unlink()
    with pytest.raises(data.DataError) as err:
        data.prepare(root, 16, 0.2, 0, tmp_path / "cache")
    assert str(root / split / "b") in str(err.value) and f"{fragment}; need at least 2 per class" in str(err.value)


def test_a_class_needs_two_readable_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=2)
    (root / "train" / "a" / "0.png").write_bytes(b"broken")
    with pytest.raises(data.DataError, match="has 1 readable images; need at least 2 per class"):
        data.prepare(root, 16, 0.2, 0, tmp_path / "cache")


def test_a_broken_or_looping_symbolic_link_is_skipped_with_a_reason(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=3)
    folder = root / "train" / "a"
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "linked.png").symlink_to(folder / "0.png")  # a link to an image is an image
    arrays = data.load(data.prepare(root, 16, 0.2, 0, tmp_path / "cache").path)
    reasons = {Path(path).name: reason for path, reason in arrays.skipped}
    assert reasons == {"dangling.png": f"broken symbolic link (to {tmp_path / 'nowhere.png'}, which does not exist)",
                       "loop.png": "symbolic link loop (to loop.png)"}
    assert "linked.png" in {Path(p).name for p in arrays.train.paths + arrays.val.paths}
    # the links are part of the cache's key: repairing one decodes again
    (folder / "dangling.png").unlink()
    (folder / "dangling.png").symlink_to(folder / "1.png")
    assert not data.prepare(root, 16, 0.2, 0, tmp_path / "cache").reused


def test_one_class_is_refused_naming_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", classes=("cats",))
    with pytest.raises(data.DataError) as err:
        data.scan(root)
    assert str(err.value) == f"{root / 'train'}: has one class folder ('cats'); a classifier needs at least two"


def aged(path: Path, age_s: float, size: int | None = None) -> Path:
    """`path` (written with `size` bytes when given) last used `age_s` seconds ago."""
    if size is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * size)
    used = time.time() - age_s
    os.utime(path, (used, used))
    return path


def test_evict_removes_the_least_recently_used_first_and_a_reuse_counts_as_use(tmp_path: Path) -> None:
    root, cache = make_folder(tmp_path / "d"), tmp_path / "cache"
    made_first = aged(data.prepare(root, 16, 0.2, 0, cache).path, 300)
    made_later = aged(data.prepare(root, 24, 0.2, 0, cache).path, 200)
    assert data.prepare(root, 16, 0.2, 0, cache).reused  # used again: now the most recent
    current = data.prepare(root, 32, 0.2, 0, cache).path
    limit, later_bytes = current.stat().st_size + made_first.stat().st_size, made_later.stat().st_size
    assert data.evict(current, limit) == (1, later_bytes)
    assert sorted(cache.iterdir()) == sorted([made_first, current])


def test_evict_keeps_the_current_cache_alone_over_the_limit_and_every_other_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    current = aged(cache / "arrays-current.npz", 900, size=5000)  # the oldest, but this run's
    evicted = [aged(cache / f"arrays-{n}.npz", age, size=1000) for n, age in (("a", 100), ("b", 50))]
    kept = [aged(cache / "arrays-c.tmp-123.npz", 800, size=1000),  # another process is writing it
            aged(cache / "runs" / "0123abcd" / "arrays-x.npz", 800, size=1000),  # a remote run's working folder
            aged(cache / "notes.txt", 800, size=1000)]
    assert data.evict(current, 0) == (2, 2000)
    assert not any(p.exists() for p in evicted) and all(p.exists() for p in [current, *kept])
    assert data.evict(current, 0) == (0, 0)


def test_evict_frees_nothing_under_the_limit(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    current = aged(cache / "arrays-current.npz", 0, size=1000)
    other = aged(cache / "arrays-other.npz", 100, size=1000)
    assert data.evict(current, 2000) == (0, 0) and other.exists()
    assert data.evict(current, 1999) == (1, 1000) and not other.exists()
