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

from sdk import charts, metrics
from sdk.result import artifact_path

if TYPE_CHECKING:
    from kernelscope.v1 import models_pb2
    from sdk.result import Result, TaskOutcome

IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
TASK_TITLES = {
    "kernel_viz": "Texture and motion of 3D kernels (kernel_viz)",
    "tconv_stats": "Temporal transformations (tconv_stats)",
    "class_filters": "Class-specific filter subsets (class_filters)",
    "describe": "Layer inventory (describe)",
}


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

    def add_job(self, result: "Result", description: Any, prefix: str) -> None:
        assets = _Assets(result, self.path, self.embed)
        self.jobs.append(result.id)
        state = _state_name(result)
        self.sections.append(_Section(f"{prefix}job", f"Job {result.id}", _job_overview(result, state), "job"))
        self.sections.append(_Section(f"{prefix}model", "Model", _model_section(result, description), "model"))
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
            self.sections.append(_Section(f"{prefix}task-{outcome.task}", TASK_TITLES.get(outcome.task, outcome.task), body, outcome.task))
        self.sections.append(_Section(f"{prefix}artifacts", "Artifacts", _artifact_table(result, assets), "artifacts"))

    def render(self) -> str:
        nav = "".join(f'<li><a href="#{s.id}">{escape(s.title)}</a></li>' for s in self.sections)
        body = "".join(
            f'<section id="{s.id}" class="report-section" data-section="{escape(s.kind)}"><h2>{escape(s.title)}</h2>{s.body}</section>'
            for s in self.sections
        )
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        title = f"kernelscope report — {', '.join(self.jobs)}"
        return (
            "<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data: \'self\'; style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
            f'<body data-images-checked="false"><header><h1>kernelscope report</h1><p class="muted">{escape(", ".join(self.jobs))} · written {stamp}</p>'
            f"<nav><ul>{nav}</ul></nav></header><main>{body}</main><script>{_JS}</script></body></html>\n"
        )


class _Assets:
    """Artifact bytes of one job as image sources: data: URIs, or files beside the page."""

    def __init__(self, result: "Result", page: Path, embed: bool) -> None:
        self.result = result
        self.page = page
        self.embed = embed
        self.by_name = {a.name: a for a in result.artifacts}
        self.used: set[str] = set()
        self.failed: dict[str, str] = {}

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
        beside = self.page.parent / f"{self.page.stem}_files" / self.result.id / relative
        beside.parent.mkdir(parents=True, exist_ok=True)
        beside.write_bytes(data)
        return beside.relative_to(self.page.parent).as_posix()

    def img(self, name: str | None, alt: str = "", cls: str = "") -> str:
        """An <img> of artifact `name`, or a note saying why there is none."""
        if not name:
            return '<span class="missing">—</span>'
        src = self.src(name)
        if src is None:
            why = self.failed.get(name, "not among the job's artifacts")
            return f'<span class="missing" title="{escape(why)}">{escape(PurePosixPath(name).name)} unavailable</span>'
        return f'<img src="{escape(src)}" alt="{escape(alt or name)}" title="{escape(name)}" class="{cls}">'


