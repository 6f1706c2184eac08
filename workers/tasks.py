"""The task registry: one name per analysis, mapped to the function that runs it.

A task function takes a TaskContext and returns a JSON-serialisable summary dict; artifacts are
the files it writes under ctx.out_dir. Modules register themselves on import; `get` imports the
analysis packages lazily so that a worker pays only for what a job asks for.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np
from kernelscope import catalogue

from workers.context import TaskContext
from workers.errors import BadOptions

TaskFn = Callable[[TaskContext], dict[str, Any]]

# Task name -> module whose import registers it.
_PROVIDERS: dict[str, str] = {
    "describe": "workers.inventory",
    "tconv_stats": "workers.tconv.task",
    "kernel_viz": "workers.kernel_viz.task",
    "class_filters": "workers.class_filters.task",
}
_REGISTRY: dict[str, TaskFn] = {}

NAMES: tuple[str, ...] = catalogue.NAMES


def register(name: str) -> Callable[[TaskFn], TaskFn]:
    """Decorator: make `fn` the implementation of task `name`."""

    def wrap(fn: TaskFn) -> TaskFn:
        _REGISTRY[name] = fn
        return fn

    return wrap


def get(name: str) -> TaskFn:
    """The function for task `name`; INVALID_ARGUMENT listing the valid names for an unknown one."""
    if name not in NAMES:
        raise BadOptions(f"unknown task {name!r}; valid tasks: {', '.join(NAMES)}", reason="UNKNOWN_TASK")
    if name not in _REGISTRY:
        importlib.import_module(_PROVIDERS[name])
    return _REGISTRY[name]


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
