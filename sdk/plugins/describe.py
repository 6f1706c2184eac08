"""describe: the model's layer inventory. Not an analysis: no options, metrics, findings or section of its own
(the report's Model section shows the inventory)."""

from __future__ import annotations

from sdk.plugins.base import Plugin

PLUGIN = Plugin(name="describe", option_defaults={})
