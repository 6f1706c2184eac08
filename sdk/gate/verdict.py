"""The gate's verdict: each check's result, and the report on one model that every output format writes.

    report.exit_code()                               # 0 pass, 1 gate failed
    report.write(json_path=..., junit_path=..., html_path=...)

Why the formats live apart (sdk.gate.json_report, junit, annotations, markdown, text, html): each is one reader's
view of the same verdict (a script, a CI test tab, a pull request, a step summary, a terminal, a browser).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdk.gate import annotations, json_report, junit, markdown, text
from sdk.gate.numbers import json_number
from sdk.gate.policy import Check, Policy
from sdk.gate.status import ERROR, FAIL, PASS, SKIP, WARN

if TYPE_CHECKING:
    from sdk.result import Result


@dataclass(frozen=True)
class CheckResult:
    """How one check ended: its status, the model's value, the baseline's (shown beside it), and why."""

    check: Check
    status: str
    value: float | None
    baseline: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.check.name,
            "task": self.check.task,
            "metric": self.check.metric,
            "layer": self.check.layer,
            "status": self.status,
            "value": json_number(self.value),
            "baseline": json_number(self.baseline),
            "bounds": self.check.bounds(),
            "message": self.message,
        }


@dataclass
class GateReport:
    """The verdict on one model. `metrics`/`baseline_metrics`: task → metric name → value (None: absent)."""

    policy: Policy
    results: list[CheckResult]
    metrics: dict[str, dict[str, float | None]]
    baseline_metrics: dict[str, dict[str, float | None]] | None = None
    model: str = ""
    baseline_model: str = ""
    job_id: str = ""
    baseline_job_id: str = ""
    durations: dict[str, float] = field(default_factory=dict)
    model_label: str = ""  # what the user named the model: its file name, else the model record's name or id
    baseline_label: str = ""
    result: "Result | None" = field(default=None, repr=False)  # the jobs judged, for the HTML page
    baseline_result: "Result | None" = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        return self.model_label or self.model

    @property
    def baseline_name(self) -> str:
        return self.baseline_label or self.baseline_model

    def subject(self) -> str:
        """"model.pt2 (mdl_…, job job_…) against baseline old.pt2 (…)": who was judged, in one line."""
        def who(label: str, model: str, job: str) -> str:
            inner = ", ".join(x for x in ((model if model != label else ""), (f"job {job}" if job else "")) if x)
            return f"{label} ({inner})" if inner else label

        text = who(self.model_name, self.model, self.job_id)
        if self.baseline_model:
            text += " against baseline " + who(self.baseline_name, self.baseline_model, self.baseline_job_id)
        return text

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in (PASS, WARN, FAIL, ERROR, SKIP)}

    def failing(self, fail_on: str | None = None) -> list[CheckResult]:
        """The checks that fail the gate under `fail_on` (default: the policy's)."""
        fail_on = fail_on or self.policy.fail_on
        bad = {FAIL}
        if self.policy.could_not_run == "fail":
            bad.add(ERROR)
        if fail_on == "warning":
            bad |= {WARN, ERROR}
        return [r for r in self.results if r.status in bad]

    def status(self, fail_on: str | None = None) -> str:
        if self.failing(fail_on):
            return FAIL
        return WARN if any(r.status in (WARN, ERROR) for r in self.results) else PASS

    def exit_code(self, fail_on: str | None = None) -> int:
        return 1 if self.failing(fail_on) else 0

    # ------------------------------------------------------------------ outputs
    # ------------------------------------------------------------------ outputs
    def to_dict(self, fail_on: str | None = None) -> dict[str, Any]:
        return json_report.to_dict(self, fail_on)

    def to_junit(self, fail_on: str | None = None) -> str:
        """JUnit XML: one testsuite per task (its metrics as properties), one testcase per check."""
        return junit.to_junit(self, fail_on)

    def to_annotations(self, fail_on: str | None = None) -> list[str]:
        """GitHub workflow commands: ::error for checks that fail the gate, ::warning for the rest that are not clean."""
        return annotations.to_annotations(self, fail_on)

    def to_markdown(self, fail_on: str | None = None) -> str:
        return markdown.to_markdown(self, fail_on)

    def to_text(self, fail_on: str | None = None) -> str:
        return text.to_text(self, fail_on)

    def write(
        self,
        *,
        json_path: str | Path | None = None,
        junit_path: str | Path | None = None,
        html_path: str | Path | None = None,
        github: bool | None = None,
        fail_on: str | None = None,
        stream: Any = None,
    ) -> None:
        """Write the requested files; under GitHub Actions (or github=True) print annotations and append the step summary.

        `html_path`: the gate's own page (verdict, each check with both values, then both jobs' reports).
        """
        if html_path:
            from sdk.gate.html import write_gate_page

            write_gate_page(self, Path(html_path), fail_on=fail_on)
        if json_path:
            _write(Path(json_path), json.dumps(self.to_dict(fail_on), indent=2) + "\n")
        if junit_path:
            _write(Path(junit_path), self.to_junit(fail_on))
        if github is None:
            github = os.environ.get("GITHUB_ACTIONS") == "true"
        if github:
            stream = stream or sys.stdout
            for line in self.to_annotations(fail_on):
                print(line, file=stream)
            summary = os.environ.get("GITHUB_STEP_SUMMARY")
            if summary:
                with open(summary, "a", encoding="utf-8") as handle:
                    handle.write(self.to_markdown(fail_on) + "\n")


def _write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
