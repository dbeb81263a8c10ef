"""Two drivers on one remote `--out`: the second is refused while the first runs (search/state/lease.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from search.experiment.domains import SpecError
from search.state import lease
from search.state.storage import open_output
from tests.conftest import cli_env, tiny_experiment


def test_a_held_lease_refuses_another_driver_and_is_free_once_released(s3_server, tmp_path: Path) -> None:
    uri = s3_server("leases/run-a")
    first, second = (open_output(uri, tmp_path / machine) for machine in ("machine-1", "machine-2"))
    refused = r"^--out: 's3://leases/run-a' .*is in use by another search \(pid \d+ on "
    with lease.hold(first, settle_s=0.1), pytest.raises(SpecError, match=refused), lease.hold(second, settle_s=0.1):
        pass
    with lease.hold(second, settle_s=0.1):  # released at the end of the block: free again
        assert first.exists(lease.LEASE_FILE)
    assert not first.exists(lease.LEASE_FILE)


def test_a_lease_no_one_renews_lapses(s3_server, tmp_path: Path) -> None:
    """A killed driver's lease is not renewed: after the TTL it no longer holds OUT."""
    uri = s3_server("leases/run-b")
    dead, alive = (open_output(uri, tmp_path / machine) for machine in ("machine-1", "machine-2"))
    lease._write(dead, {"holder": "pid 1 on a machine that died", "token": "gone"})
    with pytest.raises(SpecError, match="a machine that died"), lease.hold(alive, ttl_s=3, settle_s=0.1):
        pass
    time.sleep(4)
    with lease.hold(alive, ttl_s=3, settle_s=0.1):
        pass


def test_a_lease_is_renewed_while_its_search_runs(s3_server, tmp_path: Path) -> None:
    uri = s3_server("leases/run-c")
    first, second = (open_output(uri, tmp_path / machine) for machine in ("machine-1", "machine-2"))
    with lease.hold(first, ttl_s=3, renew_s=0.5, settle_s=0.1):
        time.sleep(5)  # past the TTL: only the renewals keep it held
        with pytest.raises(SpecError, match="in use by another search"), lease.hold(second, ttl_s=3, settle_s=0.1):
            pass


def test_two_drivers_starting_together_one_yields(s3_server, tmp_path: Path) -> None:
    uri = s3_server("leases/run-d")
    outputs = [open_output(uri, tmp_path / f"machine-{i}") for i in range(2)]
    held, refused = [], []
    barrier = threading.Barrier(2)

    def start(index: int) -> None:
        barrier.wait()
        try:
            with lease.hold(outputs[index], settle_s=1.0):
                held.append(index)
                time.sleep(2)
        except SpecError:
            refused.append(index)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(held) == 1 and len(refused) == 1, (held, refused)


@pytest.mark.slow
def test_the_cli_refuses_a_remote_out_another_driver_holds(s3_server, coats: Path, tmp_path: Path) -> None:
    uri = s3_server("leases/run-e")
    other = open_output(uri, tmp_path / "machine-1")
    lease._write(other, {"holder": "pid 4242 on another-machine", "token": "theirs"})
    experiment = tiny_experiment(tmp_path, coats, trials=1, epochs=1)
    proc = subprocess.run([sys.executable, "-m", "search.run", str(experiment), "--out", uri,
                           "--cache", str(tmp_path / "cache")], capture_output=True, text=True, env=cli_env(),
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --out: 's3://leases/run-e'") and "(pid 4242 on another-machine" in last
    assert not other.exists("tune") and not other.exists("manifest.json")  # it wrote nothing of its own