# ---------------------------------------------------------------------- generic pieces
class Html(str):
    """Markup that table cells insert as-is (everything else is escaped)."""


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, sortable: bool = True, cls: str = "") -> str:
    """An HTML table; numbers are right-aligned, formatted, and sort numerically (data-sort)."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
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
    return f'{hint}<div class="table-wrap"><table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


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


def _job_overview(result: "Result", state: str) -> str:
    job = result.job
    times = {}
    for key in ("create_time", "start_time", "end_time"):
        stamp = getattr(job, key)
        if stamp.seconds:
            times[key] = _dt.datetime.fromtimestamp(stamp.seconds, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    pairs = [("job", job.id), ("state", state), ("model", job.model_id), ("dataset", job.dataset_id or None), ("worker", job.worker or None)]
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


def _headline_metrics(result: "Result") -> list[tuple[Any, ...]]:
    values = metrics.extract_all(result, per_layer=False)
    return [(name, value, metrics.get(name).description) for task in values for name, value in values[task].items()]


def _model_section(result: "Result", description: Any) -> str:
    if isinstance(description, str):
        return f'<p class="muted">Layer inventory unavailable: {escape(description)}</p>'
    spec = description.input_spec
    pairs = [
        ("model", description.model_id or result.job.model_id),
        ("input shape", " × ".join(str(int(s)) for s in spec.shape) or None),
        ("value range", f"[{spec.value_min:g}, {spec.value_max:g}]" if (spec.value_min or spec.value_max) else "[0, 1] (default)"),
        ("mean", ", ".join(f"{m:g}" for m in spec.mean) or None),
        ("std", ", ".join(f"{s:g}" for s in spec.std) or None),
        ("tasks it supports", ", ".join(description.supported_tasks) or None),
        ("layers", len(description.layers)),
        ("parameters", sum(int(layer.parameters) for layer in description.layers)),
    ]
    dims = lambda v: "×".join(str(int(x)) for x in v) or "—"  # noqa: E731
    rows = [
        (i, layer.name, layer.kind, dims(layer.kernel_shape), dims(layer.stride), dims(layer.receptive_field), dims(layer.output_shape), int(layer.parameters))
        for i, layer in enumerate(description.layers)
    ]
    return _kv(pairs) + table(("#", "layer", "kind", "kernel", "stride", "receptive field", "output", "parameters"), rows)


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


def _artifact_table(result: "Result", assets: _Assets) -> str:
    rows = [(a.task, a.name, a.media_type, a.size_bytes, a.sha256[:12]) for a in result.artifacts]
    out = table(("task", "name", "type", "bytes", "sha256"), rows) if rows else '<p class="muted">No artifacts.</p>'
    if assets.failed:
        out += '<p class="error">Could not fetch: ' + escape("; ".join(f"{n} ({why})" for n, why in assets.failed.items())) + "</p>"
    return out


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
            ("mean overlap between classes", g.get("mean_overlap")),
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
    )
    return out


_RENDERERS["class_filters"] = _class_filters


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
        sheet = f"{folder}/contact_sheet.png"
        if sheet in assets.by_name:
            out += _figure(assets.img(sheet, alt=f"{name} contact sheet", cls="wide sheet"), "Contact sheet: per channel the middle frame of the optimal video, the texture and the mean flow (HSV: hue = direction, brightness = speed).")
        sectors = [0.0] * 12
        for c in live:
            if c.get("direction_deg") is not None:
                sectors[int(((float(c["direction_deg"]) + 15.0) % 360.0) // 30.0)] += 1.0
        figures = [
            _figure(charts.bars([f"{30 * i}°" for i in range(12)], {"channels": sectors}, title=f"{name}: dominant motion direction (live channels)", ylabel="channels", lo=0.0)),
            _figure(charts.histogram([c.get("speed_px_per_frame") for c in live], bins=12, title=f"{name}: speed", xlabel="px / frame", ylabel="channels")),
            _figure(charts.histogram([c.get("motion_dependence") for c in live], bins=12, title=f"{name}: motion dependence", xlabel="1 − act(static) / act(optimal)", ylabel="channels")),
            _figure(charts.histogram([c.get("direction_selectivity") for c in live], bins=12, title=f"{name}: direction selectivity", xlabel="(R − R reversed) / (|R| + |R reversed|)", ylabel="channels")),
            _figure(charts.histogram([c.get("ratio") for c in live], bins=12, title=f"{name}: activation vs random input", xlabel="activation / |random activation|", ylabel="channels")),
        ]
        out += _grid(figures)
        rows = []
        for c in channels:
            stem = f"{folder}/ch{int(c.get('index', 0)):03d}"
            pictures = [assets.img(f"{stem}_{kind}.{ext}", alt=f"{name} channel {c.get('index')} {kind}", cls="thumb") if f"{stem}_{kind}.{ext}" in assets.by_name else '<span class="missing">—</span>' for kind, ext in (("texture", "png"), ("flow", "gif"), ("video", "gif"))]
            rows.append(
                (
                    c.get("index"),
                    Html(pictures[0]),
                    Html(pictures[1]),
                    Html(pictures[2]),
                    c.get("direction_deg"),
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
            )
        out += "<h4>Channels</h4>" + table(
            ("channel", "texture", "flow", "optimal video", "direction °", "speed px/frame", "direction selectivity", "motion dependence", "order dependence", "flow coherence", "reconstruction error", "activation", "random input", "ratio", "dead"),
            rows,
        )
    return out


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
    rows = []
    for layer in layers:
        dep = layer.get("departure_from_identity") or {}
        residual = layer.get("residual") or {}
        explained = layer.get("explainable_share") or {}
        rows.append(
            (
                layer.get("name"),
                layer.get("kind"),
                layer.get("filters"),
                layer.get("filters_included"),
                (residual.get("plain") or {}).get("mean"),
                (residual.get("gain") or {}).get("mean"),
                explained.get("plain"),
                explained.get("gain"),
                layer.get("zero_filters"),
                layer.get("near_identity_share"),
                (dep.get("abs_one_minus_inv_scale") or {}).get("mean"),
                (dep.get("abs_rotation_deg") or {}).get("mean"),
                layer.get("dominant_direction_deg"),
            )
        )
    out += "<h3>Layers</h3>" + table(
        ("layer", "kind", "filters", "in statistics", "mean residual (plain)", "mean residual (gains)", "explainable (plain)", "explainable (gains)", "zero filters", "near identity", "mean |1−1/s|", "mean |rotation| °", "dominant direction °"),
        rows,
    )
    if model.get("stats"):
        out += "<h3>All layers pooled</h3>" + _summary_table(model["stats"])
        out += _grid([_figure(_direction_chart(model.get("direction_histogram"), "Net displacement direction, all layers"))])
    for layer in layers:
        name = str(layer.get("name") or "(root)")
        out += f"<h3>Layer {escape(name)} <span class=\"pill\">{escape(str(layer.get('kind', '')))}</span></h3>"
        out += _kv([("kernel", "×".join(str(k) for k in layer.get("kernel_shape", []))), ("stride (model px per layer px)", layer.get("stride_px_model")), ("filters in the statistics", layer.get("filters_included"))])
        figures = []
        for path in layer.get("artifacts", []):
            if assets.is_image(path):
                kind = PurePosixPath(path).stem.rsplit("_", 1)[-1]
                caption = {"histograms": "Distributions of 1/s, rotation and translation", "joint": "Translation per step (x, y)", "trajectories": "Cumulative trajectories of the most-moving filters", "residuals": "Residual distribution of the 3T fits (plain vs gains)"}.get(kind, kind)
                figures.append(_figure(assets.img(path, alt=f"{name} {caption}", cls="wide" if kind == "histograms" else "figure"), caption))
        figures.append(_figure(_direction_chart(layer.get("direction_histogram"), f"{name}: displacement direction")))
        out += _grid(figures)
        if layer.get("stats"):
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
.table-wrap{overflow-x:auto;max-height:720px;overflow-y:auto}table.data thead th{position:sticky;top:0;background:#f1f4f7}
table.sortable th{cursor:pointer;user-select:none}table.sortable th[aria-sort=ascending]::after{content:" ▲"}table.sortable th[aria-sort=descending]::after{content:" ▼"}
.figures{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}figure.fig{margin:4px 0}figcaption{font-size:12px;color:var(--muted);max-width:420px}
img{image-rendering:pixelated;max-width:100%}img.thumb{width:80px;height:80px;object-fit:contain;background:#eee}img.sheet{max-width:900px;width:auto}
img.figure{max-width:620px}img.wide{max-width:100%}img.broken{outline:3px solid var(--bad)}details.more{margin:8px 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:420px;font-size:12px}
svg.chart{background:#fff;border:1px solid var(--line);border-radius:4px}.chart-title{font:600 12px system-ui,sans-serif}
svg.chart text{stroke:none}.chart-label{font:11px system-ui,sans-serif;fill:#444}.chart-tick{font:10px system-ui,sans-serif;fill:#444}
line.axis{stroke:#888}line.gridline{stroke:#e6e6e6}.pill{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;background:#eef2f7}
"""

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
  if(document.readyState==='complete'){check();}else{window.addEventListener('load',check);}
})();
"""
