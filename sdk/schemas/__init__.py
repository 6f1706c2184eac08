"""JSON Schemas (draft 2020-12) of the task summaries, shipped with the SDK: `<task>.v<N>.json`.

    from sdk import schemas
    schemas.load("tconv_stats")          # the current version's schema as a dict
    schemas.VERSIONS["tconv_stats"]      # 1

Why versioned files: CI gates and notebooks read summaries long after the worker that wrote them;
a change that renames or retypes a key gets a new file (v2) beside the old one, and `$id` says
which one a document was checked against. The SDK only ships them; validating needs the
`jsonschema` package (a dev dependency), which the SDK never imports.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from kernelscope import catalogue

# Current schema version of each task's summary (the task catalogue's).
VERSIONS: dict[str, int] = {name: entry.schema_version for name, entry in catalogue.TASKS.items()}


def load(task: str, version: int | None = None) -> dict[str, Any]:
    """The schema of `task`'s summary (the current version unless `version` is given)."""
    if task not in VERSIONS:
        raise KeyError(f"no schema for task {task!r}; known: {', '.join(VERSIONS)}")
    version = VERSIONS[task] if version is None else version
    name = f"{task}.v{version}.json"
    try:
        text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no schema version {version} for task {task!r}") from None
    return json.loads(text)


__all__ = ["VERSIONS", "load"]
