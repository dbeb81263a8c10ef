"""Starts the local Ray a search runs on, or joins the cluster the user names (`--address`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

# Ray Train hands a worker's report (and checkpoint) over at its health-check poll, every
# 2 s by default, and the worker waits for it: measured here, every epoch took >= 2.04 s
# however short. The same poll notices a finished run. Every 0.2 s, a report waits ~0.1 s on
# average, for one cheap status call per worker and poll.
RAY_JOB_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
               # How long Tune waits for a reused trial driver to end its last trial (default 2 s);
               # ending its Train workers gracefully may take longer on a busy node.
               "TUNE_FUNCTION_THREAD_TIMEOUT_S": "10"}
# On the local Ray only: no node of it is ever preempted, so Ray Train's preemption watcher
# (a process of its own for every trial, polling every 5 s) has nothing to watch. A cluster's
# spot nodes keep it.
LOCAL_RAY_ENV = {**RAY_JOB_ENV, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

# Where a search's long-lived actors run (trial drivers, and with them Ray Train's controllers,
# which Train places on its driver's node; the shared frozen features): on the head node, by
# asking a sliver of its own resource. The head stays while worker nodes come and go
# (spot instances reclaimed, idle nodes scaled down); a lost node then costs its trials only
# their Train workers, which Ray Train restarts from the last checkpoint, never a trial's driver.
ON_HEAD = {"node:__internal_head__": 0.001}

# Ray Client's proxy forks a server process for every client, and the fork races gRPC's poller
# in the proxy: now and then the new server dies at once (ray-project/ray#63202, open; ~7% of
# connections there, seen in our CI). ray.init then raises ConnectionAbortedError with the
# proxy's traceback: "Starting Ray client server failed", or psutil's ZombieProcess from
# `start_specific_server` when the child died before the proxy looked at it. A new connection
# gets a new server process.
CLIENT_ATTEMPTS = 3
CLIENT_PAUSE_S = 1.0  # between attempts: the proxy's threads that raced the fork have moved on
_CLIENT_SERVER_DIED = ("Starting Ray client server failed", "start_specific_server")


# How long a cluster named by --address has to answer: a head still starting answers within
# seconds; a typo or a stopped cluster never does (Ray itself would retry forever).
ADDRESS_WAIT_S = 15.0


def check_address(address: str, wait_s: float | None = None) -> None:
    """Refuse an --address where nothing answers within `wait_s`, in one line naming it, before
    the data is decoded (default: `ADDRESS_WAIT_S`). `auto` is left to Ray, which finds the
    local cluster itself."""
    import socket

    from search.experiment.spec import SpecError

    if address == "auto":
        return
    wait_s = ADDRESS_WAIT_S if wait_s is None else wait_s
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpecError("--address", address, "auto, host:port (a cluster's GCS) or ray://host:port (Ray Client)")
    deadline, error = time.monotonic() + wait_s, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(2.0, wait_s)):
                return
        except OSError as err:
            error = err
            time.sleep(0.5)
    raise SpecError("--address", address, f"no Ray cluster answered there within {wait_s:g} s "
                    f"({getattr(error, 'strerror', None) or error}): give the address of a running one "
                    "(ray start --head, ray up)")


def start_ray(address: str | None) -> str | None:
    """Join `address`, or start a local Ray with its dashboard on 127.0.0.1; returns its URL."""
    import ray

    if ray.is_initialized():
        context = ray.get_runtime_context()
        return getattr(context, "dashboard_url", None)
    # Ray Train logs several lines per epoch and trial; Tune's status table is the progress.
    quiet = ray.LoggingConfig(encoding="TEXT", log_level="WARNING")
    if address:
        # A job-level runtime env reaches the cluster's workers (at the cost of Ray's
        # logging config, which a runtime env overrides).
        context = _join(address, logging_config=quiet, runtime_env={"env_vars": RAY_JOB_ENV})
    else:
        for key, value in LOCAL_RAY_ENV.items():  # the local Ray's processes inherit them
            os.environ.setdefault(key, value)
        # "local": always a new Ray of our own, never one a `ray start` left on this machine
        # (plain ray.init() joins that one, and hangs when it is gone but its address file is not).
        context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                           logging_config=quiet)
    return context.dashboard_url or None


def _join(address: str, **init: Any) -> Any:
    """ray.init(address, **init), refused in one line when the cluster runs another Ray."""
    import re

    import ray

    from search.experiment.spec import SpecError

    try:
        return _connect(address, **init)
    except RuntimeError as err:
        if "Version mismatch" not in str(err):
            raise
        theirs = re.search(r"started with:\s*Ray: (\S+)", str(err))
        raise SpecError("--address", address, f"a cluster on this Ray ({ray.__version__}); it runs Ray "
                        f"{theirs.group(1) if theirs else 'another'}, and Ray joins only its own version: install "
                        "that one here (pip install 'ray[default,serve,tune,train]==VERSION')") from None


def _connect(address: str, **init: Any) -> Any:
    """ray.init(address, **init), connecting again when Ray Client's server died starting."""
    import ray

    for attempt in range(1, CLIENT_ATTEMPTS):
        try:
            return ray.init(address=address, **init)
        except ConnectionAbortedError as err:
            if not any(sign in str(err) for sign in _CLIENT_SERVER_DIED):
                raise
            print(f"warning: the Ray Client server for this search died starting (a Ray race, ray-project/ray#63202); "
                  f"connecting to {address} again ({attempt + 1} of {CLIENT_ATTEMPTS})", file=sys.stderr, flush=True)
            time.sleep(CLIENT_PAUSE_S)
    return ray.init(address=address, **init)


# How often the search's driver looks at the local Ray's processes: Ray's own notice of a dead
# raylet takes ~13 s (the GCS's health checks), then ends the driver from C++, with no word of why.
WATCH_EVERY_S = 0.5


def death_of(kind: str, process: Any) -> str:
    """What happened to a Ray process that exited, in words."""
    code = process.returncode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal, which has no name
            name = f"signal {-code}"
        how = f"killed by {name}" + (" (the kernel's out-of-memory killer sends it: see dmesg)"
                                     if -code == signal.SIGKILL else "")
    else:
        how = f"exited with status {code}"
    return f"Ray's {kind} (pid {process.pid}) {how}"


@contextlib.contextmanager
def watching_ray(on_death: Callable[[str], None]) -> Iterator[None]:
    """Within the block, call `on_death(what happened)` from a thread of its own as soon as the
    local Ray this process started loses its raylet or GCS server (nothing for a Ray it joined)."""
    from search.seam.cluster_info import local_ray_processes

    processes = local_ray_processes()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_EVERY_S):
            for kind, process in processes.items():
                if process.poll() is not None and not done.is_set():
                    on_death(death_of(kind, process))
                    return

    watcher = threading.Thread(target=watch, name="ray-watch", daemon=True)
    if processes:
        watcher.start()
    try:
        yield
    finally:
        done.set()
