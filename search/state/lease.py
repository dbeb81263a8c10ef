"""Who drives a remote search folder: a lease at `OUT/.lease.json`, renewed while the search runs.

A local OUT is guarded by an `flock` (search/state/manifest.py). Two drivers on two machines with
one `--out s3://...` share nothing but the URI, so the driver writes a lease there (who it is,
a token) and renews it every `RENEW_S`; a driver that finds a lease renewed less than
`TTL_S` ago refuses to start and names its holder. A killed driver stops renewing, so its
lease lapses within `TTL_S` and never locks OUT for good. Object stores have no atomic
create-if-absent that pyarrow exposes, so two drivers that start within the same moment both
write; each reads the lease back `SETTLE_S` later (S3 reads its own writes), and the one
whose token is not there yields. The age of a lease is told by the store's clock (the
object's modification time), so the machines' clocks need not agree.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.fs as pafs

from search.experiment.domains import SpecError
from search.state.storage import Output

logger = logging.getLogger(__name__)
LEASE_FILE = ".lease.json"
TTL_S = 60.0
RENEW_S = 15.0
SETTLE_S = 2.0


@contextmanager
def hold(output: Output, ttl_s: float = TTL_S, renew_s: float = RENEW_S, settle_s: float = SETTLE_S) -> Iterator[None]:
    """Hold a remote OUT's lease for the block (nothing to do for a local OUT); SpecError
    naming the holder when another driver holds it."""
    if not output.remote:
        yield
        return
    mine = {"holder": f"pid {os.getpid()} on {socket.gethostname()}", "token": uuid.uuid4().hex}
    _refuse_if_held(output, mine, ttl_s)
    _write(output, mine)
    time.sleep(settle_s)
    _refuse_if_held(output, mine, ttl_s)
    stop = threading.Event()
    renewing = threading.Thread(target=_renew, args=(output, mine, stop, renew_s), daemon=True, name="lease")
    renewing.start()
    try:
        yield
    finally:
        stop.set()
        renewing.join()
        lease, _ = _read(output)
        if lease.get("token") == mine["token"]:
            output.filesystem.delete_file(_path(output))


def _refuse_if_held(output: Output, mine: dict[str, str], ttl_s: float) -> None:
    lease, age_s = _read(output)
    if lease and lease.get("token") != mine["token"] and age_s < ttl_s:
        raise SpecError("--out", output.display(), f"is in use by another search ({lease.get('holder', 'unknown')}, "
                        f"seen {age_s:.0f} s ago); wait for it to end, or give another --out (a search that was "
                        f"killed lets go within {ttl_s:.0f} s)")


def _renew(output: Output, mine: dict[str, str], stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            lease, _ = _read(output)
            if lease.get("token") not in (None, mine["token"]):
                logger.warning("%s: another search (%s) took over this output while this one was not renewing its "
                               "lease; their results may mix", output.display(), lease.get("holder"))
            _write(output, mine)
        except OSError as err:  # a store that does not answer for a while: try again at the next renewal
            logger.warning("%s: could not renew this search's lease: %s", output.display(), err)


def _path(output: Output) -> str:
    return f"{output.path}/{LEASE_FILE}"


def _write(output: Output, lease: dict[str, str]) -> None:
    output.filesystem.create_dir(output.path, recursive=True)
    with output.filesystem.open_output_stream(_path(output)) as stream:
        stream.write(json.dumps(lease).encode())


def _read(output: Output) -> tuple[dict[str, Any], float]:
    """The lease and its age in seconds by the store's clock, or ({}, inf) when there is none."""
    info = output.filesystem.get_file_info(_path(output))
    if info.type == pafs.FileType.NotFound:
        return {}, float("inf")
    try:
        lease = json.loads(output.read_bytes(_path(output)))
    except (OSError, ValueError):
        return {}, float("inf")  # deleted between the two calls, or cut short: nobody's
    return lease, max(0.0, _store_now(output) - info.mtime.timestamp())


def _store_now(output: Output) -> float:
    """The store's time now: the modification time of a probe object written for the purpose."""
    probe = f"{output.path}/.lease-clock-{uuid.uuid4().hex}"
    with output.filesystem.open_output_stream(probe) as stream:
        stream.write(b"")
    try:
        return output.filesystem.get_file_info(probe).mtime.timestamp()
    finally:
        output.filesystem.delete_file(probe)
