"""Task options: one policy for reading a task's options JSON into its typed dataclass.

Why one policy: the analyses read the same proto JSON (kernelscope.contract.task_options: proto field names,
unset fields absent, int64 as strings), and a caller who hands them a dict directly (tests, examples) must meet
the same rules everywhere: camelCase or snake_case names, None / "" / [] mean "unset, take the default",
values converted to the field's type, unknown names refused. Each analysis states its defaults, with their
units, once, as fields of a TaskOptions dataclass (`option(default, unit)`), and its value checks in `check`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Callable, Mapping, TypeVar

from workers.errors import BadOptions

O = TypeVar("O", bound="TaskOptions")


def option(default: Any, unit: str) -> Any:
    """A dataclass field with its default and the unit (or the meaning) of its values, in the field's metadata."""
    return dataclasses.field(default=default, metadata={"unit": unit})


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Base of every task's options. Subclasses are frozen dataclasses whose fields all have defaults."""

    # The task these options belong to, for error messages (set by each subclass).
    TASK: typing.ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[O], raw: Mapping[str, Any]) -> O:
        """The options from their JSON: INVALID_ARGUMENT for an unknown name (UNKNOWN_OPTION), a value of the
        wrong type (BAD_TASK_OPTIONS) or a value `check` refuses (its own reason)."""
        given = {_snake(key): value for key, value in raw.items() if not _unset(value)}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise BadOptions(f"unknown {cls.TASK} options: {', '.join(unknown)}", reason="UNKNOWN_OPTION")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in given.items():
            try:
                values[name] = _converter(hints[name])(value)
            except (TypeError, ValueError) as exc:
                raise BadOptions(f"{cls.TASK} option {name} has a value of the wrong type: {exc}") from exc
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        """INVALID_ARGUMENT for values that cannot mean anything; what depends on the model is checked in `run`."""

    def to_dict(self) -> dict[str, Any]:
        """The resolved options as plain JSON data (tuples as lists), in field order."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _unset(value: Any) -> bool:
    return value is None or value == "" or value == []


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _converter(hint: Any) -> Callable[[Any], Any]:
    """A function from a JSON value to the field's type: scalars by their constructor, tuple[T, ...] item by item."""
    if typing.get_origin(hint) is tuple:
        item = _converter(typing.get_args(hint)[0])

        def items(value: Any) -> tuple[Any, ...]:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise TypeError(f"expected a list, got {value!r}")
            return tuple(item(v) for v in value)

        return items
    if hint is bool:
        return _boolean
    return hint


def _boolean(value: Any) -> bool:
    """A JSON boolean (or its text): bool("false") would be True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TypeError(f"expected true or false, got {value!r}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
