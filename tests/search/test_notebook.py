"""The Python API in a real Jupyter kernel: the quickstart notebook runs headless, a kernel runs
a second search after a first, and the kernel's interrupt stops a search cleanly, saying how to
continue it; the call it names finishes it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, tiny_experiment

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")

NOTEBOOK = REPO / "experiments" / "quickstart.ipynb"


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this repository importable, as for the command's subprocesses."""
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.slow
def test_the_quickstart_notebook_runs_headless_and_shows_the_table_and_a_prediction(coats: Path,
                                                                                   tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    # Injected after the parameters cell, as papermill does: the smoke budget on the test's data.
    notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(
        f"options = {{'data': {str(coats)!r}, 'smoke': True, 'out': {str(tmp_path / 'out')!r}}}"))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.km = client.create_kernel_manager()
    client.start_new_kernel(env=kernel_env())
    client.execute()
    outputs = ["".join(_text(o) for o in cell.get("outputs", []))
               for cell in notebook.cells if cell.cell_type == "code"]
    assert "The search finished" in outputs[2]
    assert "val_acc" in outputs[3] and "small_cnn" in outputs[3]  # the leaderboard
    assert "report_html" in outputs[4] and "useful_fraction" in outputs[4]
    assert "prediction" in outputs[5] and "blotches" in outputs[5]  # one row per image, a probability per class
    assert (tmp_path / "out" / "best" / "model.pt").is_file() and (tmp_path / "out" / "report.html").is_file()


def _text(output: Any) -> str:
    if "text" in output and "data" not in output:
        return output["text"]
    data = output.get("data", {})
    return data.get("text/plain", "") + data.get("text/html", "")


class Kernel:
    """A real IPython kernel, in the repository's root, run cell by cell."""

    def __init__(self) -> None:
        self.manager, self.client = jupyter_client.manager.start_new_kernel(
            kernel_name="python3", cwd=str(REPO), env=kernel_env())

    def run(self, code: str, timeout: float = 600) -> str:
        """Run `code`; everything it printed, or its error."""
        printed: list[str] = []

        def hear(message: dict[str, Any]) -> None:
            content = message["content"]
            if message["msg_type"] == "stream":
                printed.append(content["text"])
            elif message["msg_type"] in ("display_data", "update_display_data", "execute_result"):
                printed.append(_text(content))
            elif message["msg_type"] == "error":
                printed.append("\n".join(content["traceback"]))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hear)
        assert reply["content"]["status"] == "ok", "".join(printed)[-3000:]
        return "".join(printed)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.mark.slow
def test_in_a_kernel_a_second_search_runs_and_an_interrupt_stops_one_cleanly(coats: Path, tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=4, epochs=3)
    first, second = tmp_path / "first", tmp_path / "second"
    kernel = Kernel()
    try:
        kernel.run("from search import run_search")
        printed = kernel.run(f"r1 = run_search({str(experiment)!r}, out={str(first)!r}, trials=2, max_epochs=1)\n"
                             "print('STATUS', r1.status, len(r1.table))")
        assert "STATUS finished 2" in printed
        assert "run_trial_" in printed and "TERMINATED" in printed, printed[-3000:]  # Tune's progress shows

        # The same kernel: another search, interrupted (the kernel's Interrupt is a SIGINT) once a
        # trial has written a checkpoint.
        msg_id = kernel.client.execute(f"r2 = run_search({str(experiment)!r}, out={str(second)!r})")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(second.glob("train/train-*/epoch-*/*")):
            time.sleep(0.2)
        kernel.manager.interrupt_kernel()
        reply = kernel.client.get_shell_msg(timeout=300)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kernel.client.get_shell_msg(timeout=300)
        assert reply["content"]["status"] == "ok", reply["content"]  # stopped cleanly, no KeyboardInterrupt
        printed = kernel.run("print('STATUS', r2.status, r2.finished); print('RESUME', r2.resume); print(r2.message)")
        assert "STATUS interrupted False" in printed
        resume = printed.split("RESUME ", 1)[1].splitlines()[0]
        assert resume == f"run_search({str(experiment)!r}, out={str(second)!r}, resume=True)"
        assert "unfinished" in printed
        printed = kernel.run(f"r3 = {resume}\nprint('STATUS', r3.status, sorted(r3.table['status'].unique()))")
        assert "STATUS finished" in printed and "unfinished" not in printed.split("STATUS", 1)[1]
    finally:
        kernel.close()
