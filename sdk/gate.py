"""CI gates on analysis results: a TOML policy of checks on named metrics, judged pass / warn / fail.

    policy = Policy.load("gate.toml")               # PolicyError for anything malformed (exit 2)
    report = run_gate(client, "model.pt2", policy, baseline="old.pt2")
    report.exit_code()                               # 0 pass, 1 gate failed

A check names one metric of the catalogue (sdk.metrics) and bounds it absolutely (`max`, `min`,
`warn_max`, `warn_min`) or against the same metric of a baseline model (`max_regression`,
`warn_regression`: the largest allowed relative worsening, 0.1 = 10 % worse, in the direction the
catalogue calls worse). Each check ends in one of

    pass   within every bound
    warn   past a warn_* bound only (fails the gate with fail_on = "warning")
    fail   past a failing bound
    error  could not run: the task failed, the metric is absent, the baseline has no value
    skip   a baseline check without a baseline model

`could_not_run = "fail"` (default) makes an error fail the gate: a gate that cannot look must not pass.
A paired metric (tconv_stats.direction_agreement, kernel_viz.direction_agreement) compares the model
with the baseline filter by filter, so `min` bounds it against the baseline (skip without one): a
model whose kernels were time-reversed keeps its accuracy but scores −1.

Regressions are compared in exact decimal arithmetic on the numbers as written (5 % worse passes
max_regression = 0.05; 5.04 % fails), and messages show the digits that tell a value from its bound.
Outputs: a JSON report, JUnit XML (task → testsuite, check → testcase, metrics as properties),
GitHub workflow annotations, a Markdown step summary and an HTML page (sdk.report.write_gate_page),
each naming the models by file. examples/gate.toml documents every key.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, TextIO

from kernelscope import catalogue, ids
from sdk import metrics
from sdk.errors import KernelscopeError
from sdk.tasks import TASK_NAMES

if TYPE_CHECKING:
    from sdk.client import Client
    from sdk.result import Result

POLICY_VERSION = 1
REPORT_SCHEMA = "kernelscope.gate.report/v1"

PASS, WARN, FAIL, ERROR, SKIP = "pass", "warn", "fail", "error", "skip"
_ABSOLUTE_BOUNDS = ("max", "min", "warn_max", "warn_min")
_RELATIVE_BOUNDS = ("max_regression", "warn_regression")
_CHECK_KEYS = ("metric", "name", "layer", *_ABSOLUTE_BOUNDS, *_RELATIVE_BOUNDS)
_POLICY_KEYS = ("version", "fail_on", "could_not_run", "dataset", "input_spec", "architecture", "format", "tasks", "checks")
# Keys of the policy's input_spec table (common.proto's InputSpec).
_INPUT_SPEC_KEYS = ("shape", "dtype", "value_min", "value_max", "mean", "std")


class PolicyError(KernelscopeError):
    """The policy file is malformed or names something that does not exist; the message says how to fix it."""


@dataclass(frozen=True)
class Check:
    """One bound on one metric. `line` is where the check starts in the policy file (for annotations)."""

    name: str
    metric: str
    layer: str | None = None
    max: float | None = None
    min: float | None = None
    warn_max: float | None = None
    warn_min: float | None = None
    max_regression: float | None = None
    warn_regression: float | None = None
    line: int | None = None

    @property
    def task(self) -> str:
        return metrics.get(self.metric).task

    @property
    def relative(self) -> bool:
        return self.max_regression is not None or self.warn_regression is not None

    def bounds(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in (*_ABSOLUTE_BOUNDS, *_RELATIVE_BOUNDS) if getattr(self, k) is not None}

    def describe_bounds(self) -> str:
        parts = []
        for key, text in (("min", "≥ {}"), ("max", "≤ {}"), ("warn_min", "warn < {}"), ("warn_max", "warn > {}")):
            if getattr(self, key) is not None:
                parts.append(text.format(_fmt(getattr(self, key))))
        if self.max_regression is not None:
            parts.append(f"≤ {self.max_regression * 100:g}% worse than baseline")
        if self.warn_regression is not None:
            parts.append(f"warn > {self.warn_regression * 100:g}% worse")
        if metrics.get(self.metric).paired:
            parts.append("compared with the baseline filter by filter")
        return ", ".join(parts)


@dataclass(frozen=True)
class Policy:
    checks: tuple[Check, ...]
    task_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dataset: Path | None = None
    fail_on: str = "failure"
    could_not_run: str = "fail"
    source: Path | None = None
    text: str = field(default="", repr=False)  # the TOML as written, for quoting a check's lines
    # How both models are uploaded (input_spec, architecture, format); the command line's options override them.
    model_options: Mapping[str, Any] = field(default_factory=dict)

    def check_text(self, check: Check) -> str:
        """The policy's own lines for `check` (its [[checks]] table), as written; "" when not known."""
        if not self.text or not check.line:
            return ""
        lines = self.text.splitlines()[check.line - 1 :]
        block = [lines[0]]
        for line in lines[1:]:
            if re.match(r"\s*\[", line):
                break
            block.append(line)
        while block and (not block[-1].strip() or block[-1].lstrip().startswith("#")):
            block.pop()  # blank lines and the next check's leading comment
        return "\n".join(block)

    @property
    def tasks(self) -> list[str]:
        """Tasks the checks need, plus any given options, in the catalogue's order."""
        wanted = {c.task for c in self.checks} | set(self.task_options)
        return [t for t in TASK_NAMES if t in wanted]

    def task_specs(self) -> list[Any]:
        """What Client.analyze takes as `tasks`."""
        return [{t: dict(self.task_options[t])} if self.task_options.get(t) else t for t in self.tasks]

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise PolicyError(f"cannot read policy {path}: {exc.strerror or exc}") from None
        return cls.parse(text, source=path)

    @classmethod
    def parse(cls, text: str, source: Path | None = None) -> "Policy":
        where = str(source) if source else "policy"
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{where} is not valid TOML: {exc}") from None
        _no_unknown(raw, _POLICY_KEYS, where)
        version = raw.get("version", POLICY_VERSION)
        if version != POLICY_VERSION:
            raise PolicyError(f"{where}: version {version!r} is not supported; this kernelscope reads version {POLICY_VERSION}")
        fail_on = _choice(raw, "fail_on", ("failure", "warning"), where)
        could_not_run = _choice(raw, "could_not_run", ("fail", "warn"), where)
        task_options = raw.get("tasks", {})
        if not isinstance(task_options, dict) or not all(isinstance(v, dict) for v in task_options.values()):
            raise PolicyError(f"{where}: [tasks.NAME] tables hold each task's options, e.g. [tasks.kernel_viz] steps = 64")
        for task in task_options:
            if task not in TASK_NAMES:
                raise PolicyError(f"{where}: unknown task [tasks.{task}]; valid tasks: {', '.join(TASK_NAMES)}")
        dataset = raw.get("dataset")
        if dataset is not None:
            if isinstance(dataset, dict):
                dataset = dataset.get("path")
            if not isinstance(dataset, str) or not dataset:
                raise PolicyError(f'{where}: dataset is a path to an .npz (dataset = "clips.npz")')
            dataset = Path(dataset) if source is None else (source.parent / dataset)
        model_options = _model_options(raw, where)
        raw_checks = raw.get("checks")
        if not isinstance(raw_checks, list) or not raw_checks:
            raise PolicyError(f"{where}: no checks; add at least one [[checks]] table with a metric and a bound")
        lines = [n for n, line in enumerate(text.splitlines(), 1) if re.match(r"\s*\[\[\s*checks\s*\]\]", line)]
        checks = tuple(
            _check(item, f"{where} check {i + 1}", lines[i] if i < len(lines) else None) for i, item in enumerate(raw_checks)
        )
        names = [c.name for c in checks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PolicyError(f"{where}: check names must be unique; give these a distinct name: {', '.join(duplicates)}")
        return cls(checks, task_options, dataset, fail_on, could_not_run, source, text, model_options=model_options)


def _model_options(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The policy's input_spec table and architecture / format strings, as Client.analyze takes them."""
    options: dict[str, Any] = {}
    spec = raw.get("input_spec")
    if spec is not None:
        example = "input_spec = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }"
        if not isinstance(spec, dict):
            raise PolicyError(f"{where}: input_spec is a table, e.g. {example}")
        unknown = [k for k in spec if k not in _INPUT_SPEC_KEYS]
        if unknown:
            raise PolicyError(f"{where}: input_spec has no key {unknown[0]!r}; its keys: {', '.join(_INPUT_SPEC_KEYS)}")
        for key in ("shape", "mean", "std"):
            if key in spec and not (isinstance(spec[key], list) and all(isinstance(v, (int, float)) for v in spec[key])):
                raise PolicyError(f"{where}: input_spec.{key} is a list of numbers, e.g. {example}")
        options["input_spec"] = dict(spec)
    for key in ("architecture", "format"):
        value = raw.get(key)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise PolicyError(f'{where}: {key} is a name, e.g. {key} = "{"c3d_small" if key == "architecture" else "onnx"}"')
            options[key] = value
    return options


@dataclass(frozen=True)
class CheckResult:
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
            "value": _json_number(self.value),
            "baseline": _json_number(self.baseline),
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
    def to_dict(self, fail_on: str | None = None) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "status": self.status(fail_on),
            "exit_code": self.exit_code(fail_on),
            "fail_on": fail_on or self.policy.fail_on,
            "policy": str(self.policy.source) if self.policy.source else None,
            "model": self.model,
            "model_name": self.model_name,
            "job_id": self.job_id,
            "baseline_model": self.baseline_model or None,
            "baseline_name": self.baseline_name or None,
            "baseline_job_id": self.baseline_job_id or None,
            "counts": self.counts(),
            "checks": [r.to_dict() for r in self.results],
            "metrics": _json_metrics(self.metrics),
            "baseline_metrics": _json_metrics(self.baseline_metrics) if self.baseline_metrics is not None else None,
        }

    def to_junit(self, fail_on: str | None = None) -> str:
        """JUnit XML: one testsuite per task (its metrics as properties), one testcase per check."""
        failing = {id(r) for r in self.failing(fail_on)}
        root = ET.Element("testsuites", name=f"kernelscope gate: {self.model_name}" + (f" vs {self.baseline_name}" if self.baseline_model else ""))
        totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
        for task in self.policy.tasks:
            results = [r for r in self.results if r.check.task == task]
            suite = ET.SubElement(root, "testsuite", name=task)
            props = ET.SubElement(suite, "properties")
            _property(props, "model", self.model_name)
            _property(props, "model_id", self.model)
            _property(props, "job_id", self.job_id)
            for name, value in sorted(self.metrics.get(task, {}).items()):
                _property(props, name, _fmt(value))
            if self.baseline_metrics is not None:
                _property(props, "baseline.model", self.baseline_name)
                _property(props, "baseline.model_id", self.baseline_model)
                _property(props, "baseline.job_id", self.baseline_job_id)
                for name, value in sorted(self.baseline_metrics.get(task, {}).items()):
                    _property(props, f"baseline.{name}", _fmt(value))
            counts = dict.fromkeys(totals, 0)
            for r in results:
                counts["tests"] += 1
                case = ET.SubElement(suite, "testcase", name=r.check.name, classname=f"kernelscope.gate.{task}", time="0", file=self.model_name)
                case_props = ET.SubElement(case, "properties")
                _property(case_props, "metric", r.check.metric)
                _property(case_props, "value", _fmt(r.value))
                if r.baseline is not None:
                    _property(case_props, "baseline", _fmt(r.baseline))
                _property(case_props, "bounds", r.check.describe_bounds())
                if r.status == SKIP:
                    counts["skipped"] += 1
                    ET.SubElement(case, "skipped", message=r.message)
                elif r.status == ERROR and id(r) in failing:
                    counts["errors"] += 1
                    ET.SubElement(case, "error", message=r.message, type="could_not_run").text = f"{self.subject()}: {r.message}"
                elif id(r) in failing:
                    counts["failures"] += 1
                    ET.SubElement(case, "failure", message=r.message, type=r.status).text = f"{self.subject()}: {r.message}"
                elif r.status in (WARN, ERROR):
                    ET.SubElement(case, "system-out").text = f"{r.status.upper()}: {r.message}"
            for key, value in counts.items():
                suite.set(key, str(value))
                totals[key] += value
            suite.set("time", f"{self.durations.get(task, 0.0):.3f}")
        for key, value in totals.items():
            root.set(key, str(value))
        ET.indent(root)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    def to_annotations(self, fail_on: str | None = None) -> list[str]:
        """GitHub workflow commands: ::error for checks that fail the gate, ::warning for the rest that are not clean."""
        failing = {id(r) for r in self.failing(fail_on)}
        lines = []
        file = _repo_relative(self.policy.source)
        for r in self.results:
            if r.status in (PASS, SKIP):
                continue
            level = "error" if id(r) in failing else "warning"
            props = {"title": f"kernelscope gate: {r.check.name} ({self.model_name})"}
            if file:
                props["file"] = file
                if r.check.line:
                    props["line"] = str(r.check.line)
            rendered = ",".join(f"{k}={_escape_property(v)}" for k, v in props.items())
            against = f" vs {self.baseline_name}" if self.baseline_model else ""
            lines.append(f"::{level} {rendered}::{_escape_data(f'{r.status.upper()}: {self.model_name}{against}: {r.message}')}")
        return lines

    def to_markdown(self, fail_on: str | None = None) -> str:
        status = self.status(fail_on)
        icon = {PASS: "✅", WARN: "⚠️", FAIL: "❌"}[status]
        counts = self.counts()
        out = [
            f"## {icon} kernelscope gate: {status.upper()}",
            "",
            f"Model **{_md(self.model_name)}** (`{self.model}`, job `{self.job_id}`)"
            + (f" against baseline **{_md(self.baseline_name)}** (`{self.baseline_model}`, job `{self.baseline_job_id}`)" if self.baseline_model else "")
            + ". "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
            "",
            f"| | check | metric | {_md(self.model_name)} | baseline{': ' + _md(self.baseline_name) if self.baseline_model else ''} | bounds | |",
            "|---|---|---|---|---|---|---|",
        ]
        marks = {PASS: "✅", WARN: "⚠️", FAIL: "❌", ERROR: "⛔", SKIP: "⏭️"}
        for r in self.results:
            cells = [
                marks[r.status],
                r.check.name,
                f"`{r.check.metric}`" + (f" ({r.check.layer})" if r.check.layer else ""),
                _fmt(r.value),
                _fmt(r.baseline) if r.baseline is not None else "",
                r.check.describe_bounds(),
                r.message,
            ]
            out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return "\n".join(out) + "\n"

    def to_text(self, fail_on: str | None = None) -> str:
        rows = [("status", "check", "value", "baseline", "message")]
        header = f"gate on {self.subject()}"
        for r in self.results:
            rows.append((r.status.upper(), r.check.name, _fmt(r.value), _fmt(r.baseline) if r.baseline is not None else "", r.message))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [header] + ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
        lines.append(f"gate: {self.status(fail_on).upper()} ({', '.join(f'{n} {s}' for s, n in self.counts().items() if n)})")
        return "\n".join(lines)

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
            from sdk.report import write_gate_page

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


# ---------------------------------------------------------------------- evaluation
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


def run_gate(
    client: "Client",
    model: Any,
    policy: Policy,
    *,
    baseline: Any = None,
    dataset: Any = None,
    timeout: float | None = None,
    extra_tasks: Iterable[Any] = (),
    log: TextIO | None = None,
    **model_options: Any,
) -> tuple[GateReport, "Result", "Result | None"]:
    """Analyse `model` (and `baseline`) with the tasks the policy needs (plus `extra_tasks`, e.g. "describe"
    for a report); return the report and the results.

    Both jobs are submitted before either is awaited, so a service with two workers runs them side by side.
    While they run, one line per change of task or stage (and every 10 % or 30 s) goes to `log`
    (default stderr), so a CI log shows the gate working rather than minutes of silence.
    """
    model_options = {**policy.model_options, **{k: v for k, v in model_options.items() if v}}
    dataset = dataset if dataset is not None else policy.dataset
    needing = [t for t in policy.tasks if t in catalogue.NEEDS_DATASET]
    if needing and dataset is None:
        raise PolicyError(f"the policy checks {', '.join(needing)}, which needs a labelled dataset: pass --dataset CLIPS.npz or set dataset = \"x.npz\" in the policy")
    if dataset is not None and isinstance(dataset, (str, Path)) and not ids.is_dataset_id(str(dataset)):
        if not Path(dataset).is_file():
            given = "--dataset" if dataset != policy.dataset else f"the policy's dataset key ({policy.source or 'policy'})"
            raise PolicyError(
                f"dataset {dataset} (from {given}) does not exist: pass --dataset CLIPS.npz, an .npz of x (N, C, T, H, W), "
                "y and optional class_names (the README shows how to make the demo's)"
            )
        dataset = client.upload_dataset(str(dataset)).id
    tasks = policy.task_specs() + list(extra_tasks)
    labels = [model_label(model)] + ([model_label(baseline)] if baseline is not None else [])
    jobs = [client.analyze(model, tasks=tasks, dataset=dataset, wait=False, **model_options)]
    if baseline is not None:
        jobs.append(client.analyze(baseline, tasks=tasks, dataset=dataset, wait=False, **model_options))
    for role, label, job in zip(("model", "baseline"), labels, jobs):
        _say(log, f"gate: {role} {label}: job {job.id} submitted ({', '.join(policy.tasks)})")  # type: ignore[union-attr]
    results = _await(client, jobs, labels, timeout, log)
    base = results[1] if baseline is not None else None
    names = [label or _record_name(client, r.job.model_id) for label, r in zip(labels, results)]
    report = evaluate(policy, results[0], base, model_label=names[0], baseline_label=names[1] if base is not None else "")
    return report, results[0], base


def model_label(model: Any) -> str:
    """What a user calls a model given to run_gate: a file's name, a model id as is, a module's class name."""
    if isinstance(model, Path) or (isinstance(model, str) and not ids.is_model_id(model)):
        return Path(model).name
    if isinstance(model, str):
        return ""  # an id: the model record's name, asked of the service afterwards
    return type(model).__name__


def _record_name(client: "Client", model_id: str) -> str:
    try:
        return client.get_model(model_id).name or model_id
    except Exception:  # noqa: BLE001 - a label is a nicety; the id still names the model
        return model_id


def _await(client: "Client", jobs: list[Any], labels: list[str], timeout: float | None, log: TextIO | None) -> list["Result"]:
    """Wait for every job at once (one thread each), printing progress lines; the results in `jobs`' order."""
    from sdk.result import Result

    deadline = None if timeout is None else time.monotonic() + timeout
    roles = ("model", "baseline")
    outcomes: list[Any] = [None] * len(jobs)

    def follow(i: int) -> None:
        job = jobs[i]
        last: tuple[str, str, str] = ("", "", "")
        last_fraction, last_time = -1.0, time.monotonic()
        try:
            for update in client.watch_job(job.id, deadline=deadline):
                job.proto = update
                state = _job_state(update)
                p = update.progress
                now = time.monotonic()
                key = (state, p.task, p.stage)
                if key != last or p.fraction >= last_fraction + 0.1 or now - last_time >= 30.0:
                    where = f" {p.task}: {p.stage}" if p.task else (f" {p.stage}" if p.stage else "")
                    _say(log, f"gate: {roles[i]} {labels[i] or job.id}: {state.lower()}{where} ({p.fraction:.0%})")
                    last, last_fraction, last_time = key, p.fraction, now
            outcomes[i] = Result(job.proto, client)
            _say(log, f"gate: {roles[i]} {labels[i] or job.id}: job {job.id} {_job_state(job.proto).lower()}")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcomes[i] = exc

    threads = [threading.Thread(target=follow, args=(i,), name=f"gate-{roles[i]}", daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


def _job_state(job: Any) -> str:
    from kernelscope.v1 import jobs_pb2

    return jobs_pb2.JobState.Name(job.state)


def _say(log: TextIO | None, line: str) -> None:
    stream = log if log is not None else sys.stderr
    print(line, file=stream, flush=True)


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
        status, reasons = FAIL, reasons + [f"{_fmt_apart(value, check.max)} > max {_fmt_apart(check.max, value)}"]
    if check.min is not None and value < check.min:
        status, reasons = FAIL, reasons + [f"{_fmt_apart(value, check.min)} < min {_fmt_apart(check.min, value)}"]
    if status == PASS and check.warn_max is not None and value > check.warn_max:
        status, reasons = WARN, reasons + [f"{_fmt_apart(value, check.warn_max)} > warn_max {_fmt_apart(check.warn_max, value)}"]
    if status == PASS and check.warn_min is not None and value < check.warn_min:
        status, reasons = WARN, reasons + [f"{_fmt_apart(value, check.warn_min)} < warn_min {_fmt_apart(check.warn_min, value)}"]
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
            if check.max_regression is not None and regression > _exact(check.max_regression):
                status = FAIL
                reasons.append(f"{_pct_apart(shown, check.max_regression)} worse than baseline {_fmt(base_value)} (allowed {_pct_apart(check.max_regression, shown)})")
            elif check.warn_regression is not None and regression > _exact(check.warn_regression):
                status = WARN if status == PASS else status
                reasons.append(f"{_pct_apart(shown, check.warn_regression)} worse than baseline {_fmt(base_value)} (warn above {_pct_apart(check.warn_regression, shown)})")
            elif status == PASS:
                limit = check.max_regression if check.max_regression is not None else check.warn_regression
                reasons.append(
                    f"{_pct_apart(shown, limit)} worse than baseline {_fmt(base_value)}, within {_pct_apart(limit, shown)}"  # type: ignore[arg-type]
                    if regression > 0 else f"not worse than baseline {_fmt(base_value)}"
                )
    if not reasons:
        reasons.append(f"{_fmt(value)} within {check.describe_bounds()}")
    if base_value is None and baseline_values is not None and not metric.paired:
        base_value = baseline_values.get(task, {}).get(key)  # shown beside the value, not judged
    return CheckResult(check, status, value, base_value, "; ".join(reasons))


def _exact(value: float) -> Decimal:
    """The number as written (the shortest decimal that reads back as this float): 0.9 is 0.9, not 0.90000000000000002220.

    Policies and summaries are decimal text; comparing their binary approximations turns an exact 5 % into
    5.000000000000002 % and fails it.
    """
    return Decimal(repr(float(value)))


def _exact_regression(better: str | None, value: float, base: float) -> Decimal:
    """Relative worsening of `value` against `base`, in exact decimal arithmetic (0 when not worse; Infinity
    when the baseline is 0 and it got worse)."""
    v, b = _exact(value), _exact(base)
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


# ---------------------------------------------------------------------- policy parsing helpers
def _check(raw: Any, where: str, line: int | None) -> Check:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a check is a table ([[checks]]) with a metric and bounds")
    _no_unknown(raw, _CHECK_KEYS, where)
    name = raw.get("metric")
    if not isinstance(name, str) or not name:
        raise PolicyError(f'{where}: metric is missing; set metric = "<task>.<name>". {metrics.listing()}')
    metric = metrics.find(name)
    if metric is None:
        raise PolicyError(f"{where}: unknown metric {name!r}. {metrics.listing()}")
    layer = raw.get("layer")
    if layer is not None and (not isinstance(layer, str) or not metric.per_layer):
        raise PolicyError(f"{where}: {name} is a whole-model metric and takes no layer" if not metric.per_layer else f"{where}: layer is a layer name string")
    bounds: dict[str, float] = {}
    for key in (*_ABSOLUTE_BOUNDS, *_RELATIVE_BOUNDS):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise PolicyError(f"{where}: {key} must be a number, not {value!r}")
            bounds[key] = float(value)
    if not bounds:
        raise PolicyError(f"{where}: {name} has no bound; give one of {', '.join((*_ABSOLUTE_BOUNDS, *_RELATIVE_BOUNDS))}")
    for warn, hard, ok in (("warn_max", "max", lambda w, h: w <= h), ("warn_min", "min", lambda w, h: w >= h), ("warn_regression", "max_regression", lambda w, h: w <= h)):
        if warn in bounds and hard in bounds and not ok(bounds[warn], bounds[hard]):
            raise PolicyError(f"{where}: {warn} {_fmt(bounds[warn])} lies beyond {hard} {_fmt(bounds[hard])}; a warning comes before a failure")
    for key in _RELATIVE_BOUNDS:
        if key in bounds and bounds[key] < 0:
            raise PolicyError(f"{where}: {key} is a share of the baseline (0.1 = 10 % worse) and cannot be negative")
    if any(k in bounds for k in _RELATIVE_BOUNDS) and metric.paired:
        raise PolicyError(f"{where}: {name} already compares the model with the baseline; bound it with min / warn_min (e.g. min = 0.8)")
    if any(k in bounds for k in _RELATIVE_BOUNDS) and metric.better is None:
        raise PolicyError(f"{where}: {name} has no better direction, so it cannot regress; bound it absolutely")
    label = raw.get("name") or (f"{name}[{layer}]" if layer else name) + (" vs baseline" if any(k in bounds for k in _RELATIVE_BOUNDS) or metric.paired else "")
    return Check(name=str(label), metric=metric.name, layer=layer, line=line, **bounds)  # type: ignore[arg-type]


def _no_unknown(raw: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _choice(raw: Mapping[str, Any], key: str, choices: tuple[str, ...], where: str) -> str:
    value = raw.get(key, choices[0])
    if value not in choices:
        raise PolicyError(f"{where}: {key} is one of {', '.join(repr(c) for c in choices)}, not {value!r}")
    return str(value)


# ---------------------------------------------------------------------- formatting helpers
def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _fmt_apart(value: float, other: float | None) -> str:
    """`value` with as many digits as it takes not to read the same as `other` when they differ
    (never "0.8 < min 0.8")."""
    if other is None or value == other or not (math.isfinite(value) and math.isfinite(other)):
        return _fmt(value)
    for digits in range(4, 18):
        mine, theirs = f"{value:.{digits}g}", f"{other:.{digits}g}"
        if mine != theirs:
            return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else mine
    return repr(value)


def _pct_apart(share: float, other: float | None) -> str:
    """A share as a percentage, with the digits it takes to differ from `other` (5.04 %, not 5.0 %, against 5 %)."""
    if math.isinf(share):
        return "infinitely"
    if other is None or math.isinf(other) or share == other:
        return f"{share * 100:g}%"
    for digits in range(2, 18):
        mine, theirs = f"{share * 100:.{digits}g}", f"{other * 100:.{digits}g}"
        if mine != theirs:
            return f"{mine}%"
    return f"{share * 100!r}%"


def _json_number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def _json_metrics(values: dict[str, dict[str, float | None]] | None) -> dict[str, dict[str, float | None]]:
    return {t: {k: _json_number(v) for k, v in m.items()} for t, m in (values or {}).items()}


def _property(parent: ET.Element, name: str, value: str) -> None:
    ET.SubElement(parent, "property", name=name, value=value)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("`", "'")


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


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


__all__ = ["Policy", "Check", "CheckResult", "GateReport", "PolicyError", "evaluate", "run_gate", "POLICY_VERSION"]
