"""A gate's policy: the TOML file of checks on named metrics, parsed and validated before any job runs.

    policy = Policy.load("gate.toml")               # PolicyError for anything malformed (exit 2)

Why strict: a check that names a misspelled metric or an impossible bound would pass silently; every mistake is a
PolicyError whose message says how to fix it (and lists the valid metrics). examples/gate.toml documents every key.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from sdk import metrics
from sdk.errors import KernelscopeError
from sdk.gate.numbers import fmt
from sdk.tasks import TASK_NAMES

POLICY_VERSION = 1
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
                parts.append(text.format(fmt(getattr(self, key))))
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
            raise PolicyError(f"{where}: {warn} {fmt(bounds[warn])} lies beyond {hard} {fmt(bounds[hard])}; a warning comes before a failure")
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
