"""Rich progress bars for batches (loss, images/s, ETA), silent when disabled."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class _Task:
    def __init__(self, bar: RichProgress | None, task_id):
        self.bar, self.task_id = bar, task_id

    def advance(self, steps: int = 1, loss: float | None = None, rate: float | None = None) -> None:
        """Move the bar on by `steps`, updating the shown loss and images/s when given."""
        if self.bar is None:
            return
        fields = {}
        if loss is not None:
            fields["loss"] = f"loss {loss:.4f}"
        if rate is not None:
            fields["rate"] = f"{rate:.1f} img/s"
        self.bar.update(self.task_id, advance=steps, **fields)


class Progress:
    """Creates one transient bar per loop; `enabled=False` makes every call a no-op."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.enabled = enabled and self.console.is_terminal  # a log file gets the per-epoch lines only

    @contextmanager
    def task(self, description: str, total: int):
        """A bar for `total` steps, removed when the block ends."""
        if not self.enabled:
            yield _Task(None, None)
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with RichProgress(*columns, console=self.console, transient=True) as bar:
            yield _Task(bar, bar.add_task(description, total=total, loss="", rate=""))
