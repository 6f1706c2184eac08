"""Every zoo model exported the ways PyTorch users export today, for the loader and the analyses to face.

- "onnx_dynamo": `torch.onnx.export(..., dynamo=True)` with its defaults, as a user calls it: the weights go
  to an external-data side file `<name>.onnx.data` next to the graph; dynamic batch axis.
- "onnx_legacy": the TorchScript-based exporter (`dynamo=False`), weights inline, dynamic batch axis.
- "pt2_dynamic": `torch.export` with a symbolic batch dimension, saved with `torch.export.save`.
- "pt2_batch1": `torch.export` traced at batch 1 with no dynamic shapes (every size fixed).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.samples.models import export_pt2
from workers.samples.zoo import build, example

FORMATS = ("onnx_dynamo", "onnx_legacy", "pt2_dynamic", "pt2_batch1")
LEGACY_OPSET = 17  # the legacy exporter's best-tested opset; the dynamo exporter picks its own (18+)


@dataclass(frozen=True)
class Export:
    """One exported file; `files` lists it and every side file a user would have to upload with it."""

    name: str
    format: str
    path: Path
    files: tuple[Path, ...]
    seconds: float


def export_onnx_dynamo(model: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor) -> None:
    """PyTorch's default exporter with its default external data (`path` + ".data"), batch axis dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (_batch2(example_input),), os.fspath(path), dynamo=True, input_names=["x"], output_names=["logits"],
            dynamic_shapes=({0: batch},), verbose=False,
        )


def export_onnx_legacy(model: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor) -> None:
    """The TorchScript-based exporter, weights inline, batch axis dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (example_input,), os.fspath(path), dynamo=False, opset_version=LEGACY_OPSET,
            input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )


def export_model(model: nn.Module, fmt: str, path: str | os.PathLike[str], example_input: torch.Tensor) -> tuple[Path, ...]:
    """Write `model` to `path` in `fmt` (one of FORMATS); returns the files written (graph first)."""
    path = Path(path)
    if fmt == "onnx_dynamo":
        export_onnx_dynamo(model, path, example_input)
    elif fmt == "onnx_legacy":
        export_onnx_legacy(model, path, example_input)
    elif fmt == "pt2_dynamic":
        export_pt2(model, path, _batch2(example_input), dynamic_batch=True)
    elif fmt == "pt2_batch1":
        export_pt2(model, path, example_input[:1], dynamic_batch=False)
    else:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    side = path.with_name(path.name + ".data")
    return (path, side) if side.exists() else (path,)


def export_zoo_model(name: str, fmt: str, out_dir: str | os.PathLike[str], num_classes: int | None = None, seed: int = 0) -> Export:
    """Build zoo model `name` (seeded) and export it as `fmt` under `out_dir`, timed."""
    model = build(name, seed=seed) if num_classes is None else build(name, num_classes=num_classes, seed=seed)
    suffix = ".onnx" if fmt.startswith("onnx") else ".pt2"
    path = Path(out_dir) / f"{name}.{fmt}{suffix}"
    started = time.perf_counter()
    files = export_model(model, fmt, path, example(name, 1, seed))
    return Export(name=name, format=fmt, path=path, files=files, seconds=time.perf_counter() - started)


@dataclass
class PlantedExports:
    """A planted zoo model's exports (or each format's export error) and what the analyses should find.

    Plain data only (no module), so that it crosses process boundaries: tests export in a worker process."""

    name: str
    exports: dict[str, Export] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    layers: dict[str, list[int]] = field(default_factory=dict)  # every conv and Linear module path → its weight shape
    grating_filter: int | None = None
    inflated_filters: list[int] = field(default_factory=list)
    subsets: list[list[int]] = field(default_factory=list)
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    build_seconds: float = 0.0


def export_planted(name: str, out_dir: str | os.PathLike[str], formats: tuple[str, ...] = FORMATS, seed: int = 0) -> PlantedExports:
    """Build `name` with planted answers (planted.build_planted) and export it in every format, timing each."""
    from workers.samples.zoo.planted import build_planted

    torch.set_num_threads(1)
    started = time.perf_counter()
    planted = build_planted(name, seed=seed)
    result = PlantedExports(
        name=name,
        layers={n: list(m.weight.shape) for n, m in planted.model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))},
        grating_filter=planted.grating_filter,
        inflated_filters=planted.inflated_filters,
        subsets=planted.subsets,
        x=planted.x,
        y=planted.y,
        build_seconds=time.perf_counter() - started,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        path = out / f"{name}.{fmt}{'.onnx' if fmt.startswith('onnx') else '.pt2'}"
        started = time.perf_counter()
        try:
            files = export_model(planted.model, fmt, path, example(name, 1, seed))
        except Exception as exc:  # noqa: BLE001 - an exporter failure is a result to report, not a crash
            result.errors[fmt] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            continue
        result.exports[fmt] = Export(name=name, format=fmt, path=path, files=files, seconds=time.perf_counter() - started)
    return result


def _batch2(x: torch.Tensor) -> torch.Tensor:
    """torch.export specialises sizes 0 and 1: a dynamic batch is traced at batch 2."""
    return x if x.shape[0] >= 2 else x.expand(2, *x.shape[1:]).contiguous()


__all__ = ["FORMATS", "Export", "PlantedExports", "export_model", "export_onnx_dynamo", "export_onnx_legacy", "export_planted", "export_zoo_model"]
