"""The HTTP endpoint under load, against Ray Serve's own floor on the same machine and clients.

    python -m bench --cases serve
    python -m bench.serve_load [--clients 16] [--requests 600] [--size-px 80] [--json PATH]

One local Ray; on it, in turn, three Serve applications on the same port, each loaded by the same
clients (`--clients` threads, each on its own keep-alive connection, `--requests` POSTs of a
JPEG in all): a no-op deployment that reads the body and answers a fixed JSON (Serve's floor:
its HTTP proxy, routing and replica call), with Serve's defaults and with the options the
classifier's deployment sets, then `search.serve`'s classifier on an exported
small CNN (random weights: the cost depends on the graph, not the weights). Beside them, where a
request's time goes inside the replica, timed in this process: the decode, the model on one
image and on a batch, the JSON. The issue's goal: the endpoint's throughput at least half the
faster floor's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PORT = 8431
DEFAULT_FLOOR = "no-op deployment, Serve's defaults"
FLOOR = "no-op deployment, the classifier's options (Serve's floor)"
OURS = "search.serve classifier"
GOAL = 0.5


def jpeg(size_px: int = 640, seed: int = 0) -> bytes:
    """A photo-sized JPEG of noise and shapes: what a client uploads."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size_px * 3 // 4, size_px, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def load(port: int, body: bytes, clients: int, requests: int) -> dict[str, Any]:
    """`requests` POSTs of `body` to /predict from `clients` threads; throughput and latencies."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    left = [requests]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200:
                    errors.append(f"{response.status}: {answer[:200]!r}")
            except Exception as err:  # noqa: BLE001 - counted, the load goes on
                errors.append(repr(err))
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - started)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
            "seconds": wall, "requests_per_s": len(latencies) / wall,
            "p50_ms": 1000 * ordered[len(ordered) // 2], "p99_ms": 1000 * ordered[int(len(ordered) * 0.99) - 1]}


def warm(port: int, body: bytes, deadline_s: float = 120) -> None:
    """Until the application answers (its replica started)."""
    end = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"})
            if connection.getresponse().status == 200:
                return
        if time.monotonic() > end:
            raise RuntimeError("the application did not answer")
        time.sleep(0.5)


def export_small_cnn(out: Path, size_px: int) -> None:
    """`out/best/` holding a small CNN with random weights, exported as a search exports it."""
    import torch

    from search.best.export import export_best
    from trainables.hparams import HParams
    from trainables.models import create_model

    hp = HParams(arch="small_cnn", optimizer="adam", lr=1e-3, batch_size=32, augment=0.0, dropout=0.0,
                 cnn_width=32, cnn_depth=4, weights="none")
    torch.manual_seed(0)
    model = create_model(4, hp)
    export_best(out, {"model": model.state_dict(), "epoch": 1}, ("a", "b", "c", "d"), hp, {"val_acc": 0.5}, "t",
                size_px, tta={"mode": None})


def inside(out: Path, body: bytes, batch: int = 16, runs: int = 50) -> dict[str, float]:
    """Where a request's time goes inside a replica, in ms: decode, model (1 image, and per image
    of a batch), JSON."""
    from search.best.loader import load_best
    from trainables.data import decode

    predictor = load_best(str(out))
    size = predictor.size_px

    def timed(work: Any) -> float:
        work()
        started = time.perf_counter()
        for _ in range(runs):
            work()
        return 1000 * (time.perf_counter() - started) / runs

    image = decode(io.BytesIO(body), size)
    images = np.stack([image] * batch)
    probabilities = predictor.probabilities(image[None])[0]
    answer = {"prediction": "a", "probabilities": dict(zip(predictor.classes, map(float, probabilities)))}
    return {"decode_ms": timed(lambda: decode(io.BytesIO(body), size)),
            "model_1_ms": timed(lambda: predictor.probabilities(image[None])),
            f"model_per_image_in_{batch}_ms": timed(lambda: predictor.probabilities(images)) / batch,
            "json_ms": timed(lambda: json.dumps(answer))}


def serve_cases(size_px: int = 80, clients: int = 16, requests: int = 600) -> list[dict[str, Any]]:
    """The records of `python -m bench --cases serve`: the no-op floor with Serve's defaults and
    with the classifier's deployment options, then the classifier, each as requests (`images`)
    per second; the classifier's ratio is to the faster floor, and it carries the timings inside
    a replica."""
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from search.driver.ray_cluster import start_ray
    from search.serve import APP_NAME, Classifier

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    class NoOp:
        """Serve's floor: the body read, a fixed answer."""

        async def __call__(self, request: Request) -> JSONResponse:
            await request.body()
            return JSONResponse({"prediction": "a", "probabilities": {"a": 1.0}})

    body = jpeg()
    loads: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as work:
        out = Path(work)
        export_small_cnn(out, size_px)
        within = inside(out, body)
        print(f"  inside a replica: {within}", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):
            start_ray(None)
            serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        try:
            # Serve's defaults let a replica take 5 requests at once, which starves a batching
            # model; the floor is also measured with the classifier's own options, the fairer one.
            same = {"max_ongoing_requests": Classifier.max_ongoing_requests}
            for name, app in ((DEFAULT_FLOOR, NoOp.bind()), (FLOOR, NoOp.options(**same).bind()),
                              (OURS, Classifier.bind(str(out)))):
                serve.run(app, name=APP_NAME, route_prefix="/")
                warm(PORT, body)
                load(PORT, body, clients, min(64, requests))  # warm-up: connections, batches
                loads[name] = load(PORT, body, clients, requests)
                print(f"  {name}: {loads[name]}", file=sys.stderr, flush=True)
                serve.delete(APP_NAME)
        finally:
            serve.shutdown()
            ray.shutdown()
    floor = max((DEFAULT_FLOOR, FLOOR), key=lambda name: loads[name]["requests_per_s"])
    records = []
    for name, measured in loads.items():
        records.append({"case": f"HTTP {name}", "arch": "small_cnn" if name == OURS else None, "size_px": size_px,
                        "images": measured["requests"], "seconds": measured["seconds"],
                        "images_per_s": measured["requests_per_s"], "baseline": f"HTTP {floor}",
                        "ratio_vs_baseline": measured["requests_per_s"] / loads[floor]["requests_per_s"],
                        "clients": clients, **{k: measured[k] for k in ("errors", "first_error", "p50_ms", "p99_ms")},
                        **({"inside_replica_ms": within} if name == OURS else {})})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--size-px", type=int, default=80)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    records = serve_cases(args.size_px, args.clients, args.requests)
    ours = records[-1]
    print(f"search.serve: {ours['images_per_s']:.1f} requests/s (p50 {ours['p50_ms']:.0f} ms, p99 "
          f"{ours['p99_ms']:.0f} ms, {ours['errors']} errors): {ours['ratio_vs_baseline']:.2f} of "
          f"{ours['baseline']} (goal >= {GOAL})")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
