"""One self-contained HTML page per job: the model's layer inventory, then one section per task.

    result.save_report("report.html")          # or: kernelscope report JOB -o report.html

Why one file: reports are attached to CI runs and mailed around, so every image is embedded as a
data: URI (embed=False writes them beside the page, in <name>_files/, for very large jobs) and the
page fetches nothing from the network: its CSS, its table sorting and its charts (inline SVG drawn
from the summaries, see sdk.charts) are all in the page. A small script marks the page once it has
loaded (<body data-images-checked, data-images, data-broken-images>) so a headless browser can tell
that every image decoded.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from kernelscope import catalogue
from sdk import charts, metrics
from sdk.result import artifact_path

if TYPE_CHECKING:
    from kernelscope.v1 import models_pb2
    from sdk.gate import GateReport
    from sdk.result import Result, TaskOutcome

IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
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
    page = _Page(path, embed)
    multi = len(results) > 1
    for index, result in enumerate(results):
        prefix = f"job{index + 1}-" if multi else ""
        page.add_job(result, _description_for(result, description), prefix)
    path.write_text(page.render(), encoding="utf-8")
    return path


def notebook_html(result: "Result") -> str:
    """A Result as a notebook cell shows it: verdicts, warnings, task status and headline metrics (no images,
    no service calls; save_report writes the full page)."""
    body = _verdict_list(verdicts(result)) + _job_warnings(result, None) + _job_overview(result, _state_name(result))
    return f'<div class="kernelscope-result"><style>{_NOTEBOOK_CSS}</style><h3>kernelscope job {escape(result.id)}</h3>{body}</div>'


def write_gate_page(report: "GateReport", path: Path | str, *, fail_on: str | None = None, embed: bool = True) -> Path:
    """The gate's own page: the verdict, the candidate and the baseline side by side, every check with both
    values, the change and the policy lines it came from, every metric compared, then each job's report
    (its sections labelled Candidate / Baseline)."""
    from sdk import gate as gates

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = _Page(path, embed)
    status = report.status(fail_on)
    counts = report.counts()
    failing = {id(r) for r in report.failing(fail_on)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lead = (
        f'<div class="gate-banner {status}" data-gate-status="{status}"><strong>{status.upper()}</strong> — '
        f"{len(failing)} of {len(report.results)} checks fail the gate ({escape(summary)}). "
        f"{escape(report.subject())}</div>"
    )
    page.sections.append(_Section("gate-models", "Candidate and baseline", _gate_models(report), "gate-models"))
    page.sections.append(_Section("gate-checks", "Checks", _gate_checks(report, failing, gates), "gate-checks"))
    page.sections.append(_Section("gate-metrics", "Every metric, candidate vs baseline", _gate_metrics(report), "gate-metrics"))
    jobs = [("candidate-", f"Candidate {report.model_name}", report.result), ("baseline-", f"Baseline {report.baseline_name}", report.baseline_result)]
    for prefix, label, result in jobs:
        if result is not None:
            page.add_job(result, _description_for(result, None), prefix, label)
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
        record = _model_record(result)
        pairs = [
            ("model", label),
            ("model id", result.job.model_id),
            ("file sha256", getattr(record, "sha256", "") or None),
            ("job", result.id),
            ("state", _state_name(result)),
        ]
        cards.append(f'<div data-role="{role.lower()}"><h3>{role}: {escape(label)}</h3>{_kv(pairs)}{_job_warnings(result, record)}</div>')
    policy = report.policy
    where = f"policy {policy.source}" if policy.source else "policy"
    return f'<div class="models">{"".join(cards)}</div><p class="muted small">{escape(where)}; fail_on = {escape(policy.fail_on)}, could_not_run = {escape(policy.could_not_run)}.</p>'


def _gate_checks(report: "GateReport", failing: set[int], gates: Any) -> str:
    rows = []
    for r in report.results:
        change: Any = None
        if r.value is not None and r.baseline is not None:
            delta = r.value - r.baseline
            change = f"{delta:+.4g}" + (f" ({100 * delta / abs(r.baseline):+.3g} %)" if r.baseline else "")
        source = report.policy.check_text(r.check)
        where = f"{report.policy.source.name if report.policy.source else 'policy'}:{r.check.line}" if r.check.line else ""
        policy_cell = Html(f'<span class="muted small">{escape(where)}</span><pre class="policy">{escape(source)}</pre>' if source else escape(r.check.describe_bounds()))
        status = r.status + (" (fails the gate)" if id(r) in failing and r.status != gates.FAIL else "")
        rows.append(
            (
                Html(f'<span class="status-{r.status}">{escape(status.upper())}</span>'),
                r.check.name,
                r.check.metric + (f" [{r.check.layer}]" if r.check.layer else ""),
                gates._fmt_apart(r.value, r.baseline) if r.value is not None else None,
                gates._fmt_apart(r.baseline, r.value) if r.baseline is not None else None,
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


# ---------------------------------------------------------------------- page
@dataclass
class _Section:
    id: str
    title: str
    body: str
    kind: str


class _Page:
    def __init__(self, path: Path, embed: bool) -> None:
        self.path = path
        self.embed = embed
        self.sections: list[_Section] = []
        self.jobs: list[str] = []

    def add_job(self, result: "Result", description: Any, prefix: str, label: str = "") -> None:
        """The job's sections; `label` ("Candidate model.pt2") heads each title when several jobs share the page."""
        assets = _Assets(result, self.path, self.embed, prefix)
        self.jobs.append(result.id)
        state = _state_name(result)
        record = _model_record(result)
        head = f"{label}: " if label else ""
        inventory_spec = None if isinstance(description, str) else description.input_spec
        self.sections.append(_Section(f"{prefix}verdicts", f"{head}At a glance", _verdict_list(verdicts(result)) + _job_warnings(result, record, inventory_spec), "verdicts"))
        self.sections.append(_Section(f"{prefix}job", f"{head}Job {result.id}", _job_overview(result, state, record), "job"))
        self.sections.append(_Section(f"{prefix}model", f"{head}Model", _model_section(result, description, record), "model"))
        for outcome in result.tasks:
            if outcome.task == "describe":
                continue
            renderer = _RENDERERS.get(outcome.task, _generic_task)
            body = _task_error(outcome) if outcome.error else ""
            if outcome.summary is not None:
                try:
                    body += renderer(outcome, assets)
                except Exception as exc:  # a summary from a newer worker must not lose the rest of the page
                    body += f'<p class="error">could not lay out this summary ({escape(type(exc).__name__)}: {escape(str(exc))}); it is shown raw below.</p>'
                body += _leftover_images(outcome, assets)
                body += _raw_summary(outcome)
            self.sections.append(_Section(f"{prefix}task-{outcome.task}", head + TASK_TITLES.get(outcome.task, outcome.task), body, outcome.task))
        self.sections.append(_Section(f"{prefix}artifacts", f"{head}Artifacts", _artifact_table(result, assets, prefix), "artifacts"))

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
            f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
            f'<body data-images-checked="false"{body_attrs}><header><h1>{escape(heading)}</h1><p class="muted">{escape(", ".join(self.jobs))} · written {stamp}</p>'
            f"<nav><ul>{nav}</ul></nav></header><main>{lead}{body}</main><script>{_JS}</script></body></html>\n"
        )


