"""Which process runs a trial, and whether that process is gone: a trial whose process was killed (SIGKILL, a
crash, a power cut) stays RUNNING in the storage, and the next process on the same machine marks it failed.

Optuna's heartbeat does this for database storages (tune/storage.py), also across machines; its journal file
has none, so each trial records `host:pid:start` and a process on that host checks it before starting a trial.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable


def _start_time(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc), so a reused pid is told apart; '' where
    the platform does not say."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def this_worker() -> str:
    """'host:pid:start' of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def is_gone(worker: str) -> bool:
    """True when `worker` ('host:pid:start') ran on this machine and that process no longer exists. A process on
    another machine is never judged here."""
    parts = worker.split(":")
    host, pid, start = ":".join(parts[:-2]), parts[-2] if len(parts) > 2 else "", parts[-1]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return bool(start) and _start_time(int(pid)) != start


def fail_orphans(study, on_failed: Callable[[object], None]) -> list[int]:
    """Mark FAIL every RUNNING trial of `study` whose process is gone (see is_gone); `on_failed(trial)` for
    each. Returns their numbers."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker and is_gone(worker):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            on_failed(trial)
            failed.append(trial.number)
    return failed
