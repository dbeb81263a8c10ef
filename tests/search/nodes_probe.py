"""A search on a 3-node Ray cluster on this machine, one node lost mid-search (a test's subprocess).

`python nodes_probe.py EXPERIMENT OUT RESULT_JSON`: starts a head without CPUs and a 2-CPU
worker node (`ray.cluster_utils.Cluster`, as Ray's own tests do), runs `python -m search.run
EXPERIMENT --out OUT --address HEAD`, and once the first checkpoint exists kills every process
of the worker node (no graceful stop: a reclaimed spot instance); a new worker node joins
`REJOIN_S` later. Then it writes RESULT_JSON: the search's exit code and output, the three
node ids, and every actor the cluster ran (class, node, state), read from Ray's GCS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REJOIN_S = 10
TIMEOUT_S = 600


def main(experiment: str, out: str, result: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        first = cluster.add_node(num_cpus=2)
        search = subprocess.Popen([sys.executable, "-m", "search.run", experiment, "--out", out,
                                   "--address", cluster.address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=os.environ)
        deadline = time.monotonic() + TIMEOUT_S
        while not list(Path(out).glob("train/*/epoch-*")) and search.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        killed_at = time.monotonic()
        cluster.remove_node(first, allow_graceful=False)
        time.sleep(REJOIN_S)
        second = cluster.add_node(num_cpus=2)
        rejoined_s = time.monotonic() - killed_at
        output, _ = search.communicate(timeout=TIMEOUT_S)
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        from search.seam import cluster_info

        actors = [{"class": a["ActorClassName"], "node": a["Address"]["NodeID"], "state": a["State"]}
                  for a in cluster_info.actors().values()]
        ray.shutdown()
        Path(result).write_text(json.dumps({
            "exit_code": search.returncode, "output": output[-20000:],
            # counted over the whole output: the tail above may start after the retries' lines
            "retries": output.count("retrying from its last checkpoint"), "head": cluster.head_node.node_id,
            "killed": first.node_id, "joined": second.node_id, "rejoined_s": rejoined_s, "actors": actors}))
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