class _Assets:
    """Artifact bytes of one job as image sources: data: URIs, or files beside the page."""

    def __init__(self, result: "Result", page: Path, embed: bool, prefix: str = "") -> None:
        self.result = result
        self.page = page
        self.embed = embed
        self.prefix = prefix
        self.by_name = {a.name: a for a in result.artifacts}
        self.used: set[str] = set()
        self.failed: dict[str, str] = {}
        self.anchors: dict[str, str] = {}  # artifact name -> id of the element that first shows it
        self.files: dict[str, str] = {}  # artifact name -> its file beside the page (embed=False)
        self.inlined = 0  # bytes of non-image artifacts embedded as download links

    def names(self, task: str, pattern: str = r".*") -> list[str]:
        """Artifact names of `task` matching `pattern` (a regex on the whole name), in name order."""
        rx = re.compile(pattern)
        return sorted(n for n, a in self.by_name.items() if a.task == task and rx.fullmatch(n))

    def is_image(self, name: str) -> bool:
        return PurePosixPath(name).suffix.lower() in IMAGE_TYPES

    def src(self, name: str) -> str | None:
        if name not in self.by_name:
            return None
        self.used.add(name)
        if not self.embed:
            relative = artifact_path(name)
            if relative is None:
                self.failed[name] = "refused: the artifact name leaves the job's folder"
                return None
        try:
            data = self.result.read_artifact(name)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch is reported on the page
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            return None
        if self.embed:
            media = IMAGE_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")
            return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
        return self.write_beside(name, relative, data)

    def write_beside(self, name: str, relative: PurePosixPath, data: bytes) -> str:
        beside = self.page.parent / f"{self.page.stem}_files" / self.result.id / relative
        beside.parent.mkdir(parents=True, exist_ok=True)
        beside.write_bytes(data)
        self.files[name] = beside.relative_to(self.page.parent).as_posix()
        return self.files[name]

    def img(self, name: str | None, alt: str = "", cls: str = "") -> str:
        """An <img> of artifact `name`, or a note saying why there is none."""
        if not name:
            return '<span class="missing">—</span>'
        src = self.src(name)
        if src is None:
            why = self.failed.get(name, "not among the job's artifacts")
            return f'<span class="missing" title="{escape(why)}">{escape(PurePosixPath(name).name)} unavailable</span>'
        anchor = ""
        if name not in self.anchors:
            self.anchors[name] = f"{self.prefix}art-{len(self.anchors) + 1}"
            anchor = f' id="{self.anchors[name]}"'
        return f'<img src="{escape(src)}" alt="{escape(alt or name)}" title="{escape(name)}" class="{cls}"{anchor}>'


# ---------------------------------------------------------------------- generic pieces
class Html(str):
    """Markup that table cells insert as-is (everything else is escaped)."""


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, sortable: bool = True, cls: str = "", notes: dict[str, str] | None = None) -> str:
    """An HTML table; numbers are right-aligned, formatted, and sort numerically (data-sort).

    `notes` explain column headings: shown on hover and, for print and for readers who do not hover,
    as a list of definitions under the table.
    """
    notes = notes or {}
    head = "".join(
        f'<th scope="col" title="{escape(notes[h])}" class="explained">{escape(h)}</th>' if h in notes else f'<th scope="col">{escape(h)}</th>'
        for h in headers
    )
    body = []
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, Html):
                cells.append(f"<td>{value}</td>")
            elif isinstance(value, bool):
                cells.append(f'<td data-sort="{int(value)}">{"yes" if value else "no"}</td>')
            elif isinstance(value, (int, float)):
                sort = value if math.isfinite(value) else ""
                cells.append(f'<td class="num" data-sort="{sort}">{escape(fmt(value))}</td>')
            elif value is None:
                cells.append('<td class="num" data-sort="">—</td>')
            else:  # text, and lists joined by fmt
                cells.append(f"<td>{escape(fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    classes = " ".join(c for c in ("data", "sortable" if sortable else "", cls) if c)
    hint = '<p class="muted small">Click a column heading to sort.</p>' if sortable and len(body) > 3 else ""
    legend = "".join(f"<dt>{escape(h)}</dt><dd>{escape(notes[h])}</dd>" for h in headers if h in notes)
    legend = f'<dl class="legend">{legend}</dl>' if legend else ""
    return f'{hint}<div class="table-wrap"><table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{legend}'


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(fmt(v))}</td></tr>" for k, v in pairs if v is not None)
    return f'<table class="kv"><tbody>{rows}</tbody></table>' if rows else ""


def _figure(inner: str, caption: str = "") -> str:
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure class="fig">{inner}{cap}</figure>'


def _grid(figures: Iterable[str]) -> str:
    return f'<div class="figures">{"".join(figures)}</div>'


def _scalars(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in summary.items() if isinstance(v, (int, float, str, bool))]


