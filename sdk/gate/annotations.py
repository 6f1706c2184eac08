"""The gate as GitHub workflow commands (::error / ::warning), each pointing at its check's line in the policy.

Why escaped: a message holding %, a newline, ':' or ',' would otherwise end the command early.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sdk.gate.status import PASS, SKIP

if TYPE_CHECKING:
    from sdk.gate.verdict import GateReport


def to_annotations(report: "GateReport", fail_on: str | None = None) -> list[str]:
    """GitHub workflow commands: ::error for checks that fail the gate, ::warning for the rest that are not clean."""
    failing = {id(r) for r in report.failing(fail_on)}
    lines = []
    file = _repo_relative(report.policy.source)
    for r in report.results:
        if r.status in (PASS, SKIP):
            continue
        level = "error" if id(r) in failing else "warning"
        props = {"title": f"kernelscope gate: {r.check.name} ({report.model_name})"}
        if file:
            props["file"] = file
            if r.check.line:
                props["line"] = str(r.check.line)
        rendered = ",".join(f"{k}={_escape_property(v)}" for k, v in props.items())
        against = f" vs {report.baseline_name}" if report.baseline_model else ""
        lines.append(f"::{level} {rendered}::{_escape_data(f'{r.status.upper()}: {report.model_name}{against}: {r.message}')}")
    return lines


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _repo_relative(path: Path | None) -> str | None:
    if path is None:
        return None
    root = Path(os.environ.get("GITHUB_WORKSPACE") or Path.cwd()).resolve()
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return None

