"""What a job found, in plain words: the verdicts at the top of a report and the lines `kernelscope analyze` prints.

    for line in findings.lines(result): print(line)
    findings.as_dict(result)      # the same, structured, for --json and scripts
    findings.verdicts(result)     # one sentence per task (per layer for kernel_viz), with a level, for the report

Why one module: both are the headline findings of a job, read from the task summaries (nothing is recomputed);
what each task says is written once, in its plugin (sdk.plugins: `figures`, `lines`, `verdicts`), and this
module only walks the job's tasks, so a failed or unknown task is reported the same way everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdk import plugins
from sdk.plugins.base import Verdict
from sdk.plugins.summaries import compass

if TYPE_CHECKING:
    from sdk.result import Result

__all__ = ["Verdict", "as_dict", "compass", "lines", "verdicts"]


def as_dict(result: "Result") -> dict[str, Any]:
    """{task: {...figures...}} for every task that succeeded and whose plugin reads figures."""
    out: dict[str, Any] = {}
    for task, summary in result.summaries.items():
        plugin = plugins.find(task)
        if plugin is not None and plugin.figures is not None:
            out[task] = plugin.figures(summary)
    return out


def lines(result: "Result") -> list[str]:
    """The findings as short indented lines (no trailing newline), task by task."""
    text: list[str] = []
    for task, figures in as_dict(result).items():
        writer = plugins.get(task).lines
        text.append(f"  {task}:")
        text.extend(f"    {line}" for line in (writer(figures) if writer is not None else []))
    return text


def verdicts(result: "Result") -> list[Verdict]:
    """What each task found, one sentence per task (per layer for kernel_viz), failures included."""
    out: list[Verdict] = []
    for outcome in result.tasks:
        plugin = plugins.find(outcome.task)
        if plugin is not None and plugin.verdicts is None:
            continue  # describe: an inventory, nothing to judge
        if outcome.error:
            e = outcome.error
            out.append(Verdict(outcome.task, "bad", f"could not run: {e.get('reason', '')}: {e.get('message', '')}"))
            continue
        if outcome.summary is None:
            out.append(Verdict(outcome.task, "bad", "returned no summary"))
            continue
        try:
            out += plugin.verdicts(outcome.summary) if plugin is not None and plugin.verdicts is not None else []
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
            out.append(Verdict(outcome.task, "note", f"summary not understood ({type(exc).__name__}: {exc}); see its section"))
    if not out and result.job.error.reason:
        out.append(Verdict("job", "bad", f"{result.job.error.reason}: {result.job.error.message}"))
    return out
