"""Judging: each check of a policy against the model's metrics (and the baseline's), ending in one status.

Why exact decimals: regressions are compared on the numbers as written (5 % worse passes max_regression = 0.05;
5.04 % fails), never on their binary approximations, which turn an exact 5 % into 5.000000000000002 %.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from sdk import metrics
from sdk.gate.numbers import fmt, fmt_apart, pct_apart
from sdk.gate.policy import _RELATIVE_BOUNDS, Check, Policy
from sdk.gate.status import ERROR, FAIL, PASS, SKIP, WARN
from sdk.gate.verdict import CheckResult, GateReport
from sdk.plugins.summaries import exact

if TYPE_CHECKING:
    from sdk.result import Result


def evaluate(
    policy: Policy, result: "Result", baseline: "Result | None" = None, *, model_label: str = "", baseline_label: str = ""
) -> GateReport:
    """Judge every check of `policy` on `result` (and `baseline` for the relative and paired checks).

    The labels are what the user calls the models (their file names); reports fall back to the model ids.
    """
    values = metrics.extract_all(result, baseline=baseline)
    baseline_values = metrics.extract_all(baseline) if baseline is not None else None
    results = [_judge(check, result, baseline, values, baseline_values) for check in policy.checks]
    return GateReport(
        policy=policy,
        results=results,
        metrics={t: values.get(t, {}) for t in policy.tasks},
        baseline_metrics={t: baseline_values.get(t, {}) for t in policy.tasks} if baseline_values is not None else None,
        model=result.job.model_id,
        baseline_model=baseline.job.model_id if baseline is not None else "",
        job_id=result.id,
        baseline_job_id=baseline.id if baseline is not None else "",
        durations={t.task: t.duration_seconds for t in result.tasks},
        model_label=model_label,
        baseline_label=baseline_label if baseline is not None else "",
        result=result,
        baseline_result=baseline,
    )


def _judge(
    check: Check,
    result: "Result",
    baseline: "Result | None",
    values: dict[str, dict[str, float | None]],
    baseline_values: dict[str, dict[str, float | None]] | None,
) -> CheckResult:
    task = check.task
    metric = metrics.get(check.metric)
    problem = _task_problem(result, task, "the model")
    if problem:
        return CheckResult(check, ERROR, None, None, problem)
    key = metrics.key(check.metric, check.layer)
    if metric.paired and baseline is None:
        return CheckResult(check, SKIP, None, None, "compares the model with a baseline filter by filter; none given (--baseline)")
    if metric.paired:
        problem = _task_problem(baseline, task, "the baseline")  # type: ignore[arg-type]
        if problem:
            return CheckResult(check, ERROR, None, None, problem)
    value = values.get(task, {}).get(key)
    if value is None:
        return CheckResult(check, ERROR, None, None, f"{key} is absent from the {task} summary: {metric.why_absent(check.layer)}")
    status, reasons = PASS, []
    if check.max is not None and value > check.max:
        status, reasons = FAIL, reasons + [f"{fmt_apart(value, check.max)} > max {fmt_apart(check.max, value)}"]
    if check.min is not None and value < check.min:
        status, reasons = FAIL, reasons + [f"{fmt_apart(value, check.min)} < min {fmt_apart(check.min, value)}"]
    if status == PASS and check.warn_max is not None and value > check.warn_max:
        status, reasons = WARN, reasons + [f"{fmt_apart(value, check.warn_max)} > warn_max {fmt_apart(check.warn_max, value)}"]
    if status == PASS and check.warn_min is not None and value < check.warn_min:
        status, reasons = WARN, reasons + [f"{fmt_apart(value, check.warn_min)} < warn_min {fmt_apart(check.warn_min, value)}"]
    base_value = None
    if check.relative:
        if baseline is None:
            if status == PASS and not check.bounds().keys() - set(_RELATIVE_BOUNDS):
                return CheckResult(check, SKIP, value, None, "compares against a baseline; none given (--baseline)")
            reasons.append("baseline bound not checked: no baseline given")
        else:
            problem = _task_problem(baseline, task, "the baseline")
            base_value = (baseline_values or {}).get(task, {}).get(key)
            if problem or base_value is None:
                why = problem or f"{key} is absent from the baseline's {task} summary"
                return CheckResult(check, ERROR, value, None, why)
            regression = _exact_regression(metric.better, value, base_value)
            shown = float(regression)
            if check.max_regression is not None and regression > exact(check.max_regression):
                status = FAIL
                reasons.append(f"{pct_apart(shown, check.max_regression)} worse than baseline {fmt(base_value)} (allowed {pct_apart(check.max_regression, shown)})")
            elif check.warn_regression is not None and regression > exact(check.warn_regression):
                status = WARN if status == PASS else status
                reasons.append(f"{pct_apart(shown, check.warn_regression)} worse than baseline {fmt(base_value)} (warn above {pct_apart(check.warn_regression, shown)})")
            elif status == PASS:
                limit = check.max_regression if check.max_regression is not None else check.warn_regression
                reasons.append(
                    f"{pct_apart(shown, limit)} worse than baseline {fmt(base_value)}, within {pct_apart(limit, shown)}"  # type: ignore[arg-type]
                    if regression > 0 else f"not worse than baseline {fmt(base_value)}"
                )
    if not reasons:
        reasons.append(f"{fmt(value)} within {check.describe_bounds()}")
    if base_value is None and baseline_values is not None and not metric.paired:
        base_value = baseline_values.get(task, {}).get(key)  # shown beside the value, not judged
    return CheckResult(check, status, value, base_value, "; ".join(reasons))


def _exact_regression(better: str | None, value: float, base: float) -> Decimal:
    """Relative worsening of `value` against `base`, in exact decimal arithmetic (0 when not worse; Infinity
    when the baseline is 0 and it got worse)."""
    v, b = exact(value), exact(base)
    delta = v - b if better == "lower" else b - v
    if delta <= 0:
        return Decimal(0)
    return delta / abs(b) if b != 0 else Decimal("Infinity")


def _regression(better: str | None, value: float, base: float) -> float:
    """Relative worsening of `value` against `base` (0 when not worse; inf when the baseline is 0 and it got worse)."""
    return float(_exact_regression(better, value, base))


def _task_problem(result: "Result", task: str, who: str) -> str | None:
    outcome = next((t for t in result.tasks if t.task == task), None)
    if outcome is None:
        error = result.job.error
        why = f": {error.code} {error.reason}: {error.message}" if (error.reason or error.message) else ""
        return f"{task} did not run on {who} (job {result.id} is {_state(result)}{why})"
    if outcome.error:
        e = outcome.error
        return f"{task} could not run on {who}: {e.get('code', '')} {e.get('reason', '')}: {e.get('message', '')}".strip()
    if outcome.summary is None:
        return f"{task} returned no summary for {who}"
    return None


def _state(result: "Result") -> str:
    from kernelscope.v1 import jobs_pb2

    return jobs_pb2.JobState.Name(result.job.state)
