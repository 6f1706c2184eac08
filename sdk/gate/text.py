"""The gate as aligned plain text: what `kernelscope gate` prints to a terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdk.gate.numbers import fmt

if TYPE_CHECKING:
    from sdk.gate.verdict import GateReport


def to_text(report: "GateReport", fail_on: str | None = None) -> str:
    rows = [("status", "check", "value", "baseline", "message")]
    header = f"gate on {report.subject()}"
    for r in report.results:
        rows.append((r.status.upper(), r.check.name, fmt(r.value), fmt(r.baseline) if r.baseline is not None else "", r.message))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [header] + ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    lines.append(f"gate: {report.status(fail_on).upper()} ({', '.join(f'{n} {s}' for s, n in report.counts().items() if n)})")
    return "\n".join(lines)
