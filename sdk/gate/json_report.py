"""The gate's JSON report (schema kernelscope.gate.report/v1): what a script reads.

Why a schema name: scripts that parse it can refuse a layout they do not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdk.gate.numbers import json_metrics

if TYPE_CHECKING:
    from sdk.gate.verdict import GateReport


REPORT_SCHEMA = "kernelscope.gate.report/v1"


def to_dict(report: "GateReport", fail_on: str | None = None) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "status": report.status(fail_on),
        "exit_code": report.exit_code(fail_on),
        "fail_on": fail_on or report.policy.fail_on,
        "policy": str(report.policy.source) if report.policy.source else None,
        "model": report.model,
        "model_name": report.model_name,
        "job_id": report.job_id,
        "baseline_model": report.baseline_model or None,
        "baseline_name": report.baseline_name or None,
        "baseline_job_id": report.baseline_job_id or None,
        "counts": report.counts(),
        "checks": [r.to_dict() for r in report.results],
        "metrics": json_metrics(report.metrics),
        "baseline_metrics": json_metrics(report.baseline_metrics) if report.baseline_metrics is not None else None,
    }
