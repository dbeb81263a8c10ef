"""The search's GCS records (search/seam/markers.py) on a real Ray: each reads back what was
written, in its own namespace, and is gone once deleted."""

from __future__ import annotations

from search.seam import markers


def test_markers_round_trip_on_the_running_ray(ray_session) -> None:
    assert not markers.finished_before_resume("contract", "t1")
    markers.mark_finished_before_resume("contract", "t1")
    assert markers.finished_before_resume("contract", "t1")
    assert markers.disk_full_reason("contract", "t1") is None
    markers.mark_disk_full("contract", "t1", "No space left on device")
    assert markers.disk_full_reason("contract", "t1") == "No space left on device"
    markers.clear_disk_full("contract", "t1")
    assert markers.disk_full_reason("contract", "t1") is None
    markers.record_trial_group("t1", "aa")
    markers.record_trial_group("t1", "bb")
    markers.record_trial_group("t2", "cc")
    assert sorted(markers.take_trial_groups("t1")) == ["aa", "bb"]
    assert markers.take_trial_groups("t1") == []
    assert markers.take_trial_groups("t2") == ["cc"]
