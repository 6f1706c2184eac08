"""The gate's own HTML page: the verdict, the candidate and the baseline side by side, every check with both
values, then each job's report.

Why its own page: a reviewer opening a failed gate wants the failing check and its policy lines first, and the
evidence (both jobs' sections, labelled Candidate / Baseline) on the same page, built by sdk.report's framework.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdk.gate.numbers import fmt_apart
from sdk.gate.status import FAIL
from sdk.report.html import Html, kv, table
from sdk.report.job import description_for, job_warnings, model_record, state_name
from sdk.report.page import TASK_TITLES, Page, Section

if TYPE_CHECKING:
    from sdk.gate.verdict import GateReport


def write_gate_page(report: "GateReport", path: Path | str, *, fail_on: str | None = None, embed: bool = True) -> Path:
    """The gate's own page: the verdict, the candidate and the baseline side by side, every check with both
    values, the change and the policy lines it came from, every metric compared, then each job's report
    (its sections labelled Candidate / Baseline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = Page(path, embed)
    status = report.status(fail_on)
    counts = report.counts()
    failing = {id(r) for r in report.failing(fail_on)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lead = (
        f'<div class="gate-banner {status}" data-gate-status="{status}"><strong>{status.upper()}</strong> — '
        f"{len(failing)} of {len(report.results)} checks fail the gate ({escape(summary)}). "
        f"{escape(report.subject())}</div>"
    )
    page.sections.append(Section("gate-models", "Candidate and baseline", _gate_models(report), "gate-models"))
    page.sections.append(Section("gate-checks", "Checks", _gate_checks(report, failing), "gate-checks"))
    page.sections.append(Section("gate-metrics", "Every metric, candidate vs baseline", _gate_metrics(report), "gate-metrics"))
    jobs = [("candidate-", f"Candidate {report.model_name}", report.result), ("baseline-", f"Baseline {report.baseline_name}", report.baseline_result)]
    for prefix, label, result in jobs:
        if result is not None:
            page.add_job(result, description_for(result, None), prefix, label)
    heading = f"kernelscope gate: {status.upper()}"
    path.write_text(page.render(heading, lead, f' data-gate-status="{status}"'), encoding="utf-8")
    return path


def _gate_models(report: "GateReport") -> str:
    cards = []
    for role, label, result in (("Candidate", report.model_name, report.result), ("Baseline", report.baseline_name, report.baseline_result)):
        if result is None:
            if role == "Baseline":
                cards.append('<div data-role="baseline"><h3>Baseline</h3><p class="muted">None given: the relative and paired checks were skipped (<code>--baseline OLD_MODEL</code>).</p></div>')
            continue
        record = model_record(result)
        pairs = [
            ("model", label),
            ("model id", result.job.model_id),
            ("file sha256", getattr(record, "sha256", "") or None),
            ("job", result.id),
            ("state", state_name(result)),
        ]
        cards.append(f'<div data-role="{role.lower()}"><h3>{role}: {escape(label)}</h3>{kv(pairs)}{job_warnings(result, record)}</div>')
    policy = report.policy
    where = f"policy {policy.source}" if policy.source else "policy"
    return f'<div class="models">{"".join(cards)}</div><p class="muted small">{escape(where)}; fail_on = {escape(policy.fail_on)}, could_not_run = {escape(policy.could_not_run)}.</p>'


def _gate_checks(report: "GateReport", failing: set[int]) -> str:
    rows = []
    for r in report.results:
        change: Any = None
        if r.value is not None and r.baseline is not None:
            delta = r.value - r.baseline
            change = f"{delta:+.4g}" + (f" ({100 * delta / abs(r.baseline):+.3g} %)" if r.baseline else "")
        source = report.policy.check_text(r.check)
        where = f"{report.policy.source.name if report.policy.source else 'policy'}:{r.check.line}" if r.check.line else ""
        policy_cell = Html(f'<span class="muted small">{escape(where)}</span><pre class="policy">{escape(source)}</pre>' if source else escape(r.check.describe_bounds()))
        status = r.status + (" (fails the gate)" if id(r) in failing and r.status != FAIL else "")
        rows.append(
            (
                Html(f'<span class="status-{r.status}">{escape(status.upper())}</span>'),
                r.check.name,
                r.check.metric + (f" [{r.check.layer}]" if r.check.layer else ""),
                fmt_apart(r.value, r.baseline) if r.value is not None else None,
                fmt_apart(r.baseline, r.value) if r.baseline is not None else None,
                change,
                r.check.describe_bounds(),
                r.message,
                policy_cell,
            )
        )
    headers = ("status", "check", "metric", f"candidate ({report.model_name})", f"baseline ({report.baseline_name or 'none'})", "change", "bounds", "result", "policy")
    html = table(headers, rows, sortable=False, cls="gate-checks")
    # status cells: colour by class on the cell, for print and for the browser test
    return re.sub(r'<td><span class="status-(\w+)">', r'<td class="status-\1"><span class="status-\1">', html)


def _gate_metrics(report: "GateReport") -> str:
    out = ""
    for task, values in report.metrics.items():
        base = (report.baseline_metrics or {}).get(task, {})
        rows = []
        for key in sorted(set(values) | set(base)):
            mine, theirs = values.get(key), base.get(key)
            delta = mine - theirs if mine is not None and theirs is not None else None
            rows.append((key, mine, theirs, delta))
        if not rows:
            continue
        body = table(("metric", f"candidate ({report.model_name})", f"baseline ({report.baseline_name or 'none'})", "change"), rows)
        out += f"<h3>{escape(TASK_TITLES.get(task, task))}</h3>" + (body if len(rows) <= 30 else f'<details class="more"><summary>{len(rows)} metrics</summary>{body}</details>')
    return out or '<p class="muted">No metrics.</p>'
