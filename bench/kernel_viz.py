"""kernel_viz stage 1: kernelscope's pipeline against the reference pipeline's cost structure, same process.

Model: workers.samples.models.C3DSmall (input 3x8x32x32), random-initialised with seed 0, or trained on
the sample motion clips with --trained (adds about a minute). For an early (conv1) and a middle (conv2)
layer, every channel is visualised two ways with the same number of steps and threads:

  reference   the cost structure of the paper's released code: the model's full input (3x8x32x32), the
              whole network run to its logits (the layer read by a hook), weight gradients computed,
              one kernel at a time; pixel-space parameterisation (a sigmoid of per-pixel logits) with
              Adam (lr 0.05) and one-sided jitter (0..2 px in x and y, replicate-padded). Unlike the
              released code it uses the model's own normalisation, not ImageNet's, so that its
              activations are comparable. It runs on --reference-channels channels (a kernel at a time
              costs the same for every channel) and its channels/s are measured on those.
  kernelscope workers.kernel_viz: receptive-field probe and canvas plan (timed), all channels of the
              layer in one batch on the canvas, weights frozen, the pass stopped at the layer, 3D Fourier
              parameterisation, centred jitter during the first half of the steps.

Both reach the centre unit of the layer (the neuron objective). Activations are measured the same way
for both: the unit in the full network on a full-size input (kernelscope's canvas placed where the
unit's receptive field lies, the rest mid-grey). Printed per layer: channels per second for each,
their ratio, and the mean activation each reached on the channels both ran.

    python bench/kernel_viz.py [--steps 256] [--threads 1] [--trained] [--reference-channels 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.input_spec import InputSpec  # noqa: E402
from workers.kernel_viz.objective import Objective, centre_index  # noqa: E402
from workers.kernel_viz.receptive_field import plan_canvas  # noqa: E402
from workers.kernel_viz.renderer import evaluate, render  # noqa: E402
from workers.kernel_viz.target import LayerTarget  # noqa: E402
from workers.kernel_viz.transforms import Jitter  # noqa: E402
from workers.model import LoadedModel  # noqa: E402
from workers.samples.models import INPUT_SPEC, C3DSmall, train_c3d  # noqa: E402

REFERENCE_LR = 0.05
REFERENCE_JITTER = 2


def reference_render(model: nn.Module, spec: InputSpec, layer: str, channel: int, steps: int, seed: int = 0) -> torch.Tensor:
    """One kernel's video the reference way: full input, whole network, weight gradients, pixel space."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + channel)
    logits = (0.01 * torch.randn((1, *spec.shape), generator=generator)).requires_grad_(True)
    captured: dict[str, torch.Tensor] = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, out: captured.update(out=out))
    for p in model.parameters():
        p.requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=REFERENCE_LR)
    try:
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            video = spec.value_min + (spec.value_max - spec.value_min) * torch.sigmoid(logits)
            dy, dx = torch.randint(0, REFERENCE_JITTER + 1, (2,), generator=generator).tolist()
            video = F.pad(video[..., dy:, dx:], (0, dx, 0, dy, 0, 0), mode="replicate")  # one-sided
            model(spec.normalize(video))  # to the logits
            out = captured["out"]
            (-out[(0, channel, *centre_index(out.shape[2:]))]).backward()  # weight gradients too
            optimiser.step()
    finally:
        handle.remove()
        for p in model.parameters():
            p.requires_grad_(False)
    with torch.no_grad():
        return spec.value_min + (spec.value_max - spec.value_min) * torch.sigmoid(logits)


def kernelscope_render(model: nn.Module, layer: str, channels: list[int], steps: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """All channels at once on the canvas; returns the videos and where the canvas sits in the full input."""
    target = LayerTarget(LoadedModel.from_module(model, INPUT_SPEC), layer, torch.device("cpu"))
    plan = plan_canvas(target)
    rendering = render(target.placed(plan.offset), channels, plan.size, steps=steps, jitter=Jitter(plan.jitter, 0.05))
    offset = tuple(f - c for f, c in zip(plan.full_field.lo, plan.field.lo))
    return rendering.videos, offset  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trained", action="store_true", help="train C3DSmall on the sample clips first")
    parser.add_argument("--reference-channels", type=int, default=4)
    parser.add_argument("--layers", default="conv1,conv2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.trained:
        model, metrics = train_c3d(seed=0)
        print(f"model: C3DSmall trained (eval accuracy {metrics['eval_accuracy']:.2f})")
    else:
        torch.manual_seed(0)
        model = C3DSmall().eval()
        print("model: C3DSmall random-initialised (seed 0)")
    for p in model.parameters():
        p.requires_grad_(False)
    # Warm both paths up (first-call costs of the ops) before anything is timed.
    reference_render(model, INPUT_SPEC, "conv1", 0, 2)
    kernelscope_render(model, "conv1", [0, 1], 2)
    print(f"steps {args.steps}, threads {args.threads}, CPU")
    print(f"{'layer':6} {'channels':>8} {'canvas':>10} {'ref ch/s':>9} {'ours ch/s':>9} {'ratio':>7} {'ref act':>8} {'ours act':>8} {'ours act (all)':>14}")
    for layer in args.layers.split(","):
        full = LayerTarget(LoadedModel.from_module(model, INPUT_SPEC), layer, torch.device("cpu"))
        with torch.no_grad():
            count = int(full(torch.zeros((1, *INPUT_SPEC.shape))).shape[1])
        channels = list(range(count))
        subset = channels[: args.reference_channels]

        started = time.perf_counter()
        reference = torch.cat([reference_render(model, INPUT_SPEC, layer, c, args.steps) for c in subset])
        reference_rate = len(subset) / (time.perf_counter() - started)

        started = time.perf_counter()
        ours, offset = kernelscope_render(model, layer, channels, args.steps)
        our_rate = len(channels) / (time.perf_counter() - started)

        placed = full.placed(offset)
        ours_act = evaluate(placed, ours, channels, Objective.NEURON)
        ref_act = evaluate(full, reference, subset, Objective.NEURON)
        both = sum(ours_act[: len(subset)]) / len(subset)
        print(
            f"{layer:6} {count:8d} {'x'.join(map(str, ours.shape[2:])):>10} {reference_rate:9.3f} {our_rate:9.2f} "
            f"{our_rate / reference_rate:6.1f}x {sum(ref_act) / len(ref_act):8.3f} {both:8.3f} {sum(ours_act) / len(ours_act):14.3f}"
        )


if __name__ == "__main__":
    main()
