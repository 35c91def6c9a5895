"""Where a study lives, as Optuna recommends for each case: its journal file for the processes of one machine
(the default, in the study folder), a database URL (RDB storage: sqlite, PostgreSQL, MySQL) for several machines.

A database storage gets Optuna's heartbeat: a trial whose process stops beating for GRACE_SECONDS is marked
failed by the next process that starts a trial, on any machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.errors import TransferkitError

HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


@dataclass
class Storage:
    """An opened Optuna storage, how to name it in messages, and the lock file with which this machine's
    processes take turns to count the study's trials and start one (so together they start exactly N)."""

    optuna: Any
    where: str
    lock: Path


def _shown(url: str) -> str:
    """The URL with its password hidden."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str | None, journal: Path) -> Storage:
    """`--storage`: None for the journal file `journal`, a path for another journal file, or a database URL."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url and "://" in url:
        try:
            storage = RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
        except Exception as exc:  # sqlalchemy: bad URL, missing driver, database out of reach
            reason = " ".join(str(exc).split())[:300]
            raise TransferkitError(f"--storage {_shown(url)}: cannot open it ({type(exc).__name__}: {reason}); give "
                                   f"a database URL such as sqlite:///study.db or postgresql://user:pw@host/db (with "
                                   f"its driver installed), or leave --storage out for a journal file") from None
        return Storage(storage, _shown(url), journal.parent / "study.turn")
    path = Path(url) if url else journal
    if path.is_dir():
        raise TransferkitError(f"--storage {path}: that is a folder; give a journal file (study.journal) or a "
                               f"database URL")
    path.parent.mkdir(parents=True, exist_ok=True)
    return Storage(JournalStorage(JournalFileBackend(str(path))), str(path), path.with_name(path.name + ".turn"))
