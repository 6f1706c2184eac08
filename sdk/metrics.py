"""The catalogue of named metrics a gate can check, each read (or computed) from one task's summary.

    metrics.names()                                  # "kernel_viz.dead_kernels", ...
    metrics.value("kernel_viz.dead_kernels", summary)       # whole model
    metrics.value("kernel_viz.dead_kernels", summary, "conv1")  # one layer (per_layer metrics)

Names are "<task>.<metric>". `better` says which way is good ("lower", "higher"; None when neither,
so no baseline regression can be judged). A value is a float, or None when the summary does not
hold what the metric needs (the gate reports that as "could not run", never as a pass).
Summaries are plain dicts as the workers document them in their task modules' docstrings.
Each task's metrics are defined in its plugin (sdk/plugins/<task>.py); this module holds the Metric
type and the catalogue gathered from every plugin.

A paired metric (Metric.paired) compares the model with a baseline filter by filter, so what it
bounds is already relative to the baseline: `metrics.compare(name, summary, baseline_summary)`.
The direction agreements are such metrics: a model whose kernels were time-reversed keeps every
magnitude (and, on static content, its accuracy) but moves the other way, which only a comparison
filter by filter can see.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from sdk.result import Result

Summary = dict[str, Any]
Extractor = Callable[[Summary, "str | None"], "float | None"]
Comparer = Callable[[Summary, Summary, "str | None"], "float | None"]


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    better: str | None
    extract: Extractor
    per_layer: bool = False
    layers: Callable[[Summary], list[str]] | None = None
    compare: Comparer | None = None

    @property
    def task(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def paired(self) -> bool:
        """True when the value needs a baseline's summary too (see compare_value)."""
        return self.compare is not None

    def value(self, summary: Summary | None, layer: str | None = None) -> float | None:
        if summary is None or self.compare is not None:
            return None
        return _number(self.extract, summary, layer)

    def compare_value(self, summary: Summary | None, baseline: Summary | None, layer: str | None = None) -> float | None:
        """A paired metric's value for `summary` against `baseline` (None when either lacks what it needs)."""
        if summary is None or baseline is None or self.compare is None:
            return None
        compare = self.compare
        return _number(lambda s, l: compare(s, baseline, l), summary, layer)

    def why_absent(self, layer: str | None = None) -> str:
        where = f" for layer {layer!r}" if layer else ""
        return f"the summary holds no {self.description.rstrip('.').lower()}{where} (was the layer analysed? did the task get the options it needs?)"


def _number(read: Extractor, summary: Summary, layer: str | None) -> float | None:
    try:
        raw = read(summary, layer)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None
    if raw is None:
        return None
    value = float(raw)
    return value if not math.isnan(value) else None


def metric(
    into: list[Metric], name: str, description: str, better: str | None, per_layer: bool = False, layers: Callable[[Summary], list[str]] | None = None
) -> Callable[[Extractor], Extractor]:
    """A decorator that appends the extractor it wraps to `into` (a plugin's metric list) as the metric `name`."""

    def register(fn: Extractor) -> Extractor:
        into.append(Metric(name, description, better, fn, per_layer, layers))
        return fn

    return register


def paired_metric(into: list[Metric], name: str, description: str, better: str | None, layers: Callable[[Summary], list[str]]) -> Callable[[Comparer], Comparer]:
    """As `metric`, for a metric read from the model's summary and a baseline's together (Metric.paired)."""

    def register(fn: Comparer) -> Comparer:
        into.append(Metric(name, description, better, lambda _s, _l: None, True, layers, fn))
        return fn

    return register


@functools.cache
def _catalogue() -> dict[str, Metric]:
    """Every plugin's metrics by name, gathered on first use (the plugins import this module for Metric)."""
    from sdk import plugins

    return {m.name: m for plugin in plugins.all() for m in plugin.metrics}


def names(task: str | None = None) -> list[str]:
    return [n for n, m in _catalogue().items() if task is None or m.task == task]


def find(name: str) -> Metric | None:
    return _catalogue().get(name)


def get(name: str) -> Metric:
    metric = _catalogue().get(name)
    if metric is None:
        raise KeyError(f"unknown metric {name!r}. {listing()}")
    return metric


def listing() -> str:
    """The valid names, one line per task, for error messages."""
    tasks: dict[str, list[str]] = {}
    for metric in _catalogue().values():
        tasks.setdefault(metric.task, []).append(metric.name + (" (per layer)" if metric.per_layer else ""))
    return "Valid metrics: " + "; ".join(", ".join(v) for v in tasks.values())


def key(name: str, layer: str | None = None) -> str:
    """How a metric value is named in reports: "task.metric" or "task.metric[layer]"."""
    return f"{name}[{layer}]" if layer else name


def value(name: str, summary: Summary | None, layer: str | None = None) -> float | None:
    return get(name).value(summary, layer)


def compare(name: str, summary: Summary | None, baseline: Summary | None, layer: str | None = None) -> float | None:
    return get(name).compare_value(summary, baseline, layer)


def extract_all(result: "Result | None", per_layer: bool = True, baseline: "Result | None" = None) -> dict[str, dict[str, float | None]]:
    """Every catalogue metric of every task that succeeded: task → key → value (per layer too, unless per_layer=False).

    Paired metrics appear only with a `baseline` (compared with the baseline's summary of the same task).
    """
    out: dict[str, dict[str, float | None]] = {}
    if result is None:
        return out
    base = {t.task: t.summary for t in baseline.tasks if t.summary is not None and not t.error} if baseline is not None else {}
    for outcome in result.tasks:
        if outcome.summary is None or outcome.error:
            continue
        values: dict[str, float | None] = {}
        for metric in _catalogue().values():
            if metric.task != outcome.task or (metric.paired and baseline is None):
                continue

            def read(layer: str | None, metric: Metric = metric) -> float | None:
                if metric.paired:
                    return metric.compare_value(outcome.summary, base.get(outcome.task), layer)
                return metric.value(outcome.summary, layer)

            values[metric.name] = read(None)
            if per_layer and metric.per_layer and metric.layers:
                try:
                    layer_names = metric.layers(outcome.summary)
                except (KeyError, TypeError):
                    layer_names = []
                for layer in layer_names:
                    values[key(metric.name, layer)] = read(layer)
        out[outcome.task] = values
    return out


def catalogue() -> list[Metric]:
    return list(_catalogue().values())
