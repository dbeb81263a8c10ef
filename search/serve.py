"""`python -m search.serve OUT [--port P] [--host H] [--address ADDR] [--replicas N]`: the best
model of a search behind HTTP, as a Ray Serve application.

`POST /predict` with an image file's bytes as the body answers
`{"prediction": label, "probabilities": {class: p, ...}}`; several images as a multipart
form (any field names) answer a list of those, in the form's order. An upload that is not an
image gets 400 with the reason (the server stays up); a request elsewhere gets 404. Requests
are batched on the server (`serve.batch`: up to `MAX_BATCH` images, `BATCH_WAIT_S`; a replica
takes twice that many requests at once, where Serve's default of 5 would starve the batch), and
`--replicas` runs that many copies, spread over a cluster's nodes with `--address`. The
probabilities are `load_best`'s: calibrated, with the export's test-time augmentation.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from search.best.loader import ExportError, load_best
from trainables.data import decode

MAX_BATCH = 32
BATCH_WAIT_S = 0.01
APP_NAME = "imagesearch"
EXIT_USAGE = 2


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=2 * MAX_BATCH)
class Classifier:
    """One replica: the exported model on this replica's CPU (or GPU, when it has one)."""

    def __init__(self, out: str) -> None:
        self.predictor = load_best(out)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _classify(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        classes = self.predictor.classes
        return [{"prediction": classes[int(p.argmax())], "probabilities": dict(zip(classes, map(float, p)))}
                for p in self.predictor.probabilities(np.stack(images))]

    async def __call__(self, request: Request) -> JSONResponse:
        if request.url.path.rstrip("/") != "/predict":
            return JSONResponse({"error": f"no {request.url.path}: POST images to /predict"}, status_code=404)
        if request.method != "POST":
            return JSONResponse({"error": "POST an image (the body) or several (a multipart form) to /predict"},
                                status_code=405)
        several = request.headers.get("content-type", "").startswith("multipart/form-data")
        try:
            uploads = await _uploads(request) if several else [("body", await request.body())]
        except Exception as err:  # a malformed form: the client's mistake, not the server's
            return JSONResponse({"error": f"could not read the form: {err}"}, status_code=400)
        if not uploads:
            return JSONResponse({"error": "no image: the body (or the form) is empty"}, status_code=400)
        images = []
        for name, data in uploads:
            try:
                images.append(decode(io.BytesIO(data), self.predictor.size_px))
            except Exception as err:
                return JSONResponse({"error": f"{name}: not an image this model can read ({type(err).__name__}: "
                                              f"{err})"}, status_code=400)
        results = await asyncio.gather(*(self._classify(image) for image in images))
        return JSONResponse(list(results) if several else results[0])


async def _uploads(request: Request) -> list[tuple[str, bytes]]:
    """The form's files (and non-empty text fields), in order, as (name, bytes)."""
    form = await request.form()
    uploads = []
    for field, value in form.multi_items():
        if hasattr(value, "read"):
            uploads.append((value.filename or field, await value.read()))
        elif value:
            uploads.append((field, value.encode()))
    return uploads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m search.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="a search's --out (local folder or URI): its best/ is served")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--host", default=None,
                        help="HTTP address to listen on (default: 127.0.0.1 on a local Ray, 0.0.0.0 with --address)")
    parser.add_argument("--address", help="join this Ray cluster (as search.run --address) instead of a local Ray")
    parser.add_argument("--replicas", type=int, default=1, help="copies of the model serving at once (default 1)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port: {args.port} is not allowed; expected 1 to 65535")
    if args.replicas < 1:
        parser.error(f"--replicas: {args.replicas} is not allowed; expected 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        load_best(args.out)  # a missing or modified best/ is one line here, not a replica's crash loop
    except (ExportError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    from search.driver.ray_cluster import start_ray

    out = args.out if "://" in args.out else str(Path(args.out).resolve())  # replicas have their own cwd
    start_ray(args.address)
    host = args.host or ("0.0.0.0" if args.address else "127.0.0.1")
    serve.start(http_options={"host": host, "port": args.port})
    serve.run(Classifier.options(num_replicas=args.replicas).bind(out), name=APP_NAME, route_prefix="/")
    print(f"Serving {args.out}/best on http://{host}:{args.port}/predict ({args.replicas} replica(s)); "
          "Ctrl-C stops it.", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    serve.delete(APP_NAME)
    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
