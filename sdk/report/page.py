"""One self-contained HTML page per job: the model's layer inventory, then one section per task.

    result.save_report("report.html")          # or: kernelscope report JOB -o report.html

Why one file: reports are attached to CI runs and mailed around, so every image is embedded as a
data: URI (embed=False writes them beside the page, in <name>_files/, for very large jobs) and the
page fetches nothing from the network: its CSS, its table sorting and its charts (inline SVG drawn
from the summaries, see sdk.report.charts) are all in the page. A small script marks the page once it has
loaded (<body data-images-checked, data-images, data-broken-images>) so a headless browser can tell
that every image decoded. Each task's section comes from its plugin (sdk.plugins); a task without
one (a newer service's) is shown as its summary's scalars.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernelscope import catalogue
from sdk import plugins
from sdk.findings import verdicts
from sdk.report.artifacts import artifact_table
from sdk.report.assets import Assets
from sdk.report.html import figure, grid, kv
from sdk.report.job import description_for, job_overview, job_warnings, model_record, model_section, state_name, verdict_list
from sdk.report.style import CSS, JS, NOTEBOOK_CSS

if TYPE_CHECKING:
    from kernelscope.v1 import models_pb2
    from sdk.result import Result, TaskOutcome

TASK_TITLES = {name: entry.title for name, entry in catalogue.TASKS.items()}


def write_report(results: "list[Result] | Result", path: Path | str, description: "models_pb2.ModelDescription | None" = None, *, embed: bool = True) -> Path:
    """Write one HTML page for `results` (usually one job) to `path` and return it.

    `description` is the model's layer inventory; when None it is asked of the service
    (client.describe(model_id)) and the page says so if that fails.
    """
    from sdk.result import Result

    results = [results] if isinstance(results, Result) else list(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = Page(path, embed)
    multi = len(results) > 1
    for index, result in enumerate(results):
        prefix = f"job{index + 1}-" if multi else ""
        page.add_job(result, description_for(result, description), prefix)
    path.write_text(page.render(), encoding="utf-8")
    return path


def notebook_html(result: "Result") -> str:
    """A Result as a notebook cell shows it: verdicts, warnings, task status and headline metrics (no images,
    no service calls; save_report writes the full page)."""
    body = verdict_list(verdicts(result)) + job_warnings(result, None) + job_overview(result, state_name(result))
    return f'<div class="kernelscope-result"><style>{NOTEBOOK_CSS}</style><h3>kernelscope job {escape(result.id)}</h3>{body}</div>'


@dataclass
class Section:
    """One <section> of the page, listed in its navigation."""

    id: str
    title: str
    body: str
    kind: str


class Page:
    """The page being written: its sections in order and the jobs they come from."""

    def __init__(self, path: Path, embed: bool) -> None:
        self.path = path
        self.embed = embed
        self.sections: list[Section] = []
        self.jobs: list[str] = []

    def add_job(self, result: "Result", description: Any, prefix: str, label: str = "") -> None:
        """The job's sections; `label` ("Candidate model.pt2") heads each title when several jobs share the page."""
        assets = Assets(result, self.path, self.embed, prefix)
        self.jobs.append(result.id)
        state = state_name(result)
        record = model_record(result)
        head = f"{label}: " if label else ""
        inventory_spec = None if isinstance(description, str) else description.input_spec
        self.sections.append(Section(f"{prefix}verdicts", f"{head}At a glance", verdict_list(verdicts(result)) + job_warnings(result, record, inventory_spec), "verdicts"))
        self.sections.append(Section(f"{prefix}job", f"{head}Job {result.id}", job_overview(result, state, record), "job"))
        self.sections.append(Section(f"{prefix}model", f"{head}Model", model_section(result, description, record), "model"))
        for outcome in result.tasks:
            plugin = plugins.find(outcome.task)
            if plugin is not None and plugin.section is None:
                continue  # describe: the Model section shows it
            renderer = plugin.section if plugin is not None and plugin.section is not None else _generic_task
            body = _task_error(outcome) if outcome.error else ""
            if outcome.summary is not None:
                try:
                    body += renderer(outcome, assets)
                except Exception as exc:  # a summary from a newer worker must not lose the rest of the page
                    body += f'<p class="error">could not lay out this summary ({escape(type(exc).__name__)}: {escape(str(exc))}); it is shown raw below.</p>'
                body += _leftover_images(outcome, assets)
                body += _raw_summary(outcome)
            self.sections.append(Section(f"{prefix}task-{outcome.task}", head + TASK_TITLES.get(outcome.task, outcome.task), body, outcome.task))
        self.sections.append(Section(f"{prefix}artifacts", f"{head}Artifacts", artifact_table(result, assets, prefix), "artifacts"))

    def render(self, heading: str = "kernelscope report", lead: str = "", body_attrs: str = "") -> str:
        nav = "".join(f'<li><a href="#{s.id}">{escape(s.title)}</a></li>' for s in self.sections)
        body = "".join(
            f'<section id="{s.id}" class="report-section" data-section="{escape(s.kind)}"><h2>{escape(s.title)}</h2>{s.body}</section>'
            for s in self.sections
        )
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        title = f"{heading} — {', '.join(self.jobs)}"
        return (
            "<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data: \'self\'; style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f'<body data-images-checked="false"{body_attrs}><header><h1>{escape(heading)}</h1><p class="muted">{escape(", ".join(self.jobs))} · written {stamp}</p>'
            f"<nav><ul>{nav}</ul></nav></header><main>{lead}{body}</main><script>{JS}</script></body></html>\n"
        )


def _task_error(outcome: "TaskOutcome") -> str:
    e = outcome.error or {}
    return f'<p class="error">This task could not run: {escape(e.get("code", ""))} {escape(e.get("reason", ""))} — {escape(e.get("message", ""))}</p>'


def _generic_task(outcome: "TaskOutcome", assets: Assets) -> str:
    return kv(_scalars(outcome.summary or {}))


def _leftover_images(outcome: "TaskOutcome", assets: Assets) -> str:
    """Every image of the task that its section did not already show (nothing a worker wrote goes unseen)."""
    rest = [n for n in assets.names(outcome.task) if assets.is_image(n) and n not in assets.used]
    if not rest:
        return ""
    figures = [figure(assets.img(n, alt=n, cls="thumb"), n) for n in rest]
    return f"<details class=\"more\"><summary>Other figures ({len(rest)})</summary>{grid(figures)}</details>"


def _raw_summary(outcome: "TaskOutcome") -> str:
    text = json.dumps(outcome.summary, indent=1, sort_keys=False)
    if len(text) > 200_000:
        text = text[:200_000] + "\n… (truncated: download the job for the whole summary)"
    return f"<details class=\"more\"><summary>Summary JSON</summary><pre>{escape(text)}</pre></details>"


def _scalars(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in summary.items() if isinstance(v, (int, float, str, bool))]
