"""The plugin base: everything the SDK knows about one task, as one object its module in sdk/plugins/ builds.

Why: a task's option defaults, gate metrics, findings and report section used to be spread over five SDK
modules; a new analysis now writes one plugin module, which the registry (sdk/plugins/__init__.py) finds by
the task's name. The CLI, the gate (sdk.metrics), the findings (sdk.findings) and the report (sdk.report) read
the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from sdk.metrics import Metric
    from sdk.report.assets import Assets
    from sdk.result import TaskOutcome

Summary = dict[str, Any]
Figures = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    """One finding in plain words. `level`: "ok", "note" (worth a look) or "bad" (failed, or something is off)."""

    task: str
    level: str
    text: str


@dataclass(frozen=True)
class Plugin:
    """One task's SDK side. Only `name` and `option_defaults` are required: a task that is not an analysis
    (describe) has no metrics, findings or section.

    option_defaults  option -> what an unset one means, as `kernelscope analyze --help` shows it
    metrics          the gate metrics read from its summary (sdk.metrics gathers them)
    figures          summary -> the headline figures (sdk.findings.as_dict; `--json` output)
    lines            figures -> the findings' text lines (sdk.findings.lines; `kernelscope analyze` output)
    verdicts         summary -> the verdicts at the top of its report and in a notebook
    section          (outcome, assets) -> the HTML body of its report section
    """

    name: str
    option_defaults: Mapping[str, str]
    metrics: tuple["Metric", ...] = ()
    figures: Callable[[Summary], Figures] | None = None
    lines: Callable[[Figures], list[str]] | None = None
    verdicts: Callable[[Summary], list[Verdict]] | None = None
    section: Callable[["TaskOutcome", "Assets"], str] | None = None
