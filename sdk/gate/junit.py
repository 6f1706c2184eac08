"""The gate as JUnit XML: task → testsuite (its metrics as properties), check → testcase.

Why: CI systems show JUnit results in their test tabs without any plugin.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from sdk.gate.numbers import fmt
from sdk.gate.status import ERROR, SKIP, WARN

if TYPE_CHECKING:
    from sdk.gate.verdict import GateReport


def to_junit(report: "GateReport", fail_on: str | None = None) -> str:
    """JUnit XML: one testsuite per task (its metrics as properties), one testcase per check."""
    failing = {id(r) for r in report.failing(fail_on)}
    root = ET.Element("testsuites", name=f"kernelscope gate: {report.model_name}" + (f" vs {report.baseline_name}" if report.baseline_model else ""))
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for task in report.policy.tasks:
        results = [r for r in report.results if r.check.task == task]
        suite = ET.SubElement(root, "testsuite", name=task)
        props = ET.SubElement(suite, "properties")
        _property(props, "model", report.model_name)
        _property(props, "model_id", report.model)
        _property(props, "job_id", report.job_id)
        for name, value in sorted(report.metrics.get(task, {}).items()):
            _property(props, name, fmt(value))
        if report.baseline_metrics is not None:
            _property(props, "baseline.model", report.baseline_name)
            _property(props, "baseline.model_id", report.baseline_model)
            _property(props, "baseline.job_id", report.baseline_job_id)
            for name, value in sorted(report.baseline_metrics.get(task, {}).items()):
                _property(props, f"baseline.{name}", fmt(value))
        counts = dict.fromkeys(totals, 0)
        for r in results:
            counts["tests"] += 1
            case = ET.SubElement(suite, "testcase", name=r.check.name, classname=f"kernelscope.gate.{task}", time="0", file=report.model_name)
            case_props = ET.SubElement(case, "properties")
            _property(case_props, "metric", r.check.metric)
            _property(case_props, "value", fmt(r.value))
            if r.baseline is not None:
                _property(case_props, "baseline", fmt(r.baseline))
            _property(case_props, "bounds", r.check.describe_bounds())
            if r.status == SKIP:
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=r.message)
            elif r.status == ERROR and id(r) in failing:
                counts["errors"] += 1
                ET.SubElement(case, "error", message=r.message, type="could_not_run").text = f"{report.subject()}: {r.message}"
            elif id(r) in failing:
                counts["failures"] += 1
                ET.SubElement(case, "failure", message=r.message, type=r.status).text = f"{report.subject()}: {r.message}"
            elif r.status in (WARN, ERROR):
                ET.SubElement(case, "system-out").text = f"{r.status.upper()}: {r.message}"
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{report.durations.get(task, 0.0):.3f}")
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _property(parent: ET.Element, name: str, value: str) -> None:
    ET.SubElement(parent, "property", name=name, value=value)

