"""`python -m search.serve OUT`: a real Ray Serve server, a real HTTP client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from search import load_best
from tests.conftest import cli_env
from tests.search.best.test_export import make_export


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, content_type: str = "application/octet-stream") -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def multipart(files: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for i, path in enumerate(files):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image{i}"; filename="{path.name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("served")
    make_export(out)
    port = free_port()
    log = open(out / "serve.log", "w")  # noqa: SIM115 (open while the server runs)
    proc = subprocess.Popen([sys.executable, "-m", "search.serve", str(out), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}/predict"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, (out / "serve.log").read_text()[-3000:]
        try:
            if post(url, b"")[0] == 400:  # the application answers (an empty body is refused)
                break
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(1)
    else:
        pytest.fail("the server did not answer: " + (out / "serve.log").read_text()[-3000:])
    yield url, out
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.slow
def test_twenty_images_get_the_labels_load_best_gives(server, coats: Path) -> None:
    url, out = server
    images = sorted(coats.rglob("*.jpg"))[:20]
    expected = load_best(out).predict(images)
    one_by_one = [post(url, path.read_bytes()) for path in images]
    assert [status for status, _ in one_by_one] == [200] * 20
    assert [answer["prediction"] for _, answer in one_by_one] == expected["prediction"].tolist()
    for (_, answer), (_, row) in zip(one_by_one, expected.iterrows()):
        assert answer["probabilities"] == pytest.approx({c: row[c] for c in answer["probabilities"]}, abs=1e-5)
    status, together = post(url, *multipart(images))  # one request, a list back in the form's order
    assert status == 200 and [a["prediction"] for a in together] == expected["prediction"].tolist()


@pytest.mark.slow
def test_a_bad_upload_is_a_clear_4xx_and_the_server_stays_up(server, coats: Path, tmp_path: Path) -> None:
    url, _ = server
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    status, answer = post(url, text.read_bytes(), "text/plain")
    assert status == 400 and "not an image" in answer["error"]
    status, answer = post(url, *multipart([next(coats.rglob("*.jpg")), text]))
    assert status == 400 and answer["error"].startswith("notes.txt: not an image")
    assert post(url.replace("/predict", "/elsewhere"), b"x")[0] == 404
    assert post(url, next(coats.rglob("*.jpg")).read_bytes())[0] == 200  # still serving


def test_a_replica_takes_a_whole_batch_of_requests_at_once() -> None:
    """Serve's default (5 requests a replica at once) capped each batch at 5 and left 16 clients at
    a third of a no-op deployment's throughput (bench/RESULTS.md): the batch must be able to fill."""
    from search.serve import MAX_BATCH, Classifier

    assert Classifier.max_ongoing_requests >= MAX_BATCH
