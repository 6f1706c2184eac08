"""Task specifications: what `analyze(model, tasks=[...])` accepts, turned into typed proto Tasks.

Accepted forms, freely mixed:
    "kernel_viz"                                   a name: the service's defaults
    {"kernel_viz": {"steps": 64, "layers": ["conv1"]}}   name -> options (proto field names)
    ("tconv_stats", {"fit_conv3d": False})
    tasks_pb2.KernelVizOptions(steps=64)           a typed options message
    tasks_pb2.Task(...)                            passed through
An unknown name is sent as a name, and the service refuses it with INVALID_ARGUMENT listing the valid ones.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from google.protobuf import json_format
from google.protobuf.message import Message

from kernelscope import catalogue
from kernelscope.v1 import tasks_pb2
from sdk import plugins
from sdk.errors import InvalidArgument

OPTIONS_BY_TASK: dict[str, type[Message]] = {name: entry.options for name, entry in catalogue.TASKS.items()}
# The analyses (every task but describe), from the task catalogue.
TASK_NAMES: tuple[str, ...] = catalogue.ANALYSES
# Each task's options and what an unset one means (its plugin's option_defaults; the proto documents the same defaults,
# a test holds them equal), for `kernelscope analyze --help` and for the error that names a misspelled option.
OPTION_DEFAULTS: dict[str, dict[str, str]] = {name: dict(plugins.get(name).option_defaults) for name in catalogue.NAMES}

TaskSpec = Any


def to_task(spec: TaskSpec) -> tasks_pb2.Task:
    """One task specification as a proto Task."""
    if isinstance(spec, tasks_pb2.Task):
        return spec
    if isinstance(spec, str):
        return tasks_pb2.Task(name=spec)
    if isinstance(spec, tuple) and len(spec) == 2:
        return _with_options(str(spec[0]), spec[1])
    if isinstance(spec, Mapping) and len(spec) == 1:
        (name, options), = spec.items()
        return _with_options(str(name), options)
    for name, cls in OPTIONS_BY_TASK.items():
        if isinstance(spec, cls):
            task = tasks_pb2.Task(name=name)
            getattr(task, name).CopyFrom(spec)
            return task
    raise TypeError(f"cannot read a task from {spec!r}; give a name, {{name: options}} or an options message")


def to_tasks(specs: Iterable[TaskSpec] | TaskSpec) -> list[tasks_pb2.Task]:
    if isinstance(specs, (str, Mapping, tuple, Message)):
        specs = [specs]
    return [to_task(s) for s in specs]


def task_name(task: tasks_pb2.Task) -> str:
    return task.name or (task.WhichOneof("options") or "")


def _with_options(name: str, options: Any) -> tasks_pb2.Task:
    task = tasks_pb2.Task(name=name)
    cls = OPTIONS_BY_TASK.get(name)
    if cls is None:
        return task  # the service names the valid tasks
    if isinstance(options, Message):
        getattr(task, name).CopyFrom(options)
        return task
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"options of task {name!r} must be an object of option: value, got {options!r}", reason="BAD_OPTIONS")
    valid = cls.DESCRIPTOR.fields_by_name
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise InvalidArgument(
            f"task {name!r} has no option {unknown[0]!r}; its options: {', '.join(valid) or 'none'}", reason="UNKNOWN_OPTION"
        )
    try:
        json_format.ParseDict(dict(options), getattr(task, name))
    except json_format.ParseError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidArgument(f"options of task {name!r}: {first}", reason="BAD_OPTIONS") from None
    return task


def help_text() -> str:
    """Every task with its options and their defaults, for --help."""
    lines = ["tasks and their options (unset means the default shown):"]
    for name, options in OPTION_DEFAULTS.items():
        lines.append(f"  {name}" + (":" if options else " (no options)"))
        lines.extend(f"    {option:<20} {default}" for option, default in options.items())
    return "\n".join(lines)
