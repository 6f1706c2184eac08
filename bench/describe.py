"""describe's time per zoo model and export format, against the per-layer gradient probe it replaced.

Every zoo model (workers.samples.zoo, reduced as in the tests) is exported in every format (dynamo ONNX with
its data file, legacy ONNX, .pt2 with a dynamic batch and at batch 1; "module" is the live nn.Module),
reaches the worker's loader as the SDK uploads it, and is described (workers.inventory.describe: kinds,
shapes and receptive fields from one traced forward pass). For one model and format (--baseline) the same
process then runs the probe describe used before: one forward pass per layer to it and one backward pass
from its centre unit, plus a forward pass for the output shapes; the ratio old / new is the result, and the
figures of both are compared (they must be the same).

--full adds the issue's case: R3D-18 at full width on 16 x 112 x 112 clips, legacy ONNX and .pt2 (with
--full-baseline, the old probe on the ONNX too: minutes). torch._dynamo is imported before timing (the
worker's parent process imports it once; the dispatch mode the trace runs under needs it).

    python bench/describe.py [--models r3d_18,x3d] [--formats onnx_legacy,pt2_dynamic] [--baseline r3d_18:onnx_legacy]
                             [--full] [--full-baseline] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernelscope.v1 import models_pb2  # noqa: E402
from sdk.model_source import prepare  # noqa: E402
from workers import inventory  # noqa: E402
from workers import layers as layer_kinds  # noqa: E402
from workers.input_spec import InputSpec  # noqa: E402
from workers.loader import load_model  # noqa: E402
from workers.model import LoadedModel  # noqa: E402
from workers.samples.zoo import ZOO, build, example, names  # noqa: E402
from workers.samples.zoo import video_resnet  # noqa: E402
from workers.samples.zoo.export import FORMATS, export_model  # noqa: E402

FULL_SHAPE = (3, 16, 112, 112)


def load(path: Path, header: dict[str, Any], name: str, device: torch.device) -> LoadedModel:
    """The export as the worker loads an SDK upload of it (format from the content; .onnx + .data as one bundle)."""
    source = prepare(path, input_spec=header)
    declared = models_pb2.ModelFormat.Name(source.format)
    if source.data is None:
        assert source.path is not None
        return load_model(source.path, declared, header, name=name, device=device)
    upload = path.with_name(path.name + ".upload")
    upload.write_bytes(source.data)
    return load_model(upload, declared, header, name=name, device=device)


def per_layer_probe(model: LoadedModel, device: torch.device) -> dict[str, tuple[list[int], list[int]]]:
    """describe's receptive fields as measured before: a forward pass for the output shapes, then per layer a forward
    pass to it (LoadedModel.forward_to) and a backward pass from its centre unit; (output shape, field) per layer."""
    module = model.require_module("describe")
    recorded = model.info.get("layer_kinds", {}) or {}
    picked = [n for n, m in module.named_modules() if n and (layer_kinds.kind(m) or recorded.get(n, "")) in layer_kinds.KINDS]
    x = inventory._probe_input(model, device)
    shapes: dict[str, list[int]] = {}

    def hook(out: Any, name: str) -> None:
        value = out[0] if isinstance(out, (tuple, list)) else out
        shapes.setdefault(name, [int(s) for s in value.shape[1:]])

    handles = [dict(module.named_modules())[n].register_forward_hook(lambda _m, _i, out, n=n: hook(out, n)) for n in picked]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    spatial = list(model.input_spec.spatial)
    found = {}
    for name in picked:
        if name not in shapes:
            continue
        if len(shapes[name]) <= 1:
            found[name] = (shapes[name], spatial)
            continue
        probe = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model.forward_to(name, probe)
            unit = out[(slice(None), slice(None)) + tuple(s // 2 for s in out.shape[2:])]
            (grad,) = torch.autograd.grad(unit.sum(), probe, allow_unused=True)
        if grad is None:
            found[name] = (shapes[name], [])
            continue
        support = grad.abs().sum(dim=(0, 1)) > 0
        extents = []
        for axis in range(support.dim()):
            hit = support.any(dim=tuple(a for a in range(support.dim()) if a != axis)) if support.dim() > 1 else support
            idx = torch.nonzero(hit).flatten()
            extents.append(int(idx.max() - idx.min() + 1) if idx.numel() else 0)
        found[name] = (shapes[name], extents)
    return found


def timed_describe(model: LoadedModel, device: torch.device) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    summary = inventory.describe(model, device=device)
    return time.perf_counter() - start, summary


def compare(summary: dict[str, Any], old: dict[str, tuple[list[int], list[int]]]) -> str:
    layers = {layer["name"]: layer for layer in summary["layers"]}
    differ = [n for n, (shape, field) in old.items() if n in layers and (layers[n]["receptive_field"], layers[n]["output_shape"]) != (field, shape)]
    return "the same figures" if not differ else f"{len(differ)} of {len(old)} layers differ, e.g. {differ[:3]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(names()))
    parser.add_argument("--formats", default=",".join(("module",) + FORMATS))
    parser.add_argument("--baseline", default="r3d_18:onnx_legacy", help="model:format whose old per-layer probe is timed too")
    parser.add_argument("--full", action="store_true", help="also full-size R3D-18 (16 x 112 x 112)")
    parser.add_argument("--full-baseline", action="store_true", help="and the old probe on it (minutes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.simplefilter("ignore")
    importlib.import_module("torch._dynamo")  # see the module docstring

    base_model, base_format = args.baseline.split(":")
    print(f"describe per zoo model and format (seconds, {args.threads} thread(s), {device}); load is not counted")
    print(f"{'model':14s} {'format':12s} {'layers':>6s} {'describe_s':>10s}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            entry = ZOO[name]
            net = build(name)
            for fmt in args.formats.split(","):
                try:
                    if fmt == "module":
                        # describe moves the module to the device: a copy, so that `net` is exported from the CPU
                        model = LoadedModel.from_module(copy.deepcopy(net), entry.input_spec, name=name)
                    else:
                        path = Path(tmp) / f"{name}.{fmt}{'.onnx' if fmt.startswith('onnx') else '.pt2'}"
                        export_model(net, fmt, path, example(name, 1))
                        model = load(path, entry.header, name, device)
                except Exception as exc:  # noqa: BLE001 - a refusal is a row of the table
                    print(f"{name:14s} {fmt:12s} {'-':>6s} {'refused':>10s}  {str(exc).splitlines()[0][:90]}")
                    continue
                seconds, summary = timed_describe(model, device)
                worst = max(worst, seconds)
                print(f"{name:14s} {fmt:12s} {len(summary['layers']):6d} {seconds:10.2f}", flush=True)
                if (name, fmt) == (base_model, base_format):
                    start = time.perf_counter()
                    old = per_layer_probe(model, device)
                    old_s = time.perf_counter() - start
                    baseline = (name, fmt, old_s, seconds, compare(summary, old))
    print(f"slowest describe: {worst:.2f} s")
    if "baseline" in locals():
        name, fmt, old_s, new_s, same = baseline
        print(f"baseline {name} {fmt}: per-layer probe {old_s:.2f} s, describe {new_s:.2f} s, old/new = {old_s / new_s:.1f}x ({same})")
    if args.full:
        full(device, args.full_baseline)


def full(device: torch.device, with_baseline: bool) -> None:
    """The issue's case: R3D-18 at full width on 16 x 112 x 112 clips."""
    net = video_resnet.r3d_18(400, width=64).eval()
    spec = InputSpec(shape=FULL_SHAPE, value_min=0.0, value_max=1.0, mean=ZOO["r3d_18"].mean, std=ZOO["r3d_18"].std)
    header = {"value_min": 0.0, "value_max": 1.0, "mean": list(spec.mean), "std": list(spec.std)}
    x = spec.normalize(spec.random(1, torch.Generator().manual_seed(0)))
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("onnx_legacy", "pt2_dynamic"):
            path = Path(tmp) / f"r3d_18_full.{fmt}{'.onnx' if fmt.startswith('onnx') else '.pt2'}"
            export_model(net, fmt, path, x)
            model = load(path, header, "r3d_18_full", device)
            seconds, summary = timed_describe(model, device)
            print(f"full-size r3d_18 {fmt}: describe {seconds:.2f} s ({len(summary['layers'])} layers)", flush=True)
            if with_baseline and fmt == "onnx_legacy":
                start = time.perf_counter()
                old = per_layer_probe(model, device)
                old_s = time.perf_counter() - start
                print(f"full-size r3d_18 {fmt}: per-layer probe {old_s:.2f} s, old/new = {old_s / seconds:.1f}x ({compare(summary, old)})")


if __name__ == "__main__":
    main()
