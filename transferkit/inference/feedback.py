"""Progress for predict and evaluate: a Rich bar on a terminal, a plain line every tenth of the way otherwise."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console

from transferkit.progress import Progress


class _Lines:
    def __init__(self, console: Console, description: str, total: int):
        self.console, self.description, self.total, self.done, self.next_report = console, description, total, 0, 0.1

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.total and (self.done / self.total >= self.next_report or self.done == self.total):
            self.console.print(f"{self.description}: {self.done}/{self.total}", markup=False, highlight=False)
            while self.next_report <= self.done / self.total:
                self.next_report += 0.1


@contextmanager
def feedback(console: Console, description: str, total: int, enabled: bool = True):
    """Something with `.advance(n)`: a transient bar on a terminal, plain lines elsewhere, nothing when disabled."""
    if not enabled:
        yield _Lines(console, description, 0)
        return
    if console.is_terminal:
        with Progress(console).task(description, total) as task:
            yield task
        return
    yield _Lines(console, description, total)
