"""--address runs the search on a Ray cluster that is already running (`ray start --head`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli_env, tiny_experiment


def auth_env() -> dict[str, str]:
    # Joining a cluster with token auth needs the mode said out loud (README, --address).
    return {**cli_env(), "RAY_AUTH_MODE": "token"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head_node(tmp_path_factory: pytest.TempPathFactory):
    """A running cluster: its GCS address (host:port) and its Ray Client address (ray://)."""
    tmp_path = tmp_path_factory.mktemp("head")
    port, client_port = free_port(), free_port()
    # --block keeps the head in this process group, so the test stops exactly this cluster
    # (`ray stop` would stop every Ray on the machine, the test session's included).
    log = open(tmp_path / "head.log", "w")  # noqa: SIM115 (the head outlives this call)
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", f"--ray-client-server-port={client_port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=auth_env(), start_new_session=True)
    address = f"{socket.gethostbyname(socket.gethostname())}:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = subprocess.run(["ray", "status", f"--address={address}"], capture_output=True, env=auth_env())
        if status.returncode == 0:
            break
        assert head.poll() is None, (tmp_path / "head.log").read_text()
        time.sleep(1)
    yield {"gcs": address, "client": f"ray://127.0.0.1:{client_port}"}
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    # `ray start` records its address for later plain ray.init() calls and leaves it behind.
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip().endswith(f":{address.rsplit(':', 1)[1]}"):
        current.unlink()


@pytest.mark.parametrize("kind", ["gcs", "client"])
@pytest.mark.slow
def test_search_runs_on_an_existing_cluster(head_node: dict[str, str], kind: str, coats: Path, tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=2, epochs=1)
    proc = subprocess.run([sys.executable, "-m", "search.run", str(experiment), "--out", str(tmp_path / "out"),
                           "--address", head_node[kind]], capture_output=True, text=True, env=auth_env(),
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert "Searching 2 trials, 2 at a time, on 2 CPUs" in proc.stdout
    assert len(pd.read_csv(tmp_path / "out" / "report.csv")) == 2
    still_up = subprocess.run(["ray", "status", f"--address={head_node['gcs']}"], capture_output=True, env=auth_env())
    assert still_up.returncode == 0  # the search leaves the user's cluster running
