"""Tasks: what a network learns to output (one class, a set of labels, numbers), with its loss and metrics."""

from transferkit.tasks import multi_label, regression, single_label  # noqa: F401  (register the built-ins)
from transferkit.tasks.base import Task, build_task, task_class

__all__ = ["Task", "build_task", "task_class"]
