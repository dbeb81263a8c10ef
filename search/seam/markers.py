"""The search's small records in Ray's GCS key-value store, each behind a name for what it says.

Ray's `internal_kv` (ray.experimental.internal_kv, underscore functions: the store Ray's own
libraries use; unchanged from Ray 2.59 to 2.60, `tests/search/seam/test_contracts.py`) is
reachable from every process of a job (the driver, trial drivers, Train workers) with no actor
of ours to start. Keys live in `NAMESPACE`; those of placement groups carry the job's id.
"""

from __future__ import annotations

NAMESPACE = "imagesearch"


def _kv():  # noqa: ANN202 - Ray's module, imported only where a record is read or written
    from ray.experimental import internal_kv

    return internal_kv


def _finished_key(study_name: str, trial_id: str) -> str:
    return f"finished-before-resume/{study_name}/{trial_id}"


def _full_disk_key(study_name: str, trial_id: str) -> str:
    return f"disk-full/{study_name}/{trial_id}"


def mark_finished_before_resume(study_name: str, trial_id: str) -> None:
    """The study finished this trial before the search was resumed: its driver has nothing to run."""
    _kv()._internal_kv_put(_finished_key(study_name, trial_id), b"", namespace=NAMESPACE)


def finished_before_resume(study_name: str, trial_id: str) -> bool:
    return bool(_kv()._internal_kv_exists(_finished_key(study_name, trial_id), namespace=NAMESPACE))


def mark_disk_full(study_name: str, trial_id: str, reason: str) -> None:
    """This trial's checkpoint found the disk full (`reason`: the system's words): the trial did not fail."""
    _kv()._internal_kv_put(_full_disk_key(study_name, trial_id), reason.encode(), namespace=NAMESPACE)


def disk_full_reason(study_name: str, trial_id: str) -> str | None:
    """The reason `mark_disk_full` recorded for the trial, or None."""
    value = _kv()._internal_kv_get(_full_disk_key(study_name, trial_id), namespace=NAMESPACE)
    return None if value is None else value.decode()


def clear_disk_full(study_name: str, trial_id: str) -> None:
    _kv()._internal_kv_del(_full_disk_key(study_name, trial_id), namespace=NAMESPACE)


def _job() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def _trial_groups_prefix(trial_id: str) -> str:
    return f"placement-groups/{_job()}/{trial_id}/"


def record_trial_group(trial_id: str, group_hex: str) -> None:
    """A placement group the trial's Train workers run in: the trial's to free."""
    _kv()._internal_kv_put(_trial_groups_prefix(trial_id) + group_hex, b"", namespace=NAMESPACE)


def take_trial_groups(trial_id: str) -> list[str]:
    """The placement groups recorded for the trial (hex ids), their records deleted."""
    prefix = _trial_groups_prefix(trial_id)
    keys = _kv()._internal_kv_list(prefix, namespace=NAMESPACE)
    _kv()._internal_kv_del(prefix, del_by_prefix=True, namespace=NAMESPACE)
    return [key.decode().rsplit("/", 1)[1] for key in keys]


def _kept_prefix() -> str:
    return f"kept-placement-groups/{_job()}/"


def _kept_key(group_hex: str) -> str:
    """The record of a group kept by the calling driver: its prefix, the driver's actor id, the group."""
    import ray

    return f"{_kept_prefix()}{ray.get_runtime_context().get_actor_id()}/{group_hex}"


def record_kept_group(group_hex: str) -> None:
    """In a trial's driver: a placement group it keeps across its trials is its own."""
    _kv()._internal_kv_put(_kept_key(group_hex), b"", namespace=NAMESPACE)


def forget_kept_group(group_hex: str) -> None:
    """In a trial's driver: the group it kept is removed (or no longer kept)."""
    _kv()._internal_kv_del(_kept_key(group_hex), namespace=NAMESPACE)


def kept_groups() -> list[tuple[str, str, str]]:
    """Every kept group of this job: (record key, the driver's actor id, the group's hex id)."""
    found = []
    for key in _kv()._internal_kv_list(_kept_prefix(), namespace=NAMESPACE):
        driver, group = key.decode().rsplit("/", 2)[1:]
        found.append((key.decode(), driver, group))
    return found


def forget(key: str) -> None:
    """Delete one record by its key (`kept_groups`' first field)."""
    _kv()._internal_kv_del(key, namespace=NAMESPACE)
