"""How many trials run at once, and on what, decided from the cluster's resources."""

from __future__ import annotations

import pytest

from search.spec import Budget, Experiment, Resources, Space, SpecError
from search.tuning import plan


def experiment(**changes) -> Experiment:
    values = dict(name="x", data="d", image_size_px=32, space=Space(arch="small_cnn"), budget=Budget(trials=6))
    values.update(changes)
    return Experiment(**values)


def test_concurrency_is_what_fits_on_the_cpus(ray_session) -> None:
    assert plan(experiment()).concurrency == 2  # 2 CPUs, one 1-CPU worker per trial
    assert plan(experiment(resources=Resources(cpus_per_worker=0.5))).concurrency == 4
    assert plan(experiment(concurrency=1)).concurrency == 1
    assert plan(experiment(concurrency=5)).concurrency == 2  # never more than fit: they would only wait
    assert plan(experiment(budget=Budget(trials=1))).concurrency == 1


def test_no_gpus_means_cpu_workers(ray_session) -> None:
    assert plan(experiment()).gpus_per_worker == 0.0


def test_a_trial_larger_than_the_cluster_is_refused(ray_session) -> None:
    with pytest.raises(SpecError, match="a trial needs 4 CPUs, the cluster has 2 CPUs"):
        plan(experiment(resources=Resources(workers=2, cpus_per_worker=2)))
    with pytest.raises(SpecError, match="GPUs"):
        plan(experiment(resources=Resources(gpus_per_worker=1)))


def test_an_autoscaling_cluster_takes_the_concurrency_asked_for(ray_session) -> None:
    assert plan(experiment(concurrency=4), autoscaling=True).concurrency == 4
