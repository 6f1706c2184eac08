"""The job-level sections of a report: the verdicts at a glance, the job overview, the model and its input spec.

Why apart from the page: the notebook view and the gate's page show the same pieces without the page's
task sections; each function returns HTML and asks the service nothing it cannot do without.
"""

from __future__ import annotations

import datetime as _dt
from html import escape
from typing import TYPE_CHECKING, Any

from sdk import metrics
from sdk.plugins.base import Verdict
from sdk.report.html import Html, kv, table

if TYPE_CHECKING:
    from sdk.result import Result


def job_overview(result: "Result", state: str, record: Any = None) -> str:
    """The job's facts, each task's status, and the headline (whole-model) gate metrics with what they mean."""
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
    out = kv(pairs)
    if job.error.reason or job.error.message:
        out += f'<p class="error">{escape(job.error.code)} {escape(job.error.reason)}: {escape(job.error.message)}</p>'
    out += table(("task", "status", "seconds", "artifacts"), rows, sortable=False)
    headline = _headline_metrics(result)
    if headline:
        out += "<h3>Headline metrics</h3>" + table(("metric", "value", "meaning"), headline)
    return out


def verdict_list(found: list[Verdict]) -> str:
    """The verdicts as a list marked by level, so a reader sees what went wrong before any table."""
    marks = {"ok": "✔", "note": "•", "bad": "✖"}
    items = "".join(
        f'<li class="verdict {v.level}" data-level="{v.level}" data-task="{escape(v.task)}"><span class="mark">{marks.get(v.level, "•")}</span> <strong>{escape(v.task)}</strong>: {escape(v.text)}</li>'
        for v in found
    )
    return f'<ul class="verdicts">{items}</ul>' if items else '<p class="muted">No task results.</p>'


def _headline_metrics(result: "Result") -> list[tuple[Any, ...]]:
    values = metrics.extract_all(result, per_layer=False)
    return [(name, value, metrics.get(name).description) for task in values for name, value in values[task].items()]


def model_record(result: "Result") -> Any:
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


def job_warnings(result: "Result", record: Any, fallback: Any = None) -> str:
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


def model_section(result: "Result", description: Any, record: Any = None) -> str:
    """The model's record, the input spec the job used (or a warning that it had none), and its layer inventory."""
    out = ""
    if record is not None:
        from kernelscope.v1 import models_pb2

        out += kv(
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
        out += "<h3>Input spec used</h3>" + kv(
            [
                ("input shape", " × ".join(str(int(s)) for s in (spec.shape or ([] if isinstance(description, str) else description.input_spec.shape))) or "from the model"),
                ("value range", f"[{spec.value_min:g}, {spec.value_max:g}]" if (spec.value_min or spec.value_max) else "[0, 1] (default)"),
                ("mean", ", ".join(f"{m:g}" for m in spec.mean) or "none given"),
                ("std", ", ".join(f"{s:g}" for s in spec.std) or "none given"),
            ]
        )
    out += job_warnings(result, record, spec)
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
    return out + "<h3>Layers</h3>" + kv(pairs) + table(("#", "layer", "kind", "kernel", "stride", "receptive field", "output", "parameters"), rows)


def description_for(result: "Result", given: Any) -> Any:
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


def state_name(result: "Result") -> str:
    """The job's state as the API names it (SUCCEEDED, FAILED, ...)."""
    from kernelscope.v1 import jobs_pb2

    return jobs_pb2.JobState.Name(result.job.state)

