"""What a driver kill costs: the time a resumed search adds over the work left to do.

    python bench/resume_overhead.py [--trials 6] [--epochs 4] [--kill-at 0.5]

Runs the same small search three ways, one after the other, on generated data:
1. uninterrupted (T_full);
2. SIGKILLed (driver and the local Ray it started) at `kill-at` x T_full (t_kill), then
3. resumed with --resume until done (T_resume).
Overhead = t_kill + T_resume - T_full: Ray starting again, trials restarting from their
last checkpoint, the work of the epochs in flight at the kill.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = """from search.experiment.spec import *

experiment = Experiment(
    name="resume-bench",
    data="{data}",
    image_size_px=48,
    weights="none",
    space=Space(arch="small_cnn", cnn_width=16, cnn_depth=3, batch_size=16, augment=Uniform(0.0, 0.5),
                optimizer="adam", lr={{"adam": LogUniform(1e-3, 1e-2)}}),
    budget=Budget(trials={trials}, max_epochs={epochs}, grace_period_epochs={epochs}, reduction_factor=2),
    resources=Resources(workers=1, cpus_per_worker=1),
)
"""


def run(command: list[str], log: Path, kill_after_s: float | None = None) -> float:
    """Seconds the command ran; with `kill_after_s`, SIGKILL its whole session then."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    elapsed = time.perf_counter() - started
    if kill_after_s is None and proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: see {log}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the uninterrupted time")
    args = parser.parse_args()
    from search.data.generated import generate_coats

    work = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    data = generate_coats(work / "data", train_per_class=60, test_per_class=10, size_px=64, seed=0)
    experiment = work / "experiment.py"
    experiment.write_text(EXPERIMENT.format(data=data, trials=args.trials, epochs=args.epochs))
    base = [sys.executable, "-m", "search.run", str(experiment), "--cache", str(work / "cache")]

    full_s = run(base + ["--out", str(work / "full")], work / "full.log")
    kill_s = args.kill_at * full_s
    run(base + ["--out", str(work / "killed")], work / "killed.log", kill_after_s=kill_s)
    resume_s = run(base + ["--out", str(work / "killed"), "--resume"], work / "resume.log")
    result = {"trials": args.trials, "epochs": args.epochs, "full_s": round(full_s, 1), "killed_at_s": round(kill_s, 1),
              "resume_s": round(resume_s, 1), "overhead_s": round(kill_s + resume_s - full_s, 1),
              "work": str(work)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
