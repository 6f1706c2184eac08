"""The task registry: each task of the catalogue (kernelscope.catalogue) mapped to its Analysis, by name alone.

The analysis of task `<name>` is ANALYSIS in the module `workers.analyses.<name>`: a task added to tasks.proto
needs that module and no edit here. `get` imports it on first use, so that a worker pays only for the tasks a
job asks for.
"""

from __future__ import annotations

import importlib
from typing import Any

from kernelscope import catalogue

from workers.analysis import Analysis
from workers.errors import BadOptions

NAMES: tuple[str, ...] = catalogue.NAMES
PACKAGE = "workers.analyses"
# Task name -> the module that implements it (workers/__main__.py preloads them into the worker).
_PROVIDERS: dict[str, str] = {name: f"{PACKAGE}.{name}" for name in NAMES}


def get(name: str) -> Analysis[Any]:
    """The analysis of task `name`; INVALID_ARGUMENT listing the valid names for an unknown one."""
    if name not in _PROVIDERS:
        raise BadOptions(f"unknown task {name!r}; valid tasks: {', '.join(NAMES)}", reason="UNKNOWN_TASK")
    found = importlib.import_module(_PROVIDERS[name]).ANALYSIS
    if not isinstance(found, Analysis) or found.name != name:
        raise TypeError(f"{_PROVIDERS[name]}.ANALYSIS is not the Analysis of task {name!r}: {found!r}")
    return found
