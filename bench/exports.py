"""kernel_viz stage 1 on the same model in three export formats, same process: is a fixed-shape .pt2 as fast?

Users export at batch 1 with every size fixed (torch.export's default), or with a dynamic batch and fixed
T/H/W, or as ONNX. kernel_viz optimises small canvases in batches of channels, so an export that took only
its full input and one sample would cost a full network pass per channel per step. The model wrapper
(workers/model.py, workers/export_graph.py) makes the graph take any batch and canvas; this prints, per
model and layer, stage 1's time for

  onnx      torch.onnx.export(dynamo=True), dynamic batch, run by the project's ONNX interpreter
  pt2 dyn   torch.export with a dynamic batch (T, H, W fixed)
  pt2 b1    torch.export at batch 1, every size fixed

each loaded through load_model as a job loads it, planned (canvas, receptive field) and rendered exactly as
the task does (all channels of the layer, --steps steps; the fastest of --repeats interleaved runs), and its
ratio to ONNX and to the dynamic .pt2.
The target: a fixed-shape export within 1.5x of the dynamic one.

Models: the C3D sample (workers.samples.models.C3DSmall, 3x8x32x32) and an R3D-18 (the zoo's faithful
VideoResNet builder, workers.samples.zoo.video_resnet.r3d_18) at --r3d-width channels and --r3d-size input.

    python bench/exports.py [--steps 64] [--repeats 3] [--threads 1] [--device cpu] [--r3d-width 16] [--r3d-size 8x56x56]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.input_spec import InputSpec  # noqa: E402
from workers.kernel_viz.receptive_field import plan_canvas  # noqa: E402
from workers.kernel_viz.renderer import render  # noqa: E402
from workers.kernel_viz.target import LayerTarget  # noqa: E402
from workers.kernel_viz.transforms import Jitter  # noqa: E402
from workers.loader import load_model  # noqa: E402
from workers.samples.models import INPUT_SPEC, C3DSmall, export_onnx, export_pt2  # noqa: E402
from workers.samples.zoo.video_resnet import r3d_18  # noqa: E402

FORMATS = ("onnx", "pt2 dyn", "pt2 b1")


def export(model: nn.Module, spec: InputSpec, fmt: str, folder: Path) -> Path:
    example = torch.zeros((1, *spec.shape))
    path = folder / f"model.{fmt.replace(' ', '_')}.{'onnx' if fmt == 'onnx' else 'pt2'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            export_onnx(model, path, example, dynamic_batch=True)
        else:
            export_pt2(model, path, example, dynamic_batch=fmt == "pt2 dyn")
    return path


def stage1(path: Path, fmt: str, spec: InputSpec, layer: str, steps: int, device: str = "cpu") -> tuple[float, float, tuple[int, ...], bool, int]:
    """(plan seconds, stage-1 seconds, canvas, whether the wrapper embeds the canvas, channels) as the task runs it."""
    header = {"value_min": spec.value_min, "value_max": spec.value_max, "mean": list(spec.mean), "std": list(spec.std)}
    model = load_model(path, "ONNX" if fmt == "onnx" else "TORCH_EXPORT", header, device=device)
    started = time.perf_counter()
    target = LayerTarget(model, layer, torch.device(device))
    plan = plan_canvas(target)
    placed = target.placed(plan.offset)
    with torch.no_grad(), placed.frozen():
        channels = int(placed(torch.zeros((1, target.channels, *plan.size))).shape[1])
    planned = time.perf_counter() - started
    rendering = render(placed, list(range(channels)), plan.size, steps=steps, seed=0, jitter=Jitter(plan.jitter, 0.05))
    embedded = plan.offset is not None or (hasattr(model, "placement") and model.placement(layer, plan.size) is not None)
    return planned, rendering.seconds, plan.size, embedded, channels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda (bench/gpu.sh runs it on cuda)")
    parser.add_argument("--r3d-width", type=int, default=16)
    parser.add_argument("--r3d-size", default="8x56x56", help="T x H x W of the R3D-18's input")
    parser.add_argument("--models", default="c3d,r3d_18")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per format; the fastest is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    t, h, w = (int(v) for v in args.r3d_size.split("x"))
    r3d_spec = InputSpec(shape=(3, t, h, w), mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989))
    cases = {
        "c3d": (lambda: C3DSmall(), INPUT_SPEC, ["conv1", "conv2"]),
        "r3d_18": (lambda: r3d_18(num_classes=4, width=args.r3d_width), r3d_spec, ["stem.0", "layer1.0.conv1.0"]),
    }
    print(f"kernel_viz stage 1, all channels of each layer, {args.steps} steps, {args.threads} thread(s), {args.device}")
    print(f"{'model':8} {'layer':18} {'format':8} {'input':>9} {'canvas':>9} {'embedded':>8} {'plan s':>7} {'stage1 s':>8} {'/onnx':>6} {'/pt2 dyn':>8}")
    for name in args.models.split(","):
        make, spec, layers = cases[name]
        torch.manual_seed(0)
        model = make().eval()
        with tempfile.TemporaryDirectory() as tmp:
            paths = {fmt: export(model, spec, fmt, Path(tmp)) for fmt in FORMATS}
            for layer in layers:
                stage1(paths["onnx"], "onnx", spec, layer, 2, args.device)  # warm the operators up before timing
                best: dict[str, tuple[float, float, tuple[int, ...], bool, int]] = {}
                for _ in range(args.repeats):  # interleaved, the fastest of each kept: other load on the machine cancels out
                    for fmt in FORMATS:
                        run = stage1(paths[fmt], fmt, spec, layer, args.steps, args.device)
                        if fmt not in best or run[1] < best[fmt][1]:
                            best[fmt] = run
                for fmt in FORMATS:
                    planned, seconds, canvas, embedded, channels = best[fmt]
                    print(
                        f"{name:8} {layer + f' ({channels})':18} {fmt:8} {'x'.join(map(str, spec.spatial)):>9} "
                        f"{'x'.join(map(str, canvas)):>9} {str(embedded):>8} {planned:7.2f} {seconds:8.2f} "
                        f"{seconds / best['onnx'][1]:6.2f} {seconds / best['pt2 dyn'][1]:8.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
