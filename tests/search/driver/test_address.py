"""--address runs the search on a Ray cluster that is already running (`ray start --head`)."""

from __future__ import annotations

import os
import secrets
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

# The cluster's own token: a fresh machine has no ~/.ray/auth_token until some local
# ray.init writes one, and `ray start --head` with token auth refuses to start without it.
TOKEN = secrets.token_hex(32)


def auth_env() -> dict[str, str]:
    # Joining a cluster with token auth needs the mode said out loud (README, --address).
    return {**cli_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


def client_server_logs(since: float) -> str:
    """What Ray Client's per-client servers wrote since `since`: why one failed to start."""
    logs = {log.resolve() for log in (Path(tempfile.gettempdir()) / "ray").glob("session_2*/logs/ray_client_server*")
            if log.stat().st_mtime >= since}
    return "".join(f"\n--- {log}\n{log.read_text()[-2000:]}" for log in sorted(logs))


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
        head.wait(timeout=10)  # `ray start --block` often outlasts 30 s of SIGTERM here; nothing of it is kept
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
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "search.run", str(experiment), "--out", str(tmp_path / "out"),
                           "--address", head_node[kind]], capture_output=True, text=True, env=auth_env(),
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + client_server_logs(started)
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert "Searching 2 trials, 2 at a time, on 2 CPUs" in proc.stdout
    assert len(pd.read_csv(tmp_path / "out" / "report.csv")) == 2
    still_up = subprocess.run(["ray", "status", f"--address={head_node['gcs']}"], capture_output=True, env=auth_env())
    assert still_up.returncode == 0  # the search leaves the user's cluster running


# What ray.init raises when the proxy's fork of the client's server died (ray-project/ray#63202),
# both forms seen here: the proxy saw the child dead, or a zombie before it looked.
DIED = {
    "exited": "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs.",
    "zombie": 'File ".../ray/util/client/server/proxier.py", line 396, in start_specific_server\n'
              "    cmd = psutil_proc.cmdline()\npsutil.ZombieProcess: PID still exists but it's a zombie (pid=5367)",
}


def died_starting(form: str = "exited") -> ConnectionAbortedError:
    return ConnectionAbortedError("Initialization failure from server:\nTraceback (most recent call last):\n"
                                  + DIED[form])


@pytest.mark.parametrize(("failures", "form"), [(1, "exited"), (2, "exited"), (1, "zombie")])
def test_a_client_server_that_died_starting_is_connected_again(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture, failures: int,
                                                                form: str) -> None:
    import ray

    from search.driver.ray_cluster import start_ray

    calls = []

    def init(**kwargs):
        calls.append(kwargs["address"])
        if len(calls) <= failures:
            raise died_starting(form)
        return type("Context", (), {"dashboard_url": "127.0.0.1:8265"})()

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr("search.driver.ray_cluster.CLIENT_PAUSE_S", 0.0)
    assert start_ray("ray://head:10001") == "127.0.0.1:8265"
    assert calls == ["ray://head:10001"] * (failures + 1)
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == failures and all("ray-project/ray#63202" in line for line in warnings)


def test_a_client_server_that_keeps_dying_or_another_refusal_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from search.driver.ray_cluster import CLIENT_ATTEMPTS, start_ray

    calls = []

    def dying(**kwargs):
        calls.append(1)
        raise died_starting()

    monkeypatch.setattr(ray, "init", dying)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr("search.driver.ray_cluster.CLIENT_PAUSE_S", 0.0)
    with pytest.raises(ConnectionAbortedError, match="Starting Ray client server failed"):
        start_ray("ray://head:10001")
    assert len(calls) == CLIENT_ATTEMPTS

    def refused(**kwargs):  # any other refusal is the user's to see at once, not retried
        calls.append(1)
        raise ConnectionAbortedError("Initialization failure from server: version mismatch")

    calls.clear()
    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(ConnectionAbortedError, match="version mismatch"):
        start_ray("ray://head:10001")
    assert len(calls) == 1


def test_an_address_where_no_cluster_answers_is_refused_in_one_line(
        coats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo or a stopped cluster: refused before any data is decoded, naming the address;
    Ray itself would retry for ever."""
    from search import run
    from search.driver import ray_cluster as cluster

    monkeypatch.setattr(cluster, "ADDRESS_WAIT_S", 1.0)
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = run.main([str(tiny_experiment(tmp_path, coats)), "--out", str(tmp_path / "out"), "--address", address])
    assert code == 2 and time.monotonic() - started < 10
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "no Ray cluster answered" in lines[0], lines
    assert not (tmp_path / "out").exists()
    assert run.main([str(tiny_experiment(tmp_path, coats)), "--address", "nocolon"]) == 2
    assert "--address" in capsys.readouterr().err


def test_sigterm_while_waiting_for_the_cluster_stops_at_once(
        coats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from search import run

    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    try:
        code = run.main([str(tiny_experiment(tmp_path, coats)), "--out", str(tmp_path / "out"),
                         "--address", f"127.0.0.1:{free_port()}"])
    finally:
        timer.cancel()
    assert code == 143 and time.monotonic() - started < 10
    assert "Interrupted." in capsys.readouterr().err


def test_a_cluster_on_another_ray_is_refused_in_one_line_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray joins only a cluster of its own version; its own error is a page of traceback."""
    import ray

    from search.driver import ray_cluster
    from search.experiment.spec import SpecError

    def mismatch(address: str, **init: object) -> None:
        raise RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.99.0\n    Python: 3.11.7\n"
                           f"This process on node 10.0.0.1 was started with:\n    Ray: {ray.__version__}\n")

    monkeypatch.setattr(ray_cluster, "_connect", mismatch)
    with pytest.raises(SpecError) as refused:
        ray_cluster._join("10.0.0.1:6379")
    line = str(refused.value)
    assert "10.0.0.1:6379" in line and "2.99.0" in line and ray.__version__ in line and "\n" not in line
