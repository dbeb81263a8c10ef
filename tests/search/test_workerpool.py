"""A trial driver's kept worker group (search/workerpool.py): its placement group is freed once
the driver is gone, never while the driver lives on to its next trial."""

from __future__ import annotations

import time

import pytest

from search import workerpool


def _state(ray, group_hex: str) -> str:
    return ray.util.placement_group_table()[group_hex]["state"]


def _removed(ray, group_hex: str, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while _state(ray, group_hex) != "REMOVED":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_kept_group_is_removed_after_its_driver_not_before(ray_session) -> None:
    ray = ray_session
    from search.reaper import remove_kept_groups

    @ray.remote(num_cpus=0)
    class Driver:
        def keep(self) -> str:
            from ray.util.placement_group import placement_group

            from search.reaper import register_kept_group

            group = placement_group([{"CPU": 0.01}])
            ray.get(group.ready())
            register_kept_group(group.id.hex())
            return group.id.hex()

    alive, gone = Driver.remote(), Driver.remote()
    alive_group, gone_group = ray.get([alive.keep.remote(), gone.keep.remote()])
    ray.kill(gone)
    time.sleep(1)
    # Ray itself keeps a group until its creating job ends too: the job here is the test's.
    assert _state(ray, gone_group) == "CREATED"
    assert remove_kept_groups() == 1
    assert _removed(ray, gone_group)
    assert _state(ray, alive_group) == "CREATED"  # its driver goes on to its next trial
    assert remove_kept_groups(everything=True) == 1  # the round is over
    assert _removed(ray, alive_group)
    ray.kill(alive)


@pytest.mark.parametrize("value, workers, kept", [(None, 1, True), ("1", 1, True), ("0", 1, False), (None, 2, False)])
def test_only_one_worker_groups_are_kept_unless_turned_off(monkeypatch, value: str | None, workers: int,
                                                            kept: bool) -> None:
    if value is None:
        monkeypatch.delenv(workerpool.KEEP_WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(workerpool.KEEP_WORKERS_ENV, value)
    assert workerpool.keeps(workers) is kept
