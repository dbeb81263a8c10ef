"""Run a search in a fresh local Ray with the dashboard on, then write what Ray's State API
still shows alive as JSON to $LEAK_PROBE_OUT (tests/search/test_search.py runs this)."""

from __future__ import annotations

import json
import os
import sys
import time

import ray
from ray.util import state

from search.run import RAY_JOB_ENV, main
from tests.search.test_search import CLUSTER_SINGLETONS

if __name__ == "__main__":
    context = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", configure_logging=False,
                       runtime_env={"env_vars": RAY_JOB_ENV})
    # Name this cluster's dashboard: the test session runs a Ray of its own beside it.
    api = f"http://{context.dashboard_url}"
    code = main(sys.argv[1:])
    deadline = time.monotonic() + 30
    while True:
        groups = [g.placement_group_id for g in state.list_placement_groups(address=api, filters=[("state", "!=", "REMOVED")])]
        actors = [a.class_name for a in state.list_actors(address=api, filters=[("state", "=", "ALIVE")])
                  if a.class_name not in CLUSTER_SINGLETONS]
        if not (groups or actors) or time.monotonic() > deadline:
            break
        time.sleep(1)
    with open(os.environ["LEAK_PROBE_OUT"], "w") as f:
        json.dump({"exit_code": code, "placement_groups": groups, "actors": actors}, f)
    ray.shutdown()
