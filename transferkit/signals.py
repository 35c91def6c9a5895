"""Graceful stop on Ctrl-C or SIGTERM: the first signal asks training to stop after the current step
and save; a second one exits at once (files on disk stay consistent: every write is atomic)."""

from __future__ import annotations

import os
import signal
import sys
import threading


class RunInterrupted(Exception):
    """A run stopped on request after saving its progress; `run_root` is the folder to resume.

    `epoch` is the epoch a resume continues, after its first `step` of `steps` training steps (0: from its start).
    """

    def __init__(self, run_root, variant: str, epoch: int, step: int = 0, steps: int = 0):
        super().__init__(f"interrupted in variant {variant}, epoch {epoch}; progress saved in {run_root}")
        self.run_root, self.variant, self.epoch, self.step, self.steps = run_root, variant, epoch, step, steps

    def what_resume_does(self) -> str:
        """'variant V: epochs 1-2 complete; a resume continues epoch 3 at step 5 of 12' (or from its start)."""
        done = f"epochs 1-{self.epoch - 1} complete" if self.epoch > 2 else (
            "epoch 1 complete" if self.epoch == 2 else "no epoch complete yet")
        where = f"at step {self.step + 1} of {self.steps}" if self.step else "from its start"
        return f"variant {self.variant}: {done}; a resume continues epoch {self.epoch} {where}"


class GracefulStop:
    """Context manager: while active, SIGINT/SIGTERM set `requested` instead of killing the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, notify=lambda message: print(message, file=sys.stderr)):
        self.requested = False
        self.notify = notify
        self._previous: dict = {}

    def is_requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        self.notify(f"{signal.Signals(signum).name}: stopping after the current step and saving; "
                    f"send it again to quit at once")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
