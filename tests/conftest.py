"""Shared fixtures: one Ray instance per test session, tiny generated data sets."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all-kill-moments", action="store_true",
                     help="kill-and-resume drills at every moment (CI runs a few)")
    parser.addoption("--all-tutorials", action="store_true",
                     help="every tutorial's --smoke run (CI runs carnivores'; the others differ in their data only)")
    parser.addoption("--all-gpu-steps", action="store_true",
                     help="the GPU suite's CPU dry run with every step (CI leaves out those other tests run)")


def fast_path_only() -> pytest.MarkDecorator:
    """For a test of the fast path's own processes (search/seam): skipped on a Ray that takes Ray's
    documented path (search/seam/versions.py), where tests/search/trial/test_plain_path.py runs instead."""
    from search.seam import versions

    return pytest.mark.skipif(not versions.fast_path(), reason=versions.path_line() or "")


def kill_drill(request: pytest.FixtureRequest) -> None:
    """Skip this kill drill unless `--all-kill-moments`: CI runs the search's own kill moments
    (tests/search/test_resume.py), the drills beyond them on demand."""
    if not request.config.getoption("--all-kill-moments"):
        pytest.skip("a kill drill: pytest --all-kill-moments runs it (CI runs the search's own kill moments)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts Ray is `slow` (`pytest -m "not slow"` skips them): those that use
    the session's Ray, and those marked by hand because they start a search in a subprocess."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def decoded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decoded-image caches of this test session (and its CLI subprocesses), never ~/.cache."""
    from trainables.data import CACHE_ENV

    folder = tmp_path_factory.mktemp("decoded-cache")
    os.environ[CACHE_ENV] = str(folder)
    return folder


@pytest.fixture(scope="session")
def coats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart's generated data set, small: 4 classes x 16 train / 4 test, 64 px."""
    from search.data.generated import generate_coats

    return generate_coats(tmp_path_factory.mktemp("data") / "coats", train_per_class=16,
                          test_per_class=4, size_px=64, seed=1)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session, on 2 CPUs and without the dashboard: the
    setting where Ray leaks stopped trials' workers unless the service frees them. On a Ray
    that takes Ray's documented path (search/seam/versions.py) with the dashboard, which Ray's
    own placement-group cleaner needs to end (without it each cleaner stays, ray-project/ray#54305)."""
    import ray

    from search.driver.ray_cluster import LOCAL_RAY_ENV
    from search.seam import versions

    ray.init(address="local", num_cpus=2, include_dashboard=not versions.fast_path(), configure_logging=False,
             log_to_driver=False, runtime_env={"env_vars": LOCAL_RAY_ENV})
    yield ray
    ray.shutdown()


def write_experiment(folder: Path, body: str, name: str = "exp.py") -> Path:
    """An experiment file in `folder` whose body is the arguments of Experiment(...)."""
    path = folder / name
    path.write_text("from search.spec import *\n\nexperiment = Experiment(\n"
                    + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n)\n")
    return path


TINY = """
name="tiny",
data="{data}",
image_size_px=32,
weights="none",
space=Space(arch="small_cnn", cnn_width=8, cnn_depth=2, batch_size=16, augment=Uniform(0.0, 0.3),
            optimizer="adam", lr={{"adam": LogUniform(1e-3, 3e-2)}}),
budget=Budget(trials={trials}, max_epochs={epochs}, grace_period_epochs=1, reduction_factor=2),
resources=Resources(workers={workers}, cpus_per_worker={cpus}, gpus_per_worker={gpus!r}),
"""


def tiny_body(data: Path, trials: int = 2, epochs: int = 2, cpus: float = 1, workers: int = 1,
              gpus: float | str = "auto") -> str:
    """The arguments of a small-CNN-only Experiment(...): seconds per trial on a 2-core machine."""
    return TINY.format(data=data, trials=trials, epochs=epochs, cpus=cpus, workers=workers, gpus=gpus)


def tiny_experiment(folder: Path, data: Path, trials: int = 2, epochs: int = 2, cpus: float = 1, workers: int = 1,
                    gpus: float | str = "auto") -> Path:
    """A small-CNN-only experiment file (`tiny_body`)."""
    return write_experiment(folder, tiny_body(data, trials, epochs, cpus, workers, gpus))


class SmallDisks:
    """tmpfs filesystems of a chosen size, mounted in a test's folder: real disks that fill up."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.mounted = folder, []

    def mount(self, size: str) -> Path:
        """A new empty filesystem of `size` (mount's units: "8k", "100M"); skips the test where
        mounting is not permitted (not root, a container without CAP_SYS_ADMIN)."""
        import subprocess

        target = self.folder / f"disk{len(self.mounted)}"
        target.mkdir(parents=True)
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                                  capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            pytest.skip("no mount command here: cannot make a small disk")
        if proc.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
        self.mounted.append(target)
        return target

    def resize(self, target: Path, size: str) -> None:
        """Grow (or shrink) a mounted one, its files kept: room made on a full disk."""
        import subprocess

        subprocess.run(["mount", "-o", f"remount,size={size}", str(target)], check=True, timeout=30)

    def unmount_all(self) -> None:
        import subprocess

        for target in reversed(self.mounted):
            # lazy: a process that outlived its test (a Ray worker) must not keep it mounted
            subprocess.run(["umount", "--lazy", str(target)], capture_output=True, timeout=30)


@pytest.fixture
def small_disks(tmp_path: Path):
    """Mount small tmpfs disks in tmp_path (`.mount("8k")`); all unmounted when the test ends."""
    disks = SmallDisks(tmp_path / "disks")
    try:
        yield disks
    finally:
        disks.unmount_all()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A local S3 (moto's server) on 127.0.0.1: `--out s3://...` tested without the internet.

    Yields a function: bucket/prefix -> an s3:// URI whose options point pyarrow (in every
    process, Ray's workers included) at this server, with its dummy credentials.
    """
    from bench.s3 import local_s3

    with local_s3(tmp_path_factory.mktemp("moto") / "server.log") as uri:
        yield uri


CLUSTER_SINGLETONS = {"_AutoscalingCoordinatorActor"}


def not_ours() -> set[str]:
    """Actors a search may leave that are not the service's to end: the cluster's singletons, and
    on Ray's documented path Ray's own placement-group cleaner, a detached actor per trial that
    ends when its poll of the dashboard sees the trial's controller gone: on Ray 2.59 never, on
    2.60 now and then not within a minute on 2 busy cores. Its placement group is freed all the
    same (the leak checks still require every group REMOVED)."""
    from search.seam import versions

    return CLUSTER_SINGLETONS | (set() if versions.fast_path() else {"PlacementGroupCleaner"})


def leftovers(ray) -> tuple[list, list]:
    """Placement groups not removed and actors alive, from Ray's GCS (no dashboard needed)."""
    from search.seam.cluster_info import live_actor_classes

    deadline = time.monotonic() + 30
    while True:
        groups = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
        actors = [name for name in live_actor_classes() if name not in not_ours()]
        if not (groups or actors) or time.monotonic() > deadline:
            return groups, actors
        time.sleep(1)
