"""Run a search in a fresh local Ray with the dashboard on; while it runs, ask the dashboard
for its version with and without the auth token; afterwards, what Ray's State API still
shows alive, and the class of every actor the search started. Writes all of it as JSON to
$LEAK_PROBE_OUT (tests/search/test_search.py, test_plain_path.py)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import ray
from ray.util import state

from search.driver.ray_cluster import LOCAL_RAY_ENV
from search.run import main
from tests.conftest import not_ours

if __name__ == "__main__":
    context = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                       configure_logging=False, runtime_env={"env_vars": LOCAL_RAY_ENV})
    # Name this cluster's dashboard: the test session runs a Ray of its own beside it.
    api = f"http://{context.dashboard_url}"
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    answers: dict[str, int] = {}
    done = threading.Event()

    def ask_dashboard() -> None:
        while not done.is_set() and len(answers) < 2:
            for label, headers in (("with_token", {"Authorization": f"Bearer {token}"}), ("without_token", {})):
                try:
                    with urllib.request.urlopen(urllib.request.Request(f"{api}/api/version", headers=headers),
                                                timeout=5) as reply:
                        answers[label] = reply.status
                except urllib.error.HTTPError as err:
                    answers[label] = err.code
            time.sleep(2)

    asker = threading.Thread(target=ask_dashboard)
    asker.start()
    code = main(sys.argv[1:])
    done.set()
    asker.join()
    deadline = time.monotonic() + 90  # Ray's own placement-group cleaners (its documented path) poll every 1 s
    while True:
        live = state.list_placement_groups(address=api, filters=[("state", "!=", "REMOVED")])
        groups = [g.placement_group_id for g in live]
        actors = [a.class_name for a in state.list_actors(address=api, filters=[("state", "=", "ALIVE")])
                  if a.class_name not in not_ours()]
        if not (groups or actors) or time.monotonic() > deadline:
            break
        time.sleep(1)
    started = [a.class_name for a in state.list_actors(address=api, limit=10000)]
    with open(os.environ["LEAK_PROBE_OUT"], "w") as f:
        json.dump({"exit_code": code, "placement_groups": groups, "actors": actors, "dashboard": answers,
                   "started": started}, f)
    ray.shutdown()
