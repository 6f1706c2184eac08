"""The task catalogue: every task the service accepts, read from the proto's `Task` oneof.

Why here: the service, the workers and the SDK each need the same facts about a task (its name, its options
message, whether it needs a dataset or a runnable model, its report title, its schema version), and the service
cannot import the workers (torch). A task is declared once, as a field of `Task.options` in tasks.proto with
its `(task)` TaskInfo option; every layer reads this module. tests/test_catalogue.py fails when a field of the
oneof has no TaskInfo, or when a layer's own registry (the workers' implementations, the SDK's schemas and
report sections) lacks a task.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from kernelscope.v1 import tasks_pb2


@dataclass(frozen=True)
class TaskEntry:
    """One task. `options` is its options message class (the Task oneof field of the same name)."""

    name: str
    options: type[Message]
    title: str
    needs_dataset: bool
    needs_module: bool
    schema_version: int
    analysis: bool


def _read() -> dict[str, TaskEntry]:
    entries: dict[str, TaskEntry] = {}
    for field in tasks_pb2.Task.DESCRIPTOR.oneofs_by_name["options"].fields:
        options = field.GetOptions()
        if not options.HasExtension(tasks_pb2.task):
            raise RuntimeError(f"tasks.proto: Task.{field.name} has no (task) TaskInfo option")
        info = options.Extensions[tasks_pb2.task]
        entries[field.name] = TaskEntry(
            name=field.name,
            options=getattr(tasks_pb2, field.message_type.name),
            title=info.title,
            needs_dataset=info.needs_dataset,
            needs_module=info.needs_module,
            schema_version=info.schema_version,
            analysis=info.analysis,
        )
    return entries


TASKS: dict[str, TaskEntry] = _read()
# Every task name, in the oneof's order.
NAMES: tuple[str, ...] = tuple(TASKS)
# The analyses: tasks with a report section and gate metrics (all but describe).
ANALYSES: tuple[str, ...] = tuple(name for name, entry in TASKS.items() if entry.analysis)
NEEDS_DATASET: frozenset[str] = frozenset(name for name, entry in TASKS.items() if entry.needs_dataset)
NEEDS_MODULE: frozenset[str] = frozenset(name for name, entry in TASKS.items() if entry.needs_module)
