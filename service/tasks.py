"""The task names the service accepts, what each needs, and the checks that normalise a Task message.

The facts are the task catalogue's (kernelscope.catalogue, read from tasks.proto's Task oneof).
"""

from __future__ import annotations

from kernelscope import catalogue
from kernelscope.v1 import tasks_pb2

from service import errors

# Valid task names; each is also the name of the Task oneof field that carries its options.
TASK_NAMES: tuple[str, ...] = catalogue.NAMES
# Tasks that read a labelled dataset.
NEEDS_DATASET = catalogue.NEEDS_DATASET
# Tasks that need activations or gradients, so a runnable module rather than weights alone.
NEEDS_RUNNABLE_MODEL = catalogue.NEEDS_MODULE

_VALID = ", ".join(TASK_NAMES)


def normalize(task: tasks_pb2.Task, index: int) -> tasks_pb2.Task:
    """The task with both its name and its options set; INVALID_ARGUMENT (listing valid names) otherwise."""
    which = task.WhichOneof("options")
    name = task.name
    if not name and not which:
        raise errors.invalid_argument(
            "EMPTY_TASK", f"tasks[{index}] has neither a name nor options; valid tasks: {_VALID}"
        )
    if name and name not in TASK_NAMES:
        raise errors.invalid_argument("UNKNOWN_TASK", f"tasks[{index}]: unknown task {name!r}; valid tasks: {_VALID}")
    if name and which and name != which:
        raise errors.invalid_argument(
            "TASK_NAME_MISMATCH",
            f"tasks[{index}] is named {name!r} but carries {which} options; valid tasks: {_VALID}",
        )
    out = tasks_pb2.Task()
    out.CopyFrom(task)
    out.name = name or which
    if not which:
        getattr(out, out.name).SetInParent()
    return out

