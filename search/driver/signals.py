"""Ctrl-C and SIGTERM end a search cleanly: Tune stops after its current step and saves its
state, the run reports what finished and says how to resume, and exits 130 or 143. Outside
the search (the data's decoding, the report and the export) either signal stops the command
at once, as a KeyboardInterrupt (`terminate_interrupts`).

Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER) so that one handler
sees both signals; it asks Tune to stop through SIGUSR1, the signal Tune always listens to
while it runs. A second signal, or one before Tune listens, stops at once (KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Within the block, the first SIGINT/SIGTERM asks Tune to stop; `signum` says which came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + (self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        tune_listens = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if not (first and tune_listens):
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: stopping the search after the current step and saving its "
              "state (send it again to stop at once) ...", file=sys.stderr, flush=True)
        ask_tune_to_stop()


def ask_tune_to_stop() -> None:
    """Ask the Tune run in this process to stop after its current step and save its state, as
    an interruption: trials not done stay unfinished (Tune's SIGUSR1)."""
    os.kill(os.getpid(), signal.SIGUSR1)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the search: the command stops at once, as after Ctrl-C."""

    signum = signal.SIGTERM


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number: 143 after SIGTERM, 130 after Ctrl-C."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


@contextlib.contextmanager
def terminate_interrupts() -> Iterator[None]:
    """Within the block SIGINT raises KeyboardInterrupt and SIGTERM `Terminated`, so either ends
    the command the way Ctrl-C does (what the caller prints, the exit code), not silently, and
    whatever handler an earlier Ray or Tune in this process left for SIGINT. Only the main thread
    handles signals; both handlers are put back after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    terminate_as_interrupt()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


def terminate_as_interrupt() -> None:
    """SIGTERM raises `Terminated` from now on (in the main thread; elsewhere nothing changes).
    Again after `ray.init`, whose own handler exits silently with status 15."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated
