"""Word of a long decode: files done, rate and time left, on a run that takes more than a few seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

FIRST_AFTER_S = 3.0  # a decode shorter than this prints nothing
EVERY_S = 5.0


class DecodeProgress:
    """`progress(done, total)` for `trainables.data.prepare`: a line now and then, and a last
    one when it finishes, once anything was said."""

    def __init__(self, out: TextIO = sys.stdout, clock: Callable[[], float] = time.monotonic,
                 doing: str = "decoding", unit: str = "images") -> None:
        self.out, self.clock, self.doing, self.unit = out, clock, doing, unit
        self.started = clock()
        self.said_at: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        elapsed = now - self.started
        finished = done >= total
        due = elapsed >= FIRST_AFTER_S and (self.said_at is None or now - self.said_at >= EVERY_S)
        if not (due or (finished and self.said_at is not None)):
            return
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"  {self.doing}: {done:,} of {total:,} {self.unit} ({rate:,.0f}/s"
        line += f", {elapsed:.0f} s)" if finished else f", ~{(total - done) / rate:.0f} s left)" if rate else ")"
        print(line, file=self.out, flush=True)
        self.said_at = now
