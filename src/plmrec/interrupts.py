"""A kill at any moment: SIGTERM (a pod evicted, a node drained, `kill`) and SIGINT (Ctrl-C) become
`Interrupted`, raised in the main thread, so a command ends with one line saying what is kept and how to
go on (exit 143 or 130), its MLflow run marked KILLED rather than left RUNNING.

Inside a training loop its own SIGTERM handler takes over for the loop's length (plmrec.training.loop:
a checkpoint at the step boundary, then `TrainingInterrupted`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from plmrec.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _terminate_children() -> None:
    """Pass the signal on to this process's children (the local runner's stage processes), so that each
    ends its own way (its MLflow run KILLED, a checkpoint where it trains) instead of running on orphaned."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.terminate()


def _interrupted(what: str, signum: int, kept: str) -> Interrupted:
    return Interrupted(f"{what}: stopped by {signal.Signals(signum).name}; {kept}", signum=signum)


@contextlib.contextmanager
def stopped_by_signal(what: str, *, kept: str, children: bool = False) -> Iterator[None]:
    """Within the block a SIGTERM or SIGINT raises Interrupted("<what>: stopped by SIGTERM; <kept>")."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if fired:  # a second signal while unwinding: let the first one finish its work
            return
        fired.append(signum)
        if children:
            _terminate_children()
        raise _interrupted(what, signum, kept)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def raise_on_signal(what: str, *, kept: str) -> None:
    """For a process that is one stage and nothing else (a KFP task): the handler stays for its lifetime."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        signal.signal(signum, signal.SIG_IGN)  # one line per process, however many signals come
        raise _interrupted(what, signum, kept)

    for s in SIGNALS:
        signal.signal(s, handler)
