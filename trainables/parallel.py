"""Decoding a folder's images on every core, with word of how far it got.

Worker processes are spawned, not forked: the caller may hold threads (Ray's, torch's) that a
fork would copy in a locked state. Small jobs stay in this process, where starting workers
would cost more than it saves. `Prefetch` decodes files as they arrive (downloads still
running), for `trainables.data.prepare` to take instead of decoding them again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from trainables.decode import decode

# progress(done, total): files decoded so far, out of all the files of this decode
Progress = Callable[[int, int], None]
Advance = Callable[[int], None]  # advance(n): n more files decoded
PARALLEL_FROM = 64  # fewer files than this decode in this process
CHUNK = 16  # files per task: few enough round trips, small enough to spread the work


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decode_chunk(paths: list[str], size_px: int, reduced: bool = True) -> list[np.ndarray | str]:
    results: list[np.ndarray | str] = []
    for path in paths:
        try:
            results.append(decode(Path(path), size_px, reduced))
        except Exception as err:  # the caller skips the file and says why
            results.append(f"{type(err).__name__}: {err}")
    return results


def decode_files(paths: list[Path], size_px: int, advance: Advance | None = None,
                 workers: int | None = None, reduced: bool = True) -> Iterator[np.ndarray | str]:
    """Each file decoded (`trainables.decode.decode`) in order, or the reason it could not be."""
    workers = min(workers or cores(), max(1, len(paths) // CHUNK))
    chunks = [[str(p) for p in paths[i:i + CHUNK]] for i in range(0, len(paths), CHUNK)]
    if workers <= 1 or len(paths) < PARALLEL_FROM:
        results = (_decode_chunk(chunk, size_px, reduced) for chunk in chunks)
        for chunk in results:
            yield from _told(chunk, advance)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for chunk in pool.map(_decode_chunk, chunks, [size_px] * len(chunks), [reduced] * len(chunks)):
            yield from _told(chunk, advance)


class Prefetch:
    """Files decoded on every core as they are handed over (`add`, from any thread), so that
    decoding overlaps whatever brings the files (a mirror's downloads); `take` waits for them."""

    def __init__(self, size_px: int, workers: int | None = None, reduced: bool = True) -> None:
        self.size_px, self.reduced = size_px, reduced
        self._pool = ProcessPoolExecutor(workers or cores(), mp_context=get_context("spawn"))
        self._lock = threading.Lock()
        self._waiting: list[str] = []  # added, not yet sent: sent a chunk at a time
        self._sent: list[tuple[list[str], Future[list[np.ndarray | str]]]] = []

    def add(self, path: Path) -> None:
        with self._lock:
            self._waiting.append(str(path))
            if len(self._waiting) >= CHUNK:
                self._send()

    def _send(self) -> None:
        if self._waiting:
            chunk, self._waiting = self._waiting, []
            self._sent.append((chunk, self._pool.submit(_decode_chunk, chunk, self.size_px, self.reduced)))

    def take(self, advance: Advance | None = None) -> dict[str, np.ndarray | str]:
        """Every added file's decoded image (or why it could not be), by path; `advance`
        hears each chunk as it finishes. The workers end with it."""
        with self._lock:
            self._send()
            sent, self._sent = self._sent, []
        taken: dict[str, np.ndarray | str] = {}
        try:
            for chunk, future in sent:
                taken.update(zip(chunk, _told(future.result(), advance)))
        finally:
            self.close()
        return taken

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _told(chunk: list[np.ndarray | str], advance: Advance | None) -> Iterator[np.ndarray | str]:
    if advance is not None:
        advance(len(chunk))
    yield from chunk


def counter(progress: Progress | None, total: int) -> Advance | None:
    """An `Advance` that adds up the files of several decodes and tells `progress` (done, total)."""
    if progress is None:
        return None
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    return advance
