"""How many trials run at once, and on what, decided from the cluster's resources."""

from __future__ import annotations

import pytest

from search.driver.tune_setup import plan
from search.experiment.spec import Budget, Experiment, Resources, Space, SpecError


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


def test_a_cluster_that_scales_gpu_workers_from_zero_gets_gpu_trials() -> None:
    from search.driver.tune_setup import resolve

    head_only = {"CPU": 0.0, "memory": 8e9}  # cluster.yaml's head: no CPU for trials, no GPU yet
    ceiling = {"CPU": 16.0, "GPU": 4.0}  # g5.xlarge x 4 at most
    carnivores = experiment(resources=Resources(workers=1, cpus_per_worker=2))
    grown = resolve(carnivores, head_only, ceiling)
    assert grown.gpus_per_worker == 1.0 and grown.concurrency == 4
    with pytest.raises(SpecError, match="the cluster has 0 CPUs and 0 GPUs now"):
        resolve(carnivores, head_only, None)
    fixed = resolve(experiment(concurrency=3), {"CPU": 2.0}, {})  # pointed at, ceiling unknown
    assert fixed.concurrency == 3 and fixed.gpus_per_worker == 0.0


def test_a_gpu_fraction_shares_each_gpu_between_trials() -> None:
    from search.driver.tune_setup import resolve

    shared = resolve(experiment(resources=Resources(cpus_per_worker=2, gpus_per_worker=0.25)), {"CPU": 16, "GPU": 1})
    assert shared.gpus_per_worker == 0.25 and shared.concurrency == 4  # four small trials on one GPU
