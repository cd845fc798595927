"""Run the KFP pipeline on this machine with the kfp local subprocess runner.

kfp local prints every task's full log; the run writes that to `<run dir>/pipeline.log`
and shows one progress line per stage (and the stage's own `[plmrec]` lines) instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import re
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from plmrec import tracking
from plmrec.config import Params
from plmrec.errors import Interrupted
from plmrec.interrupts import stopped_by_signal
from plmrec.stages import STAGES

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
# kfp's local runner warns, for every task, that the settings only a cluster uses (resources, the
# accelerator, the display name) are ignored, and that the step image is not a Python image. Both are
# expected on a laptop; exactly these two are silenced, every other warning still shows.
LOCAL_RUNNER_NOTICES = (
    (r"Task '[^']+': settings \[.*\] have no effect in the current local runner", UserWarning),
    (r"You may be attemping to run a task that uses custom or non-Python base image", RuntimeWarning),
)


@contextlib.contextmanager
def quiet_local_runner():
    """Silence the local runner's two known, harmless notices (LOCAL_RUNNER_NOTICES)."""
    with warnings.catch_warnings():
        for message, category in LOCAL_RUNNER_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


_BAR = re.compile(  # a tqdm progress line: "desc:  45%|####      | 9/20 [00:05<00:06,  1.80step/s]"
    r"^(?P<desc>[^|]*?):?\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<done>[\d.]+\w?)/(?P<total>[\d.]+\w?)\s*\[(?P<times>[^\],]*)"
)
BAR_EVERY_S = 30.0  # a console that is not a terminal gets a progress line this often (a terminal: live)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class ProgressStream(io.TextIOBase):
    """Writes everything to a log file; echoes stage starts/ends (k/N, elapsed), `[plmrec]` lines and the
    training loops' progress (step/total, elapsed<ETA: live on a terminal, every BAR_EVERY_S otherwise)
    to the console."""

    def __init__(self, log_file, console, verbose: bool = False, *, total: int = 0):
        self.log, self.console, self.verbose = log_file, console, verbose
        self.started: dict[str, float] = {}
        self.failed: list[str] = []
        self.ended: set[str] = set()
        self.tail: list[str] = []
        self._buf = ""
        self.total, self.t0 = total, time.perf_counter()
        self.live = bool(getattr(console, "isatty", lambda: False)())
        self._shown_bar = 0.0
        self._transient = False

    def _say(self, text: str) -> None:
        if self._transient:  # the live progress line gives way
            self.console.write("\r\x1b[K")
            self._transient = False
        self.console.write(text)

    def _bar(self, m: re.Match) -> None:
        now = time.perf_counter()
        text = f"    {m['desc'].strip() or 'progress'}: {m['done']}/{m['total']} ({m['pct']}%), {m['times'].strip()}"
        if self.live:
            self.console.write("\r\x1b[K" + text[:150])
            self._transient = True
        elif now - self._shown_bar >= BAR_EVERY_S:
            self.console.write(text + "\n")
            self._shown_bar = now

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.verbose:
            self.console.write(text)
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(text)

    def _line(self, line: str) -> None:
        self.tail = (self.tail + [line])[-40:]
        if self.verbose:
            return
        elapsed = _clock(time.perf_counter() - self.t0)
        if m := _START.search(line):
            self.started[m.group(1)] = time.perf_counter()
            self._say(f"▶ {m.group(1)} ({len(self.started)}/{self.total or '?'}, {elapsed} elapsed)\n")
            self._shown_bar = time.perf_counter()
        elif m := _END.search(line):
            name, status = m.groups()
            self.ended.add(name)
            took = time.perf_counter() - self.started.get(name, time.perf_counter())
            mark = "✓" if status == "SUCCESS" else "✗"
            if status != "SUCCESS":
                self.failed.append(name)
            self._say(f"{mark} {name} {status.lower()} in {took:.1f}s ({elapsed} elapsed)\n")
        elif "[plmrec]" in line or "DataValidationFailed" in line or "Error:" in line:
            self._say("    " + line.strip() + "\n")
        elif m := _BAR.search(line.strip()):
            self._bar(m)
        self.console.flush()

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()


