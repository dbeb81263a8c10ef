"""The one place this service touches private internals of Ray, Tune, Train or Optuna, or
depends on the names of the files they write. Everything else uses their public APIs.

- `versions`: the Rays the fast path was verified on, and which path a search's trials take.
- `controller`: a trial's Train controller in its driver; Train's callbacks it does not need
  left out; a worker's checkpoint written in place (fast path only).
- `kept_workers`, `kept_sync`: a trial's driver keeps its Train worker, placement group and
  synchronisation actor for its next trial (fast path only).
- `markers`: the search's records in Ray's GCS key-value store (both paths).
- `cluster_info`: an actor's state, the autoscaler's ceiling, a cluster.yaml's validity.
- `tune_files`: Tune's and Train's file names and what the service reads of them; Tune's
  syncer, a Tuner's live run config, a new trial's storage.
- `optuna_study`: the study a restored searcher belongs to now, and a running Optuna trial taken
  up again by its number (the searcher itself, `search.driver.study_searcher`, is public API).

Each private symbol has a contract test (`tests/search/seam/test_contracts.py`) that fails
naming it when an upgrade of Ray or Optuna moves or changes it.
"""
