"""A kill at any moment: one line saying what is kept and how to go on, the exit a shell expects (143),
the MLflow runs marked KILLED, no process left behind. Real signals, real processes, a real store."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import psutil

from plmrec.errors import Interrupted
from plmrec.interrupts import stopped_by_signal

BIG = ["-S", "data.synthetic.n_customers=3000", "-S", "data.synthetic.n_invoices=60000"]  # ~20 s to generate


def _start(args, cwd, *, marker: str, env_extra: dict | None = None):
    """A plmrec command in its own process; returns once `marker` is in its output (what it printed so far)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", **(env_extra or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plmrec.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return proc, seen
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError("ended before the marker: " + "".join(seen))


def _runs(cwd):
    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids)


def test_the_block_turns_a_signal_into_one_line():
    try:
        with stopped_by_signal("stage x", kept="kept: nothing"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    except Interrupted as exc:
        assert str(exc) == "stage x: stopped by SIGTERM; kept: nothing" and exc.exit_code == 143
    else:
        raise AssertionError("no Interrupted")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the block


def test_a_killed_stage_says_what_is_kept_and_its_run_is_killed(tmp_path):
    proc, seen = _start(["stage", "ingest", *BIG, "--raw", "raw.parquet"], tmp_path, marker="Updating database tables")
    time.sleep(2.0)  # the stage's run is open, the generator at work
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 143, out
    assert "error: stage ingest: stopped by SIGTERM; nothing half-done is kept" in out and "rerun the same" in out
    assert "Traceback" not in out and not (tmp_path / "raw.parquet").exists()
    (run,) = _runs(tmp_path)
    assert run.info.status == "KILLED" and "stopped by SIGTERM" in run.data.tags["plmrec.stopped"]


def test_a_killed_pipeline_run_marks_its_parent_killed_and_leaves_no_process(tmp_path):
    proc, seen = _start(["run", *BIG], tmp_path, marker="▶ ingest")
    time.sleep(4.0)  # the ingest step's own process is generating data
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "".join(seen)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=180)
    out = "".join(seen) + rest
    assert proc.returncode == 143, out
    assert "error: plmrec run: stopped by SIGTERM; kept: the finished stages' artifacts under" in out, out
    assert "during ingest" in out and "Traceback" not in out.split("error: plmrec run")[1]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive
    runs = _runs(tmp_path)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED", [(r.info.run_name, r.info.status) for r in runs]
    assert "stopped by SIGTERM" in parent.data.tags["plmrec.final_message"]
    assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
