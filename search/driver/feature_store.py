"""A frozen backbone's features computed once per search, not once per trial, on the cores of
every trial that needs them.

Trials that train a head on the same frozen backbone, images and views need the same
features (`trainables.loop.fit` keys them). The search's driver starts one `FeatureStore`
actor; the pass over the images is cut in parts (`trainables.loop.feature_parts`), and every
trial that asks for a key takes a part no one is computing, computes it and hands it over,
until none is left; then each waits for the parts still being computed and starts training
its head. Two trials waiting for one backbone on a 2-core machine each compute half of it,
on one node or several. A part whose trial was stopped or died is taken over once its claim
goes stale. The actor owns the stored parts (in Ray's object store: zero-copy for every trial
on its node), so they outlive the trials that computed them; it keeps the most recently used
features up to a size limit (the newest always).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray

from search.driver.ray_cluster import ON_HEAD

if TYPE_CHECKING:
    from trainables.loop import PartArrays

CLAIM_STALE_S = 30.0  # a claim not renewed for this long is given up (its trial was stopped or died)
RENEW_S = 5.0
POLL_S = 0.2
DEFAULT_MAX_BYTES = 2 * 1024**3


@ray.remote(num_cpus=0)
class FeatureStore:
    """Features by key: ready (a reference per part, the actor's), or being computed part by
    part (each part stored, claimed, or neither)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, claim_stale_s: float = CLAIM_STALE_S) -> None:
        self.max_bytes, self.claim_stale_s = max_bytes, claim_stale_s
        self.ready: OrderedDict[str, tuple[list[ray.ObjectRef], int]] = OrderedDict()
        self.parts: dict[str, dict[int, tuple[ray.ObjectRef, int]]] = {}
        self.claims: dict[tuple[str, int], float] = {}
        self.computed = self.parts_computed = self.served = 0

    def claim(self, key: str, count: int) -> tuple[str, Any]:
        """("ready", [ref per part]); ("work", index): the caller has the claim of that part and
        must `put` (or `release`) it; ("wait", None) while the parts left are being computed."""
        if key in self.ready:
            self.ready.move_to_end(key)
            self.served += 1
            return "ready", self.ready[key][0]
        done, now = self.parts.setdefault(key, {}), time.monotonic()
        for index in range(count):
            claimed = self.claims.get((key, index))
            if index not in done and (claimed is None or now - claimed >= self.claim_stale_s):
                self.claims[(key, index)] = now
                return "work", index
        return "wait", None

    def renew(self, key: str, index: int) -> None:
        if (key, index) in self.claims:
            self.claims[(key, index)] = time.monotonic()

    def release(self, key: str, index: int) -> None:
        self.claims.pop((key, index), None)

    def put(self, key: str, index: int, count: int, part: PartArrays) -> None:
        self.claims.pop((key, index), None)
        if key in self.ready:
            return
        done = self.parts.setdefault(key, {})
        done[index] = (ray.put(part), getattr(part[0], "nbytes", 0))
        self.parts_computed += 1
        if len(done) < count:
            return
        del self.parts[key]
        self.ready[key] = ([done[i][0] for i in range(count)], sum(size for _, size in done.values()))
        self.computed += 1
        while len(self.ready) > 1 and sum(size for _, size in self.ready.values()) > self.max_bytes:
            self.ready.popitem(last=False)

    def stats(self) -> dict[str, int]:
        return {"computed": self.computed, "parts_computed": self.parts_computed, "served": self.served,
                "stored": len(self.ready)}


def start_store(max_bytes: int = DEFAULT_MAX_BYTES, claim_stale_s: float = CLAIM_STALE_S) -> Any:
    """A store for this search, owned by the driver (it ends with it)."""
    # One call at a time: a claim is a check and a write that must not interleave.
    return FeatureStore.options(num_cpus=0, resources=ON_HEAD).remote(max_bytes, claim_stale_s)


def sharing(store: Any) -> Callable[[str, int, Callable[[int], PartArrays]], tuple[list[PartArrays], int]]:
    """`trainables.loop.ShareFeatures` through `store`, for a trial's worker."""

    def share(key: str, count: int, compute: Callable[[int], PartArrays]) -> tuple[list[PartArrays], int]:
        mine = 0
        while True:
            status, found = ray.get(store.claim.remote(key, count))
            if status == "ready":
                return list(ray.get(found)), mine
            if status == "work":
                ray.get(store.put.remote(key, found, count, _compute(store, key, found, compute)))
                mine += 1
            else:
                time.sleep(POLL_S)

    return share


def _compute(store: Any, key: str, index: int, compute: Callable[[int], PartArrays]) -> PartArrays:
    """Compute a part under its claim, renewing it meanwhile."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(RENEW_S):
            store.renew.remote(key, index)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        return compute(index)
    except BaseException:
        store.release.remote(key, index)
        raise
    finally:
        done.set()
