"""The gate as Markdown: the GitHub step summary, one table row per check.

Why escaped: names and messages may hold |, * or backquotes, which would break the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdk.gate.numbers import fmt
from sdk.gate.status import ERROR, FAIL, PASS, SKIP, WARN

if TYPE_CHECKING:
    from sdk.gate.verdict import GateReport


def to_markdown(report: "GateReport", fail_on: str | None = None) -> str:
    status = report.status(fail_on)
    icon = {PASS: "✅", WARN: "⚠️", FAIL: "❌"}[status]
    counts = report.counts()
    out = [
        f"## {icon} kernelscope gate: {status.upper()}",
        "",
        f"Model **{_md(report.model_name)}** (`{report.model}`, job `{report.job_id}`)"
        + (f" against baseline **{_md(report.baseline_name)}** (`{report.baseline_model}`, job `{report.baseline_job_id}`)" if report.baseline_model else "")
        + ". "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        "",
        f"| | check | metric | {_md(report.model_name)} | baseline{': ' + _md(report.baseline_name) if report.baseline_model else ''} | bounds | |",
        "|---|---|---|---|---|---|---|",
    ]
    marks = {PASS: "✅", WARN: "⚠️", FAIL: "❌", ERROR: "⛔", SKIP: "⏭️"}
    for r in report.results:
        cells = [
            marks[r.status],
            r.check.name,
            f"`{r.check.metric}`" + (f" ({r.check.layer})" if r.check.layer else ""),
            fmt(r.value),
            fmt(r.baseline) if r.baseline is not None else "",
            r.check.describe_bounds(),
            r.message,
        ]
        out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("`", "'")

