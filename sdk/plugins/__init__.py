"""The SDK's task plugins: one module per task, sdk/plugins/<name>.py, for every task of the catalogue
(kernelscope.catalogue, read from tasks.proto), each defining PLUGIN.

    plugins.get("kernel_viz").option_defaults
    plugins.find(name)            # None for a task this SDK does not know (a newer service's)

Why a registry found by name: the CLI's help, the gate's metrics, the findings and the report each loop over
the tasks; they read them here, so adding an analysis is its proto field, its worker package, its JSON schema
and its plugin module, and nothing in the SDK names it twice. A catalogue task without its module fails the
import, saying which file to write (as the catalogue does for a field without its TaskInfo).
"""

from __future__ import annotations

import importlib

from kernelscope import catalogue
from sdk.plugins.base import Plugin, Verdict


def _load(name: str) -> Plugin:
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise RuntimeError(f"task {name!r} of tasks.proto has no SDK plugin: write sdk/plugins/{name}.py (README, 'Adding a task')") from None
    plugin = getattr(module, "PLUGIN", None)
    if not isinstance(plugin, Plugin) or plugin.name != name:
        raise RuntimeError(f"sdk/plugins/{name}.py must define PLUGIN = Plugin(name={name!r}, ...)")
    return plugin


# In the catalogue's order.
PLUGINS: dict[str, Plugin] = {name: _load(name) for name in catalogue.NAMES}


def all() -> list[Plugin]:  # noqa: A001 - reads as plugins.all()
    """Every plugin, in the catalogue's order."""
    return list(PLUGINS.values())


def find(name: str) -> Plugin | None:
    return PLUGINS.get(name)


def get(name: str) -> Plugin:
    plugin = PLUGINS.get(name)
    if plugin is None:
        raise KeyError(f"no SDK plugin for task {name!r}; plugins: {', '.join(PLUGINS)}")
    return plugin


__all__ = ["PLUGINS", "Plugin", "Verdict", "all", "find", "get"]
