"""A frozen backbone's features computed once per search, not once per trial.

Trials that train a head on the same frozen backbone, images and views need the same
features (`trainables.loop.fit` keys them). The search's driver starts one `FeatureStore`
actor; the first trial to ask for a key computes the features and hands them over, the
others wait for them and start training their head at once. The actor owns the stored
copy (in Ray's object store: zero-copy for every trial on its node), so it outlives the
trial that computed it; it keeps the most recently used up to a size limit.
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
    from trainables.loop import FeatureArrays

CLAIM_STALE_S = 30.0  # a claim not renewed for this long is given up (its trial was stopped or died)
RENEW_S = 5.0
POLL_S = 0.2
DEFAULT_MAX_BYTES = 2 * 1024**3


@ray.remote(num_cpus=0)
class FeatureStore:
    """Features by key: ready (a reference the actor owns), claimed (being computed), or neither."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, claim_stale_s: float = CLAIM_STALE_S) -> None:
        self.max_bytes, self.claim_stale_s = max_bytes, claim_stale_s
        self.ready: OrderedDict[str, tuple[list[ray.ObjectRef], int]] = OrderedDict()
        self.claims: dict[str, float] = {}
        self.computed = self.shared = 0

    def get_or_claim(self, key: str) -> tuple[str, list[ray.ObjectRef] | None]:
        """("ready", [ref]); ("wait", None) while another run computes them; else ("compute",
        None): the caller has the claim and must `put` (or `release`) it."""
        if key in self.ready:
            self.ready.move_to_end(key)
            self.shared += 1
            return "ready", self.ready[key][0]
        claimed = self.claims.get(key)
        if claimed is not None and time.monotonic() - claimed < self.claim_stale_s:
            return "wait", None
        self.claims[key] = time.monotonic()
        return "compute", None

    def renew(self, key: str) -> None:
        if key in self.claims:
            self.claims[key] = time.monotonic()

    def release(self, key: str) -> None:
        self.claims.pop(key, None)

    def put(self, key: str, arrays: FeatureArrays) -> None:
        self.claims.pop(key, None)
        size = sum(getattr(a, "nbytes", 0) for a in arrays)
        if size > self.max_bytes:
            return  # larger than the store: each trial computes its own, as without it
        self.ready[key] = ([ray.put(arrays)], size)
        self.computed += 1
        while sum(s for _, s in self.ready.values()) > self.max_bytes:
            self.ready.popitem(last=False)

    def stats(self) -> dict[str, int]:
        return {"computed": self.computed, "shared": self.shared, "stored": len(self.ready)}


def start_store(max_bytes: int = DEFAULT_MAX_BYTES, claim_stale_s: float = CLAIM_STALE_S) -> Any:
    """A store for this search, owned by the driver (it ends with it)."""
    # One call at a time: a claim is a check and a write that must not interleave.
    return FeatureStore.options(num_cpus=0, resources=ON_HEAD).remote(max_bytes, claim_stale_s)


def sharing(store: Any) -> Callable[[str, Callable[[], FeatureArrays]], tuple[FeatureArrays, bool]]:
    """`trainables.loop.ShareFeatures` through `store`, for a trial's worker."""

    def share(key: str, compute: Callable[[], FeatureArrays]) -> tuple[FeatureArrays, bool]:
        while True:
            status, found = ray.get(store.get_or_claim.remote(key))
            if status == "ready":
                return ray.get(found[0]), True
            if status == "compute":
                return _compute(store, key, compute), False
            time.sleep(POLL_S)

    return share


def _compute(store: Any, key: str, compute: Callable[[], FeatureArrays]) -> FeatureArrays:
    """Compute under the claim, renewing it meanwhile, and hand the result to the store."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(RENEW_S):
            store.renew.remote(key)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        arrays = compute()
    except BaseException:
        store.release.remote(key)
        raise
    finally:
        done.set()
    ray.get(store.put.remote(key, arrays))
    return arrays