@dataclass
class LocalRunResult:
    run_key: str
    run_dir: Path
    tracking_uri: str
    parent_run_id: str | None
    succeeded: bool
    seconds: float
    log_path: Path


def run_local(
    params: Params, run_dir: str | Path | None = None, verbose: bool = False, *, project_dir: str | Path | None = None
) -> LocalRunResult:
    """Execute the training pipeline with kfp.local; returns where everything landed."""
    from kfp import local

    from plmrec.pipelines import build_training_pipeline

    project = Path(project_dir or Path.cwd()).resolve()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_key = f"local-{stamp}-{uuid.uuid4().hex[:6]}"
    run_dir = Path(run_dir or project / "runs" / run_key).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking.resolve_tracking_uri(params, project)
    log_path = run_dir / "pipeline.log"
    pipeline = build_training_pipeline(params)
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "artifacts"), raise_on_error=False
    )
    console = sys.stdout
    start = time.perf_counter()
    console.write(
        f"plmrec run {run_key}: pipeline '{params.pipeline.name}', data '{params.data.source}', MLflow {uri}\n"
        f"full log: {log_path}\n"
    )
    kept = (
        f"kept: the finished stages' artifacts under {run_dir}, the MLflow parent run marked KILLED; a new "
        f"`plmrec run` starts over (`dvc repro` reruns only what changed, pretrain and finetune from checkpoints)"
    )
    with open(log_path, "w", encoding="utf-8") as log:
        stream = ProgressStream(log, console, verbose, total=len(STAGES) + 1)  # and the exit handler
        try:
            with (
                stopped_by_signal("plmrec run", kept=kept, children=True),
                contextlib.redirect_stdout(stream),
                quiet_local_runner(),
            ):
                pipeline(config=params.to_dict(), tracking_uri=uri, run_key=run_key)
        except Interrupted as exc:
            stream.flush()
            running = [name for name in stream.started if name not in stream.ended]
            during = f" during {', '.join(running)}" if running else ""
            with contextlib.suppress(Exception):  # the store may be what went away
                tracking.finish_parent(uri, params, run_key, status="KILLED", message=f"{exc}{during}")
            raise Interrupted(f"{exc}{during}", signum=exc.exit_code - 128) from None
        stream.flush()
    seconds = time.perf_counter() - start
    try:
        parent = tracking.parent_run(uri, params, run_key)
        link = tracking.ui_link(uri, tracking.ensure_experiment(uri, params.tracking.experiment), parent)
    except Exception:  # nothing reached MLflow (e.g. the store is unreachable)
        parent = link = None
    ok = not stream.failed
    if not ok:
        console.write(
            "\n".join(
                ["", f"pipeline failed at: {', '.join(stream.failed)}", "last log lines:"]
                + ["  " + line for line in stream.tail[-15:] if line.strip()]
            )
            + "\n"
        )
    console.write(
        f"{'done' if ok else 'FAILED'} in {seconds:.1f}s; artifacts under {run_dir}; "
        f"full log {log_path}; MLflow parent run {parent}\n"
    )
    if link:
        serve = "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}, then "
        console.write(f"MLflow UI: {serve}{link}\n")
    if ok:
        _serving_hint(run_dir, console)
    return LocalRunResult(run_key, run_dir, uri, parent, ok, seconds, log_path)


def _serving_hint(run_dir: Path, console) -> None:
    """Where the run's bundle is, how to serve it and a first request with ids this data has."""
    from plmrec.serving.bundle import example_ids, lift_summary, read_meta

    found = sorted(run_dir.glob("artifacts/*/compare-models/bundle/bundle.json"))
    if not found:
        return
    bundle = found[0].parent
    console.write(lift_summary(read_meta(bundle)) + "\n")
    customer, codes = example_ids(bundle)
    body = json.dumps({"instances": [{"customer_id": customer, "k": 3}, {"basket": codes, "k": 3}]})
    console.write(
        f"serving bundle: {bundle}\n"
        f"serve it: plmrec serve --bundle {bundle}   (or `plmrec serve`: the registry's @champion)\n"
        f"then: curl -s localhost:8080/v1/models/plmrec:predict -H 'content-type: application/json' -d '{body}'\n"
    )
