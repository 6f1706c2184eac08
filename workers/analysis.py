"""The shape every task's implementation has: an Analysis, found by its catalogue name.

Why: the job (workers/job.py) runs every task the same way: it reads the options through the task's typed
TaskOptions, checks the requirements the catalogue states (kernelscope.catalogue: needs a runnable module,
needs a dataset), gives the analysis a directory of its own for its files, calls `run`, and writes the
summary JSON beside those files. An analysis computes; it does not parse JSON or lay out artifacts.

Each catalogue task `<name>` is implemented by `workers.analyses.<name>`, a module whose ANALYSIS is an
Analysis (workers.tasks finds it by the name alone).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Mapping, TypeVar

import numpy as np

from kernelscope import catalogue

from workers.context import TaskContext
from workers.options import TaskOptions

O = TypeVar("O", bound=TaskOptions)


@dataclass(frozen=True)
class Outcome:
    """What an analysis returns: its summary (JSON-serialisable; the job's result and, for an analysis,
    also <name>/<name>.json). Its other files it has already written under ctx.out_dir, where the job
    uploads them from: images and arrays are not held in memory a second time to be handed back."""

    summary: dict[str, Any]


class Analysis(ABC, Generic[O]):
    """One task. Subclasses set `options` (the task's TaskOptions, whose TASK names the catalogue task) and
    implement `run`."""

    options: ClassVar[type[TaskOptions]]
    # json.dumps arguments of the summary file (each analysis keeps the layout its files have always had).
    summary_json: ClassVar[Mapping[str, Any]] = {"indent": 2, "allow_nan": False}

    @property
    def name(self) -> str:
        """The catalogue task this analysis implements."""
        return self.options.TASK

    @property
    def entry(self) -> catalogue.TaskEntry:
        """The catalogue's facts about this task: its requirements, title and whether it writes files."""
        return catalogue.TASKS[self.name]

    @abstractmethod
    def run(self, ctx: TaskContext, options: O) -> Outcome:
        """Compute the task on ctx.model (and ctx.dataset); write files under ctx.out_dir; report ctx.progress."""


def plain(value: Any) -> Any:
    """A summary as JSON-safe plain Python, recursively: numpy scalars and arrays to Python, NaN/inf to None,
    tuples to lists, keys to str (the JSON a job result carries has no NaN and no numpy)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if np.isfinite(value) else None
    return value
