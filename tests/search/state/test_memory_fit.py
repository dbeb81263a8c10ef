"""Data larger than memory: the driver's machine refuses it before decoding, naming the sizes;
Ray's object store is no limit (an object larger than it is read from disk)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from search.run import main
from search.state import memory_fit as memory
from tests.conftest import cli_env, tiny_experiment


def test_a_data_set_larger_than_memory_is_refused_before_decoding_with_the_sizes(
        coats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 100_000)
    monkeypatch.setattr("search.run.data.prepare", lambda *a, **k: pytest.fail("decoding started"))
    experiment = tiny_experiment(tmp_path, coats)
    assert main([str(experiment), "--out", str(tmp_path / "out"), "--check"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith(f"error: --data: '{coats}'")
    assert "its 80 images at 32 px decode to 0.00 GB" in error and "0.00 GB available" in error
    assert "use a smaller image_size_px (16 px needs a quarter)" in error


def test_the_estimate_counts_every_image_at_the_target_size(coats: Path) -> None:
    memory.check_fits(coats, 32, available=10**9)  # fits
    with pytest.raises(memory.SpecError, match="decode to 0.02 GB"):
        memory.check_fits(coats, 299, available=10**6)  # 80 x 299 x 299 x 3 bytes


@pytest.mark.slow
def test_an_array_three_times_the_object_store_is_put_and_read_by_a_task(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import numpy as np, ray
        ray.init(num_cpus=1, object_store_memory=80 * 1024**2, include_dashboard=False, log_to_driver=False)
        images = np.random.default_rng(0).integers(0, 256, 240 * 1024**2, dtype=np.uint8)
        ref = ray.put(images)

        @ray.remote
        def checksum(array):
            return int(array[::4096].sum())

        assert ray.get(checksum.remote(ref)) == int(images[::4096].sum())
        print("read", images.nbytes)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(),
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "read 251658240" in proc.stdout, proc.stderr[-2000:]