def _job_overview(result: "Result", state: str, record: Any = None) -> str:
    job = result.job
    times = {}
    for key in ("create_time", "start_time", "end_time"):
        stamp = getattr(job, key)
        if stamp.seconds:
            times[key] = _dt.datetime.fromtimestamp(stamp.seconds, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    name = job.model_name or (getattr(record, "name", "") if record is not None else "")
    model = f"{name} ({job.model_id})" if name else job.model_id
    pairs = [("job", job.id), ("state", state), ("model", model), ("dataset", job.dataset_id or None), ("worker", job.worker or None)]
    pairs += list(times.items())
    rows = [
        (t.task, Html('<span class="ok">ok</span>' if t.ok else f'<span class="bad">{escape((t.error or {}).get("reason", "error"))}</span>'), t.duration_seconds, len(t.artifacts))
        for t in result.tasks
    ]
    out = _kv(pairs)
    if job.error.reason or job.error.message:
        out += f'<p class="error">{escape(job.error.code)} {escape(job.error.reason)}: {escape(job.error.message)}</p>'
    out += table(("task", "status", "seconds", "artifacts"), rows, sortable=False)
    headline = _headline_metrics(result)
    if headline:
        out += "<h3>Headline metrics</h3>" + table(("metric", "value", "meaning"), headline)
    return out


@dataclass(frozen=True)
class Verdict:
    """One finding in plain words. `level`: "ok", "note" (worth a look) or "bad" (failed, or something is off)."""

    task: str
    level: str
    text: str


_COMPASS = ("right →", "down-right ↘", "down ↓", "down-left ↙", "left ←", "up-left ↖", "up ↑", "up-right ↗")


def compass(degrees: float) -> str:
    """A direction angle (0 = right, 90 = down, as on screen) as words and an arrow."""
    return _COMPASS[int(((degrees % 360.0) + 22.5) // 45.0) % 8]


def verdicts(result: "Result") -> list[Verdict]:
    """What each task found, one sentence per task (per layer for kernel_viz), failures included."""
    out: list[Verdict] = []
    for outcome in result.tasks:
        if outcome.task == "describe":
            continue
        if outcome.error:
            e = outcome.error
            out.append(Verdict(outcome.task, "bad", f"could not run: {e.get('reason', '')}: {e.get('message', '')}"))
            continue
        if outcome.summary is None:
            out.append(Verdict(outcome.task, "bad", "returned no summary"))
            continue
        try:
            out += _VERDICTS.get(outcome.task, lambda s: [])(outcome.summary)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
            out.append(Verdict(outcome.task, "note", f"summary not understood ({type(exc).__name__}: {exc}); see its section"))
    if not out and result.job.error.reason:
        out.append(Verdict("job", "bad", f"{result.job.error.reason}: {result.job.error.message}"))
    return out


def _kernel_viz_verdicts(s: dict[str, Any]) -> list[Verdict]:
    out = []
    for layer in s.get("layers", []):
        channels = layer.get("channels", [])
        dead = [c for c in channels if c.get("dead")]
        live = [c for c in channels if not c.get("dead")]
        moving = [c for c in live if c.get("direction_deg") is not None]
        text = f"{layer.get('name')}: {len(live)} of {len(channels)} channels live" + (f", {len(dead)} dead" if dead else "")
        if moving:
            sectors = [compass(float(c["direction_deg"])) for c in moving]
            most = max(sectors.count(d) for d in _COMPASS)
            tied = [d for d in _COMPASS if sectors.count(d) == most]
            speed = metrics._mean(c.get("speed_px_per_frame") for c in moving)
            if len(tied) == 1:
                text += f"; {len(moving)} prefer motion, most often {tied[0]} ({most} of {len(moving)})"
            elif len(tied) <= 3:
                text += f"; {len(moving)} prefer motion, as often {' as '.join(tied)} ({most} each)"
            else:
                text += f"; {len(moving)} prefer motion, in {len(set(sectors))} different directions"
            text += f", mean speed {fmt(speed, 2)} px/frame" if speed is not None else ""
        elif live:
            text += "; none prefers a significant motion (static or noise-like patterns)"
        out.append(Verdict("kernel_viz", "bad" if dead else "ok", text))
    return out or [Verdict("kernel_viz", "note", "no layer analysed")]


def _tconv_verdicts(s: dict[str, Any]) -> list[Verdict]:
    layers = s.get("layers", [])
    threshold = (s.get("options") or {}).get("residual_threshold")
    out = []
    fitted = [layer for layer in layers if layer.get("kind") == "Conv3d-fit"]
    if fitted:
        total = explained = gained = zero = 0
        best: float | None = None
        for layer in fitted:
            plain = (layer.get("residual") or {}).get("plain") or {}
            count = int(plain.get("count") or 0)
            share = layer.get("explainable_share") or {}
            total += count
            explained += round((share.get("plain") or 0.0) * count)
            gained += round((share.get("gain") or 0.0) * count)
            zero += int(layer.get("zero_filters") or 0)
            if plain.get("min") is not None:
                best = plain["min"] if best is None else min(best, plain["min"])
        text = f"{explained} of {total} fitted filters 3T-explainable (plain fit); best residual {fmt(best, 2)}, threshold {fmt(threshold)}"
        text += f"; {gained} with per-slice gains" if gained != explained else ""
        text += f"; {zero} all-zero filters not fitted" if zero else ""
        if explained == 0:
            text += ". These kernels are not one 2D pattern scaled, rotated and shifted over time, so there are no motion statistics to show (usual for an ordinary 3D CNN)"
        out.append(Verdict("tconv_stats", "ok" if explained else "note", text))
    for layer in layers:
        if layer.get("kind") == "TConv3d":
            angle = layer.get("dominant_direction_deg")
            text = f"{layer.get('name')}: 3TConv layer, {layer.get('filters')} filters read"
            if angle is not None:
                text += f"; dominant motion {compass(float(angle))} ({_percent(layer.get('dominant_direction_share'))} of filters)"
            if layer.get("near_identity_share") is not None:
                text += f"; {_percent(layer.get('near_identity_share'))} near identity"
            out.append(Verdict("tconv_stats", "ok", text))
    skipped = [layer for layer in layers if layer.get("analysed") is False]
    if skipped:
        kinds = sorted({str(layer.get("kind")) for layer in skipped})
        out.append(Verdict("tconv_stats", "note", f"{len(skipped)} layer(s) listed but not analysed ({', '.join(kinds)}): {', '.join(str(x.get('name')) for x in skipped)}"))
    return out or [Verdict("tconv_stats", "note", "no layer analysed")]


def _percent(share: Any) -> str:
    return "—" if share is None else f"{fmt(100 * float(share), 3)} %"


def _class_filters_verdicts(s: dict[str, Any]) -> list[Verdict]:
    g = s.get("global", {})
    full, restricted = g.get("accuracy_full"), g.get("accuracy_restricted")
    classes = s.get("num_classes") or len(s.get("classes", []))
    text = f"restricted to each class's k = {s.get('k')} best filters of {s.get('layer')}, accuracy {fmt(restricted, 3)} vs {fmt(full, 3)} for the full model"
    if full:
        text += f" ({fmt(100 * (restricted or 0.0) / full, 3)} % retained)"
    if g.get("density") is not None:
        text += f"; the subsets use {fmt(100 * g['density'], 2)} % of its {s.get('num_filters')} filters"
    if g.get("mis") is not None:
        text += f"; MIS {fmt(g['mis'], 2)} bits vs {fmt(g.get('mis_shuffled'), 2)} with shuffled labels"
    level = "ok"
    if full is not None and classes and full <= 1.0 / classes + 0.05:
        level = "bad"
        text += f". The full model is near chance ({fmt(1 / classes, 2)}) on this dataset: is the input normalised as in training?"
    return [Verdict("class_filters", level, text)]


_VERDICTS: dict[str, Callable[[dict[str, Any]], list[Verdict]]] = {
    "kernel_viz": _kernel_viz_verdicts,
    "tconv_stats": _tconv_verdicts,
    "class_filters": _class_filters_verdicts,
}


def _verdict_list(found: list[Verdict]) -> str:
    marks = {"ok": "✔", "note": "•", "bad": "✖"}
    items = "".join(
        f'<li class="verdict {v.level}" data-level="{v.level}" data-task="{escape(v.task)}"><span class="mark">{marks.get(v.level, "•")}</span> <strong>{escape(v.task)}</strong>: {escape(v.text)}</li>'
        for v in found
    )
    return f'<ul class="verdicts">{items}</ul>' if items else '<p class="muted">No task results.</p>'


def _headline_metrics(result: "Result") -> list[tuple[Any, ...]]:
    values = metrics.extract_all(result, per_layer=False)
    return [(name, value, metrics.get(name).description) for task in values for name, value in values[task].items()]


def _model_record(result: "Result") -> Any:
    """The model's record (name, file's sha256, input spec, architecture), or None when it cannot be had."""
    client = result._client
    get = getattr(client, "get_model", None)
    if get is None:
        return None
    try:
        return get(result.job.model_id)
    except Exception:  # noqa: BLE001 - the page names the model by id then, and says the spec is unknown
        return None


def _spec_used(result: "Result", record: Any) -> Any:
    """The input spec the job ran with (recorded on the job), else the model record's; None when neither is known."""
    if result.job.HasField("input_spec"):
        return result.job.input_spec
    return record.input_spec if record is not None else None


def _job_warnings(result: "Result", record: Any, fallback: Any = None) -> str:
    """The job's own warnings (the service writes them: no normalisation given, ...), else the page's spec check
    on the spec used (`fallback`: the layer inventory's, for jobs that did not record theirs)."""
    if result.job.warnings:
        return "".join(f'<p class="warn" data-warning="job">{escape(w)}</p>' for w in result.job.warnings)
    spec = _spec_used(result, record)
    spec = spec if spec is not None else fallback
    return _spec_warning(spec) if spec is not None else ""


def _spec_warning(spec: Any) -> str:
    """A warning when no normalisation was given: the model then saw raw values, which a model trained on
    normalised clips does not recognise (accuracy and activations are then quietly wrong)."""
    if spec is not None and (list(spec.mean) or list(spec.std)):
        return ""
    return (
        '<p class="warn" data-warning="no-input-spec"><strong>No input normalisation was given</strong> (input spec without mean/std): '
        "the model was fed raw values in its value range. If it was trained on normalised clips, every number below is "
        "for inputs it never saw; upload it again with its mean and std (<code>--input-spec '{\"mean\": [...], \"std\": [...]}'</code>, "
        "or <code>input_spec=</code> in the SDK).</p>"
    )


def _model_section(result: "Result", description: Any, record: Any = None) -> str:
    out = ""
    if record is not None:
        from kernelscope.v1 import models_pb2

        out += _kv(
            [
                ("name", result.job.model_name or record.name or None),
                ("model id", record.id),
                ("format", models_pb2.ModelFormat.Name(record.format) if record.format else None),
                ("architecture", record.architecture or None),
                ("file size (bytes)", int(record.size_bytes) if record.size_bytes else None),
                ("file sha256", record.sha256 or None),
            ]
        )
    else:
        name = f" ({result.job.model_name})" if result.job.model_name else ""
        out += f'<p class="muted">Model {escape(result.job.model_id)}{escape(name)}: its record (file, sha256) could not be read.</p>'
    spec = _spec_used(result, record)
    if spec is None and not isinstance(description, str):
        spec = description.input_spec
    if spec is not None:
        out += "<h3>Input spec used</h3>" + _kv(
            [
                ("input shape", " × ".join(str(int(s)) for s in (spec.shape or ([] if isinstance(description, str) else description.input_spec.shape))) or "from the model"),
                ("value range", f"[{spec.value_min:g}, {spec.value_max:g}]" if (spec.value_min or spec.value_max) else "[0, 1] (default)"),
                ("mean", ", ".join(f"{m:g}" for m in spec.mean) or "none given"),
                ("std", ", ".join(f"{s:g}" for s in spec.std) or "none given"),
            ]
        )
    out += _job_warnings(result, record, spec)
    if isinstance(description, str):
        return out + f'<p class="muted">Layer inventory unavailable: {escape(description)}</p>'
    pairs = [
        ("tasks it supports", ", ".join(description.supported_tasks) or None),
        ("layers", len(description.layers)),
        ("parameters", sum(int(layer.parameters) for layer in description.layers)),
    ]
    dims = lambda v: "×".join(str(int(x)) for x in v) or "—"  # noqa: E731
    rows = [
        (i, layer.name, layer.kind, dims(layer.kernel_shape), dims(layer.stride), dims(layer.receptive_field), dims(layer.output_shape), int(layer.parameters))
        for i, layer in enumerate(description.layers)
    ]
    return out + "<h3>Layers</h3>" + _kv(pairs) + table(("#", "layer", "kind", "kernel", "stride", "receptive field", "output", "parameters"), rows)


def _description_for(result: "Result", given: Any) -> Any:
    """The model's layer inventory: the one given, a describe task's summary in the job, or the service's."""
    if given is not None and (not getattr(given, "model_id", "") or given.model_id == result.job.model_id):
        return given
    from kernelscope.v1 import models_pb2

    for outcome in result.tasks:
        if outcome.task == "describe" and outcome.summary:
            from google.protobuf import json_format

            try:
                return json_format.ParseDict(outcome.summary, models_pb2.ModelDescription(), ignore_unknown_fields=True)
            except json_format.ParseError:
                break
    client = result._client
    if client is None:
        return "no client to ask the service with"
    try:
        return client.describe(result.job.model_id)
    except Exception as exc:  # noqa: BLE001 - the page says why and carries on
        return f"{type(exc).__name__}: {exc}"


def _task_error(outcome: "TaskOutcome") -> str:
    e = outcome.error or {}
    return f'<p class="error">This task could not run: {escape(e.get("code", ""))} {escape(e.get("reason", ""))} — {escape(e.get("message", ""))}</p>'


def _generic_task(outcome: "TaskOutcome", assets: _Assets) -> str:
    return _kv(_scalars(outcome.summary or {}))


def _leftover_images(outcome: "TaskOutcome", assets: _Assets) -> str:
    """Every image of the task that its section did not already show (nothing a worker wrote goes unseen)."""
    rest = [n for n in assets.names(outcome.task) if assets.is_image(n) and n not in assets.used]
    if not rest:
        return ""
    figures = [_figure(assets.img(n, alt=n, cls="thumb"), n) for n in rest]
    return f"<details class=\"more\"><summary>Other figures ({len(rest)})</summary>{_grid(figures)}</details>"


def _raw_summary(outcome: "TaskOutcome") -> str:
    text = json.dumps(outcome.summary, indent=1, sort_keys=False)
    if len(text) > 200_000:
        text = text[:200_000] + "\n… (truncated: download the job for the whole summary)"
    return f"<details class=\"more\"><summary>Summary JSON</summary><pre>{escape(text)}</pre></details>"


_LINK_INLINE_BYTES = 512 * 1024  # embedded pages carry non-image artifacts up to this size as download links
_LINK_INLINE_TOTAL = 8 * 1024 * 1024  # ... and no more than this in all, so a job of many files keeps a mailable page


def _artifact_table(result: "Result", assets: _Assets, prefix: str = "") -> str:
    """Every artifact with a link: to where the page shows it, to its file beside the page, or (embedded
    pages) a download of its bytes when small; larger ones name the command that fetches them."""
    rows = []
    for a in result.artifacts:
        rows.append((a.task, Html(_artifact_link(a, assets)), a.media_type, a.size_bytes, a.sha256[:12]))
    if not rows:
        return '<p class="muted">No artifacts.</p>'
    out = (
        f'<p class="muted small">Shown: a link to the figure on this page. Fetch them all with <code>kernelscope download {escape(result.id)} DIR</code> '
        f"or <code>result.download(DIR)</code>.</p>"
    )
    body = table(("task", "name", "type", "bytes", "sha256"), rows)
    out += body if len(rows) <= 40 else f'<details class="more" open><summary>{len(rows)} artifacts</summary>{body}</details>'
    if assets.failed:
        out += '<p class="error">Could not fetch: ' + escape("; ".join(f"{n} ({why})" for n, why in assets.failed.items())) + "</p>"
    return out


def _artifact_link(artifact: Any, assets: _Assets) -> str:
    name = escape(artifact.name)
    if artifact.name in assets.anchors:
        return f'<a href="#{assets.anchors[artifact.name]}">{name}</a> <span class="muted small">(shown above)</span>'
    relative = artifact_path(artifact.name)
    if relative is None:
        return f"{name} <span class=\"muted small\">(refused: leaves the job's folder)</span>"
    inline = artifact.size_bytes <= _LINK_INLINE_BYTES and assets.inlined + artifact.size_bytes <= _LINK_INLINE_TOTAL
    if not assets.embed or inline:
        try:
            data = assets.result.read_artifact(artifact.name)
        except Exception as exc:  # noqa: BLE001 - listed as unavailable, with why
            assets.failed[artifact.name] = f"{type(exc).__name__}: {exc}"
            return f"{name} <span class=\"missing\">unavailable</span>"
        if not assets.embed:
            return f'<a href="{escape(assets.write_beside(artifact.name, relative, data))}">{name}</a>'
        media = artifact.media_type or "application/octet-stream"
        assets.inlined += len(data)
        href = f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
        return f'<a href="{escape(href)}" download="{escape(relative.name)}">{name}</a>'
    size = f"{fmt(artifact.size_bytes / 1e6, 3)} MB" if artifact.size_bytes >= 1e6 else f"{fmt(artifact.size_bytes / 1e3, 3)} kB"
    return f'{name} <span class="muted small">({size}, not embedded: <code>kernelscope download</code>)</span>'


def _state_name(result: "Result") -> str:
    from kernelscope.v1 import jobs_pb2

    return jobs_pb2.JobState.Name(result.job.state)


# ---------------------------------------------------------------------- task sections
_Renderer = Callable[["TaskOutcome", _Assets], str]
_RENDERERS: dict[str, _Renderer] = {}


def _class_filters(outcome: "TaskOutcome", assets: _Assets) -> str:
    s = outcome.summary or {}
    g = s.get("global", {})
    classes = s.get("classes", [])
    names = [str(c.get("name", c.get("class"))) for c in classes]
    out = _kv(
        [
            ("layer", s.get("layer")),
            ("filters", s.get("num_filters")),
            ("classes", s.get("num_classes")),
            ("ranking", s.get("ranking")),
            ("attribution", s.get("attribution")),
            ("restricted model", s.get("restriction")),
            ("MI estimator", s.get("mi_estimator")),
            ("fixed k", s.get("k")),
            ("fit / eval samples", f"{s.get('fit_samples')} / {s.get('eval_samples')}"),
            ("accuracy: full", g.get("accuracy_full")),
            ("accuracy: restricted to the k-subsets", g.get("accuracy_restricted")),
            ("MIS, binned estimator (bits)", g.get("mis_binned_bits", g.get("mis"))),
            ("MIS, binned, shuffled labels (bits)", g.get("mis_binned_bits_shuffled", g.get("mis_shuffled"))),
            ("MIS, kNN estimator as in Liang et al. (nats)", g.get("mis_knn_nats") if g.get("mis_knn_nats") is not None else g.get("mis_knn_skipped")),
            ("MIS, kNN, shuffled labels (nats)", g.get("mis_knn_nats_shuffled")),
            ("Ψ(0.5)", g.get("psi_0_5")),
            ("density", g.get("density")),
            ("mean overlap between classes' subsets (Jaccard: 0 = disjoint, 1 = the same filters)", g.get("mean_overlap")),
            ("compute saving of the decomposed head", g.get("compute_saving")),
            ("class selectivity: mean / median", f"{fmt((g.get('selectivity') or {}).get('mean'))} / {fmt((g.get('selectivity') or {}).get('median'))}"),
        ]
    )
    heat = [n for n in assets.names(outcome.task, r".*heat.*") if assets.is_image(n)]
    figures = [_figure(assets.img(n, alt=n, cls="wide"), "Class × filter contribution; dots mark each class's fixed-k subset.") for n in heat]
    figures.append(
        _figure(
            charts.bars(
                ["accuracy"] + names,
                {"full": [g.get("accuracy_full")] + [c.get("recall_full") for c in classes], "restricted": [g.get("accuracy_restricted")] + [c.get("recall_restricted") for c in classes]},
                title="Restricted vs full: accuracy, then recall per class",
                ylabel="share correct",
                lo=0.0,
                hi=1.0,
            ),
            "Restricted: each class logit uses only its fixed-k subset.",
        )
    )
    figures.append(
        _figure(
            charts.bars(["MIS"], {"measured": [g.get("mis")], "shuffled labels": [g.get("mis_shuffled")]}, title="MIS vs its shuffled-label baseline", ylabel="bits", width=260),
            "MI selectivity well above the shuffled baseline means filters carry class information.",
        )
    )
    sizes = [n for n in assets.names(outcome.task, r".*size.*") if assets.is_image(n)]
    if sizes:
        figures += [_figure(assets.img(n, alt=n, cls="figure"), "Subset sizes per class") for n in sizes]
    else:
        sizes_by_kind = {"fixed k": [s.get("k")] * len(classes), "mass coverage": [c.get("coverage_size") for c in classes], "accuracy retention": [c.get("retention_size") for c in classes]}
        figures.append(_figure(charts.bars(names, sizes_by_kind, title="Subset sizes per class", ylabel="filters")))
    out += _grid(figures)
    rows = []
    for c in classes:
        ablation = c.get("ablation") or {}
        rows.append(
            (
                c.get("class"),
                c.get("name"),
                Html(" ".join(f'<span class="pill">{int(i)}</span>' for i in c.get("subset_k", []))),
                c.get("coverage_size"),
                c.get("retention_size"),
                c.get("recall_full"),
                c.get("recall_restricted"),
                ablation.get("subset_drop"),
                ablation.get("random_drop"),
                ablation.get("complement_drop"),
                c.get("stability_jaccard"),
                c.get("mi_top_k_jaccard"),
            )
        )
    out += "<h3>Per class</h3>" + table(
        ("class", "name", "fixed-k subset", "coverage size", "retention size", "recall full", "recall restricted", "drop: subset ablated", "drop: random subset", "drop: complement ablated", "bootstrap Jaccard", "MI top-k Jaccard"),
        rows,
        notes=_CLASS_NOTES,
    )
    return out


_RENDERERS["class_filters"] = _class_filters

_CLASS_NOTES = {
    "fixed-k subset": "The class's k best filters by contribution to its logit (positive contributions only, so possibly fewer), best first.",
    "coverage size": "Fewest top-ranked filters that carry the required share of the class's positive contribution.",
    "retention size": "Fewest top-ranked filters whose restricted logit keeps the required share of the class's F1; — where the full model has no skill on the class.",
    "recall full": "Share of the class's eval clips the full model classifies correctly.",
    "recall restricted": "The same when every class's logit uses only its fixed-k subset.",
    "drop: subset ablated": "Recall of the class lost when its own fixed-k subset is removed from the layer (set to zero). Large: the class depends on those filters; 0: it does not need them (others carry it).",
    "drop: random subset": "Recall lost when as many random other filters are removed (mean of 5 draws): the chance level for the previous column.",
    "drop: complement ablated": "Recall lost when every filter except the subset is removed. Small: the subset alone suffices.",
    "bootstrap Jaccard": "Stability of the subset: mean Jaccard overlap |A ∩ B| / |A ∪ B| between the subset and the subsets found on bootstrap resamples (1 = always the same filters, 0 = never any in common).",
    "MI top-k Jaccard": "Jaccard overlap between the subset and the k filters with the highest mutual information with the class (1 = both rankings pick the same filters).",
}


def _kernel_viz(outcome: "TaskOutcome", assets: _Assets) -> str:
    s = outcome.summary or {}
    out = _kv([("objective", s.get("objective")), ("optimisation steps", s.get("steps")), ("seed", s.get("seed")), ("TV weight", s.get("tv_weight")), ("device", s.get("device"))])
    out += '<p class="muted small">Directions: 0° = right, 90° = down (image rows). Speeds in pixels of the model\'s input per frame. Dead: the optimisation could not drive the channel above a random input of the same norm.</p>'
    for layer in s.get("layers", []):
        name = str(layer.get("name"))
        channels = layer.get("channels", [])
        live = [c for c in channels if not c.get("dead")]
        dead = [int(c.get("index", -1)) for c in channels if c.get("dead")]
        timing = layer.get("timing") or {}
        folder = f"kernel_viz/{_path_component(name)}"
        out += f"<h3>Layer {escape(name)} <span class=\"pill\">{escape(str(layer.get('kind', '')))}</span></h3>"
        out += _kv(
            [
                ("channels analysed", len(channels)),
                ("dead kernels", f"{len(dead)}" + (f" (channels {', '.join(map(str, dead))})" if dead else "")),
                ("canvas T×H×W", "×".join(str(v) for v in layer.get("canvas", []))),
                ("receptive field T×H×W", "×".join(str(v) for v in layer.get("receptive_field", []))),
                ("jitter t, y, x", layer.get("jitter")),
                ("placed inside a full-size input", layer.get("placed_in_full_input")),
                ("flow maps: full brightness at (px/frame)", layer.get("flow_scale_px_per_frame")),
                ("time: total s / stage 1 channels per s", f"{fmt(timing.get('total_s'))} / {fmt(timing.get('channels_per_s'))}"),
            ]
        )
        out += _contact_sheet(name, folder, channels, layer.get("canvas") or [], assets)
        if live:
            sectors = [0.0] * 12
            for c in live:
                if c.get("direction_deg") is not None:
                    sectors[int(((float(c["direction_deg"]) + 15.0) % 360.0) // 30.0)] += 1.0
            figures = [
                _figure(charts.bars([f"{30 * i}°" for i in range(12)], {"channels": sectors}, title=f"{name}: preferred motion direction (live channels)", ylabel="channels", lo=0.0))
                if any(sectors) else charts.empty(f"{name}: preferred motion direction", "no live channel prefers a significant motion"),
                _figure(charts.histogram([c.get("speed_px_per_frame") for c in live], bins=12, title=f"{name}: speed", xlabel="px / frame", ylabel="channels")),
                _figure(charts.histogram([c.get("motion_dependence") for c in live], bins=12, title=f"{name}: motion dependence", xlabel="1 − act(static) / act(optimal)", ylabel="channels")),
                _figure(charts.histogram([c.get("direction_selectivity") for c in live], bins=12, title=f"{name}: direction selectivity", xlabel="(R − R reversed) / (|R| + |R reversed|)", ylabel="channels")),
                _figure(charts.histogram([c.get("ratio") for c in live], bins=12, title=f"{name}: activation vs random input", xlabel="activation / |random activation|", ylabel="channels")),
            ]
            out += _grid(figures)
        else:
            out += '<p class="no-plot">Every analysed channel is dead: no motion or activation statistics to plot.</p>'
        rows = [
            (
                c.get("index"),
                Html(f'<a href="#{escape(assets.prefix)}kv-{escape(_path_component(name))}-{int(c.get("index", 0))}">sheet</a>'),
                c.get("direction_deg"),
                Html(escape(compass(float(c["direction_deg"])))) if c.get("direction_deg") is not None else None,
                c.get("speed_px_per_frame"),
                c.get("direction_selectivity"),
                c.get("motion_dependence"),
                c.get("order_dependence"),
                c.get("flow_coherence"),
                c.get("reconstruction_error"),
                c.get("activation"),
                c.get("random_activation"),
                c.get("ratio"),
                Html('<span class="bad">dead</span>' if c.get("dead") else ""),
            )
            for c in channels
        ]
        out += "<h4>Channels</h4>" + table(
            ("channel", "pictures", "direction °", "direction", "speed px/frame", "direction selectivity", "motion dependence", "order dependence", "flow coherence", "reconstruction error", "activation", "random input", "ratio", "dead"),
            rows,
            cls="compact",
            notes=_CHANNEL_NOTES,
        )
    return out


_CHANNEL_NOTES = {
    "direction °": "Preferred direction of motion of the channel's optimal video: 0 = right, 90 = down (image rows). Empty where the motion is not significant.",
    "speed px/frame": "Speed of that motion, in pixels of the model's input per frame.",
    "direction selectivity": "(R − R reversed) / (|R| + |R reversed|): 1 = responds only to the video played forward, 0 = either way.",
    "motion dependence": "1 − act(static texture) / act(optimal video): how much of the response needs motion.",
    "order dependence": "How much the response drops when the frames are shuffled.",
    "flow coherence": "How uniform the motion is across the canvas (1 = one rigid motion).",
    "reconstruction error": "Error of warping the texture by the measured flow to rebuild the video (0 = the motion model explains it).",
    "ratio": "Activation reached / |activation of a random input of the same norm|; dead channels stay near or below 1.",
}


def _contact_sheet(layer: str, folder: str, channels: list[dict[str, Any]], canvas: list[Any], assets: _Assets) -> str:
    """Per channel its optimal video, texture and mean flow side by side, upscaled in the browser with
    nearest neighbour (every model pixel a visible block, whatever the canvas size), its caption on its own
    line under the pictures (captions never collide), and the flow maps' colour legend beside the grid."""
    size = 112
    if len(canvas) >= 3 and max(int(canvas[1]), int(canvas[2])) > 0:
        longest = max(int(canvas[1]), int(canvas[2]))
        size = longest * max(1, -(-112 // longest)) if longest <= 112 else 160  # an integer multiple of the canvas
    cells = []
    for c in channels:
        index = int(c.get("index", 0))
        stem = f"{folder}/ch{index:03d}"
        panels = []
        for kind, ext, what in (("video", "gif", "optimal video"), ("texture", "png", "texture"), ("flow", "gif", "mean flow")):
            artifact = f"{stem}_{kind}.{ext}"
            if artifact in assets.by_name:
                panels.append(f'<span class="panel">{assets.img(artifact, alt=f"{layer} channel {index} {what}", cls="px")}<span class="panel-label">{what}</span></span>')
        if not panels:
            continue
        if c.get("dead"):
            caption = f'channel {index} · <span class="bad">dead</span>'
        elif c.get("direction_deg") is not None:
            caption = f"channel {index} · {escape(compass(float(c['direction_deg'])))} {fmt(c['direction_deg'], 3)}° · {fmt(c.get('speed_px_per_frame'), 2)} px/frame"
        else:
            caption = f"channel {index} · no significant motion"
        cells.append(f'<figure class="cell" id="{escape(assets.prefix)}kv-{escape(_path_component(layer))}-{index}"><div class="panels">{"".join(panels)}</div><figcaption>{caption}</figcaption></figure>')
    if not cells:
        return '<p class="no-plot">No per-channel pictures were written for this layer.</p>'
    legend = (
        f'<figure class="legend-wheel">{charts.direction_wheel()}<figcaption>Mean flow: hue = direction of motion, '
        "brightness = speed (black = still, full colour = the layer's fastest).</figcaption></figure>"
    )
    sheet = f"{folder}/contact_sheet.png"
    png = ""
    if sheet in assets.by_name:
        png = f'<details class="more"><summary>The same as one PNG (as the worker wrote it)</summary>{assets.img(sheet, alt=f"{layer} contact sheet", cls="sheet")}</details>'
    return f'<h4>Contact sheet</h4><div class="sheet-wrap"><div class="sheet-grid" style="--px:{size}px">{"".join(cells)}</div>{legend}</div>{png}'


def _path_component(name: str) -> str:
    """A layer name as the workers write it into artifact paths (one path component)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


_RENDERERS["kernel_viz"] = _kernel_viz


def _tconv_stats(outcome: "TaskOutcome", assets: _Assets) -> str:
    s = outcome.summary or {}
    layers = s.get("layers", [])
    model = s.get("model", {})
    share = model.get("explainable_share") or {}
    out = _kv(
        [
            ("layers analysed", model.get("layers")),
            ("3TConv layers / fitted Conv3d layers", f"{model.get('tconv_layers', 0)} / {model.get('fitted_layers', 0)}"),
            ("filters in the statistics", model.get("filters_included")),
            ("near-identity share", model.get("near_identity_share")),
            ("dominant direction (°, 0 = right, 90 = down)", model.get("dominant_direction_deg")),
            ("share in the dominant direction", model.get("dominant_direction_share")),
            ("3T-explainable share: plain / with gains", f"{fmt(share.get('plain'))} / {fmt(share.get('gain'))}" if share else None),
            ("residual threshold", (s.get("options") or {}).get("residual_threshold")),
            ("translation units (pooled)", model.get("translation_units")),
        ]
    )
    for note in s.get("notes") or []:
        out += f'<p class="muted">Note: {escape(str(note))}</p>'
    threshold = (s.get("options") or {}).get("residual_threshold")
    moving = any(layer.get("filters_included") for layer in layers)
    rows = []
    for layer in layers:
        dep = layer.get("departure_from_identity") or {}
        residual = layer.get("residual") or {}
        explained = layer.get("explainable_share") or {}
        row: list[Any] = [
            layer.get("name"),
            layer.get("kind"),
            layer.get("filters"),
            layer.get("filters_included"),
            (residual.get("plain") or {}).get("min"),
            (residual.get("plain") or {}).get("mean"),
            (residual.get("gain") or {}).get("mean"),
            explained.get("plain"),
            explained.get("gain"),
            layer.get("zero_filters"),
        ]
        if moving:
            row += [layer.get("near_identity_share"), (dep.get("abs_one_minus_inv_scale") or {}).get("mean"), (dep.get("abs_rotation_deg") or {}).get("mean"), layer.get("dominant_direction_deg")]
        rows.append(row)
    headers = ["layer", "kind", "filters", "in statistics", "best residual (plain)", "mean residual (plain)", "mean residual (gains)", "explainable (plain)", "explainable (gains)", "zero filters"]
    if moving:
        headers += ["near identity", "mean |1−1/s|", "mean |rotation| °", "dominant direction °"]
    out += "<h3>Layers</h3>" + table(headers, rows, notes=_TCONV_NOTES)
    if not moving:
        out += (
            f'<p class="no-plot">No filter is in the statistics (for fitted Conv3d layers: none has a plain 3T residual below {fmt(threshold)}), '
            "so there is no scale, rotation or translation to plot; the residuals above say how far each layer is from 3T.</p>"
        )
    if model.get("stats") and model.get("filters_included"):
        out += "<h3>All layers pooled</h3>" + _summary_table(model["stats"])
        out += _grid([_figure(_direction_chart(model.get("direction_histogram"), "Net displacement direction, all layers"))])
    for layer in layers:
        name = str(layer.get("name") or "(root)")
        out += f"<h3>Layer {escape(name)} <span class=\"pill\">{escape(str(layer.get('kind', '')))}</span></h3>"
        out += _kv([("kernel", "×".join(str(k) for k in layer.get("kernel_shape", []))), ("stride (model px per layer px)", layer.get("stride_px_model")), ("filters in the statistics", layer.get("filters_included"))])
        for verdict in _tconv_layer_verdict(layer, threshold):
            out += f'<p class="verdict-line">{escape(verdict)}</p>'
        figures = []
        for path in layer.get("artifacts", []):
            if assets.is_image(path):
                kind = PurePosixPath(path).stem.rsplit("_", 1)[-1]
                caption = {"histograms": "Distributions of 1/s, rotation and translation", "joint": "Translation per step (x, y)", "trajectories": "Cumulative trajectories of the most-moving filters", "residuals": "Residual distribution of the 3T fits (plain vs gains)"}.get(kind, kind)
                figures.append(_figure(assets.img(path, alt=f"{name} {caption}", cls="wide" if kind == "histograms" else "figure"), caption))
        if layer.get("filters_included"):
            figures.append(_figure(_direction_chart(layer.get("direction_histogram"), f"{name}: displacement direction")))
        elif layer.get("analysed") is not False:
            figures.append('<p class="no-plot">No filter of this layer is in the statistics, so no motion figures: only the residuals are shown.</p>')
        out += _grid(figures)
        if layer.get("stats") and layer.get("filters_included"):
            out += "<details class=\"more\"><summary>Distributions (table)</summary>" + _summary_table(layer["stats"]) + "</details>"
        trajectories = layer.get("trajectories") or []
        if trajectories:
            rows = [
                (
                    t.get("filter"),
                    t.get("path_length_px_layer"),
                    (t.get("displacement_px_layer") or [None, None])[0],
                    (t.get("displacement_px_layer") or [None, None])[1],
                    t.get("direction_deg"),
                    (t.get("cumulative_inv_scale") or [None])[-1],
                    (t.get("cumulative_rotation_deg") or [None])[-1],
                )
                for t in trajectories
            ]
            out += "<h4>Most-moving filters</h4>" + table(("filter", "path length px", "net dx px", "net dy px", "direction °", "cumulative 1/s", "cumulative rotation °"), rows)
    return out


_TCONV_NOTES = {
    "in statistics": "Filters the motion statistics cover: every filter of a 3TConv layer; for a fitted Conv3d, those whose plain 3T fit has a residual below the threshold.",
    "best residual (plain)": "Smallest relative residual ||W_fit − W|| / ||W|| of the layer's plain 3T fits (0 = exactly one 2D kernel scaled, rotated and shifted over time).",
    "mean residual (plain)": "Mean of those residuals.",
    "mean residual (gains)": "Mean residual when each time slice may also be scaled by its own gain.",
    "explainable (plain)": "Share of the fitted filters whose plain residual is below the threshold.",
    "explainable (gains)": "The same with per-slice gains.",
    "zero filters": "All-zero filters (dead): nothing to fit.",
}


def _tconv_layer_verdict(layer: dict[str, Any], threshold: Any) -> list[str]:
    if layer.get("analysed") is False:
        return [f"Not analysed: {layer.get('note', layer.get('kind'))}."]
    if layer.get("kind") != "Conv3d-fit":
        return []
    plain = (layer.get("residual") or {}).get("plain") or {}
    count = int(plain.get("count") or 0)
    explained = round(((layer.get("explainable_share") or {}).get("plain") or 0.0) * count)
    return [f"{explained} of {count} fitted filters 3T-explainable; best residual {fmt(plain.get('min'), 2)}, threshold {fmt(threshold)}."]


def _summary_table(stats: dict[str, Any]) -> str:
    """Rows of SUMMARY blocks ({count, mean, std, min, q05, ..., max}), nested translation blocks flattened."""
    rows = []
    for name, block in stats.items():
        if not isinstance(block, dict):
            continue
        parts = [(name, block)] if "count" in block else [(f"{name}.{axis}", sub) for axis, sub in block.items() if isinstance(sub, dict)]
        for label, b in parts:
            rows.append((label, b.get("count"), b.get("mean"), b.get("std"), b.get("min"), b.get("q05"), b.get("median"), b.get("q95"), b.get("max")))
    return table(("quantity", "count", "mean", "std", "min", "q05", "median", "q95", "max"), rows)


def _direction_chart(histogram: Any, title: str) -> str:
    if not histogram or not any(v for v in histogram if v):
        return charts.empty(title, "no filter in the statistics (none below the residual threshold?)")
    labels = [f"{30 * i}°" for i in range(len(histogram))]
    return charts.bars(labels, {"share": list(histogram)}, title=title, ylabel="share of filters", lo=0.0)


_RENDERERS["tconv_stats"] = _tconv_stats


_CSS = """
:root{--fg:#1d232b;--muted:#66707c;--line:#dde2e8;--bg:#fff;--accent:#3b6fb6;--bad:#b3261e;--ok:#2e7d4f}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg);margin:0}
header{padding:16px 28px;border-bottom:1px solid var(--line);background:#f7f9fb}h1{margin:0 0 4px;font-size:22px}
nav ul{list-style:none;padding:0;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:6px 14px}nav a{color:var(--accent);text-decoration:none}
main{padding:8px 28px 40px;max-width:1500px}section{border-bottom:1px solid var(--line);padding:8px 0 18px}
h2{font-size:19px;margin:18px 0 8px}h3{font-size:16px;margin:16px 0 6px}h4{font-size:14px;margin:12px 0 4px}
.muted{color:var(--muted)}.small{font-size:12px;margin:2px 0}.error{color:var(--bad);background:#fdf0ef;padding:6px 10px;border-radius:4px}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}.missing{color:var(--muted);font-style:italic;font-size:12px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
table.kv th{color:var(--muted);font-weight:500;padding-right:16px}td.num{text-align:right;font-variant-numeric:tabular-nums}
.table-wrap{overflow-x:auto}table.data thead th{background:#f1f4f7}table.compact td,table.compact th{padding:2px 6px}
table.sortable th{cursor:pointer;user-select:none}table.sortable th[aria-sort=ascending]::after{content:" ▲"}table.sortable th[aria-sort=descending]::after{content:" ▼"}
.figures{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}figure.fig{margin:4px 0}figcaption{font-size:12px;color:var(--muted);max-width:420px}
img{image-rendering:pixelated;max-width:100%}img.thumb{width:80px;height:80px;object-fit:contain;background:#eee}img.sheet{max-width:900px;width:auto}
img.figure{max-width:620px}img.wide{max-width:100%}img.broken{outline:3px solid var(--bad)}details.more{margin:8px 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:420px;font-size:12px}
svg.chart{background:#fff;border:1px solid var(--line);border-radius:4px}.chart-title{font:600 12px system-ui,sans-serif}
svg.chart text{stroke:none}.chart-label{font:11px system-ui,sans-serif;fill:#444}.chart-tick{font:10px system-ui,sans-serif;fill:#444}
line.axis{stroke:#888}line.gridline{stroke:#e6e6e6}.pill{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;background:#eef2f7}
th.explained{text-decoration:underline dotted;cursor:help}dl.legend{font-size:12px;color:var(--muted);margin:4px 0 10px;max-width:980px;display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}
dl.legend dt{font-weight:600;color:var(--fg)}dl.legend dd{margin:0}
ul.verdicts{list-style:none;padding:0;margin:6px 0}li.verdict{padding:5px 10px;margin:4px 0;border-left:4px solid var(--ok);background:#f3f8f5;font-size:15px}
li.verdict.note{border-color:#c9a227;background:#fbf8ec}li.verdict.bad{border-color:var(--bad);background:#fdf0ef}li.verdict.ok,li.verdict.bad{color:var(--fg);font-weight:400}li.verdict .mark{font-weight:700}
.warn{background:#fff6dd;border-left:4px solid #c9a227;padding:6px 10px;border-radius:4px}.no-plot{color:var(--muted);font-style:italic;margin:6px 0}
p.verdict-line{font-weight:500;margin:4px 0}code{background:#f1f4f7;padding:0 3px;border-radius:3px;font-size:12px}
.sheet-wrap{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.sheet-grid{display:flex;flex-wrap:wrap;gap:10px;flex:1 1 600px}
figure.cell{margin:0;padding:6px;border:1px solid var(--line);border-radius:4px;background:#fafbfc}figure.cell .panels{display:flex;gap:4px}
.panel{display:flex;flex-direction:column;align-items:center}.panel-label{font-size:10px;color:var(--muted)}
img.px{width:var(--px);height:var(--px);object-fit:contain;image-rendering:pixelated;background:#222}
figure.cell figcaption{font-size:12px;color:var(--fg);max-width:calc(3 * var(--px) + 8px);margin-top:3px;line-height:1.3}
figure.legend-wheel{margin:0}figure.legend-wheel figcaption{max-width:230px}
.gate-banner{padding:14px 18px;border-radius:6px;font-size:18px;margin:12px 0}.gate-banner.pass{background:#e7f4ec;border:2px solid var(--ok)}
.gate-banner.fail{background:#fdf0ef;border:2px solid var(--bad)}.gate-banner.warn{background:#fff6dd;border:2px solid #c9a227}
.gate-banner strong{font-size:22px}.models{display:flex;flex-wrap:wrap;gap:16px}.models>div{border:1px solid var(--line);border-radius:6px;padding:8px 12px;flex:1 1 420px;min-width:0}.models td{word-break:break-all}
.models h3{margin:2px 0 6px}td.status-pass{color:var(--ok);font-weight:700}td.status-fail,td.status-error{color:var(--bad);font-weight:700}
td.status-warn{color:#9a7a00;font-weight:700}td.status-skip{color:var(--muted)}pre.policy{max-height:none;margin:0;font-size:11px;white-space:pre-wrap}
@media print{header nav{display:none}main{max-width:none;padding:0 8mm}.table-wrap{overflow:visible}table{page-break-inside:auto}tr{page-break-inside:avoid}
details.more>summary{display:none}details.more{display:block}img.thumb{width:48px;height:48px}section{page-break-before:auto}body{font-size:11px}}
"""

# Scoped to the result's <div>: a notebook page has its own styles, which this must not touch.
_NOTEBOOK_CSS = (
    ".kernelscope-result ul.verdicts{list-style:none;padding:0}"
    ".kernelscope-result li.verdict{padding:4px 8px;margin:3px 0;border-left:4px solid #2e7d4f}"
    ".kernelscope-result li.verdict.note{border-color:#c9a227}.kernelscope-result li.verdict.bad{border-color:#b3261e}"
    ".kernelscope-result .warn{border-left:4px solid #c9a227;padding:4px 8px}.kernelscope-result .bad,.kernelscope-result .error{color:#b3261e}"
    ".kernelscope-result .ok{color:#2e7d4f}.kernelscope-result td.num{text-align:right}.kernelscope-result .muted{opacity:.7}"
)

_JS = r"""
(function(){
  function key(td){var s=td.getAttribute('data-sort');if(s!==null&&s!==''){var n=parseFloat(s);if(!isNaN(n))return [0,n];}
    if(s==='')return [2,0];return [1,td.textContent.trim().toLowerCase()];}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('thead th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var asc=th.getAttribute('aria-sort')!=='ascending';
        table.querySelectorAll('thead th').forEach(function(o){o.removeAttribute('aria-sort');});
        th.setAttribute('aria-sort',asc?'ascending':'descending');
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
          if(x[0]!==y[0])return x[0]-y[0];if(x[1]<y[1])return asc?-1:1;if(x[1]>y[1])return asc?1:-1;return 0;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  function check(){
    var imgs=Array.prototype.slice.call(document.images);
    var broken=imgs.filter(function(i){return !i.complete||i.naturalWidth===0;});
    broken.forEach(function(i){i.classList.add('broken');});
    document.body.setAttribute('data-images',String(imgs.length));
    document.body.setAttribute('data-broken-images',String(broken.length));
    document.body.setAttribute('data-broken-list',broken.map(function(i){return i.getAttribute('title')||i.alt;}).join('|'));
    document.body.setAttribute('data-images-checked','true');
  }
  window.addEventListener('beforeprint',function(){document.querySelectorAll('details').forEach(function(d){d.open=true;});});
  if(document.readyState==='complete'){check();}else{window.addEventListener('load',check);}
})();
"""
