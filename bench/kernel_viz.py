"""kernel_viz stage 1: kernelscope against the reference pipeline (Li & Li 2025) as its released code runs, same process.

Model: workers.samples.models.C3DSmall (input 3x8x32x32), random-initialised with seed 0, or trained on
the sample motion clips with --trained (adds about a minute). For an early (conv1) and a middle (conv2)
layer:

  released    the reference's released stage 1 (3DKernelVisualizer's render_save / render_vis, re-implemented
              here without kornia or torchvision): a 16x128x128 pixel parameterisation (randn * 0.01) with
              decorrelated colour and a sigmoid, a 3D affine jitter about the corner (shift 0..7 px in x
              and y, 0..3 frames in t, scale 0.9..1.1, zero padding), ImageNet normalisation, trilinear
              upsampling to 32x224x224 every step, the whole network, the channel-mean objective, weight
              gradients, Adam (lr 0.05), one kernel at a time, 1,500 steps. Only --released-steps steps
              (after one untimed warm-up step) are run: its time to a result is EXTRAPOLATED (per-step time
              x 1,500 x channels; every kernel costs the same); its activation is MEASURED after those steps
              only (1,500 steps would take hours on one CPU thread).
  kernelscope workers.kernel_viz at its defaults (256 steps, centre unit): receptive-field probe and canvas
              plan, all channels of the layer in one batch on the canvas, weights frozen, the pass stopped
              at the layer, 3D Fourier parameterisation, centred jitter. Time and activation MEASURED.

Activation is reported two ways: the layer's centre unit on the network input each pipeline feeds (the
reference: its upsampled, ImageNet-normalised 32x224x224 clip; kernelscope: its canvas in a mid-grey
full-size input, the model's own normalisation), and the reference's own objective (channel mean).

With --emulation the earlier comparison runs too (both at the model's own 3x8x32x32 input and
normalisation, the same number of steps):

  emulation   the cost structure of the paper's released code: the model's full input (3x8x32x32), the
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

    python bench/kernel_viz.py [--threads 1] [--trained] [--released-steps 5] [--emulation [--steps 256]]
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
from workers.kernel_viz.parameterization import colour_mixing  # noqa: E402
from workers.kernel_viz import defaults  # noqa: E402
from workers.kernel_viz.receptive_field import plan_canvas  # noqa: E402
from workers.kernel_viz.renderer import evaluate, render  # noqa: E402
from workers.kernel_viz.target import LayerTarget  # noqa: E402
from workers.kernel_viz.transforms import Jitter  # noqa: E402
from workers.model import LoadedModel  # noqa: E402
from workers.samples.models import INPUT_SPEC, C3DSmall, train_c3d  # noqa: E402

REFERENCE_LR = 0.05
REFERENCE_JITTER = 2

# The released pipeline's settings (3DKernelVisualizer: run.py, optvis/render.py, optvis/transform.py).
RELEASED_PARAM = (16, 128, 128)
RELEASED_INPUT = (32, 224, 224)
RELEASED_STEPS = 1500
RELEASED_LR = 0.05
RELEASED_SHIFT = (8, 8, 4)  # np.random.choice(d): 0..d-1 px in x and y, frames in t
RELEASED_SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _corner_affine(video: torch.Tensor, shift: tuple[int, int, int], scale: float) -> torch.Tensor:
    """kornia.warp_affine3d of get_affine_matrix3d(translation, centre 0, scale): dst(p) = src((p - shift) / scale),
    p in pixel indices (x, y, z), zero padding: a one-sided shift and a scale about the corner."""
    _, _, t, h, w = video.shape
    zs, ys, xs = (torch.arange(n, dtype=video.dtype) for n in (t, h, w))
    dx, dy, dz = shift
    src = [(xs - dx) / scale, (ys - dy) / scale, (zs - dz) / scale]
    gx, gy, gz = (2.0 * c / max(n - 1, 1) - 1.0 for c, n in zip(src, (w, h, t)))
    grid = torch.stack(torch.meshgrid(gz, gy, gx, indexing="ij")[::-1], dim=-1)[None]  # (1, T, H, W, 3) as (x, y, z)
    return F.grid_sample(video, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class ReleasedReference:
    """One kernel's stage 1 as the released code runs it; `step` is one of its 1,500 optimisation steps."""

    def __init__(self, model: nn.Module, layer: str, channel: int, seed: int = 0) -> None:
        self.model, self.channel = model, channel
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + channel)
        self.pixels = (torch.randn((1, 3, *RELEASED_PARAM), generator=self.generator) * 0.01).requires_grad_(True)
        self.optimiser = torch.optim.Adam([self.pixels], lr=RELEASED_LR)
        self.mixing = colour_mixing(3)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
        self.captured: dict[str, torch.Tensor] = {}
        self.handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, out: self.captured.update(out=out))
        for p in model.parameters():
            p.requires_grad_(True)  # the released code never freezes the weights: their gradients are computed too

    def video(self) -> torch.Tensor:
        """The parameterised clip in [0, 1]: decorrelated colour, sigmoid."""
        return torch.sigmoid(torch.einsum("dc,bcthw->bdthw", self.mixing, self.pixels))

    def network_input(self, video: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation, then trilinear upsampling to 32x224x224 (align_corners=True), as released."""
        return F.interpolate((video - self.mean) / self.std, size=RELEASED_INPUT, mode="trilinear", align_corners=True)

    def step(self) -> float:
        self.optimiser.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)
        shift = tuple(int(torch.randint(0, d, (1,), generator=self.generator)) for d in RELEASED_SHIFT)
        scale = RELEASED_SCALES[int(torch.randint(0, len(RELEASED_SCALES), (1,), generator=self.generator))]
        self.model(self.network_input(_corner_affine(self.video(), shift, scale)))  # to the logits
        loss = -self.captured["out"][:, self.channel].mean()  # Lucent's channel objective
        loss.backward()
        self.optimiser.step()
        return -loss.item()

    @torch.no_grad()
    def activations(self) -> tuple[float, float]:
        """(channel mean, centre unit) of the un-jittered clip, on the network input the released code feeds."""
        self.model(self.network_input(self.video()))
        out = self.captured["out"][0, self.channel]
        return float(out.mean()), float(out[centre_index(out.shape)])

    def close(self) -> None:
        self.handle.remove()
        for p in self.model.parameters():
            p.requires_grad_(False)


def released_run(model: nn.Module, layer: str, channel: int, steps: int) -> tuple[float, float, float, float]:
    """(seconds per step measured over `steps` after one untimed warm-up, channel mean at the start, channel mean
    and centre unit after the steps) of the released pipeline on one kernel."""
    reference = ReleasedReference(model, layer, channel)
    try:
        start, _ = reference.activations()
        reference.step()  # first-call costs out of the timing
        started = time.perf_counter()
        for _ in range(steps):
            reference.step()
        per_step = (time.perf_counter() - started) / steps
        mean, centre = reference.activations()
    finally:
        reference.close()
    return per_step, start, mean, centre


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


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2f} s"


def released_comparison(model: nn.Module, layers: list[str], steps: int) -> None:
    """Time to a whole layer's result and the activation reached: released pipeline vs kernelscope's defaults."""
    print(f"\nreleased reference pipeline ({steps} of its {RELEASED_STEPS} steps timed on channel 0) vs kernelscope defaults "
          f"({defaults.STEPS} steps, all channels); ref = released, ks = kernelscope")
    print(f"{'layer':6} {'ch':>3} {'ref s/step':>10} {'ref layer time':>16} {'ks layer time':>14} {'ratio':>8} "
          f"{'ref centre':>12} {'ks centre':>10} {'ref ch-mean':>15}")
    for layer in layers:
        full = LayerTarget(LoadedModel.from_module(model, INPUT_SPEC), layer, torch.device("cpu"))
        with torch.no_grad():
            channels = list(range(int(full(torch.zeros((1, *INPUT_SPEC.shape))).shape[1])))
        per_step, start, mean, centre = released_run(model, layer, 0, steps)
        reference_layer = per_step * RELEASED_STEPS * len(channels)

        started = time.perf_counter()
        ours, offset = kernelscope_render(model, layer, channels, defaults.STEPS)
        our_layer = time.perf_counter() - started
        ours_act = evaluate(full.placed(offset), ours, channels, Objective.NEURON)
        print(
            f"{layer:6} {len(channels):3d} {per_step:10.2f} {_duration(reference_layer) + ' (extr.)':>16} "
            f"{_duration(our_layer) + ' (meas.)':>14} {reference_layer / our_layer:7.0f}x "
            f"{centre:12.3f} {ours_act[0]:10.3f} {start:6.3f}->{mean:6.3f}"
        )
    print(f"ref centre / ref ch-mean: channel 0 after {steps} steps (measured; its {RELEASED_STEPS}-step values are not);"
          f" ks centre: channel 0 after {defaults.STEPS} steps (measured). ref layer time = s/step x {RELEASED_STEPS} x channels.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trained", action="store_true", help="train C3DSmall on the sample clips first")
    parser.add_argument("--layers", default="conv1,conv2")
    parser.add_argument("--released-steps", type=int, default=5, help="steps of the released pipeline to time per layer")
    parser.add_argument("--emulation", action="store_true", help="also run the earlier cost-structure emulation")
    parser.add_argument("--steps", type=int, default=256, help="steps of both arms of the emulation")
    parser.add_argument("--reference-channels", type=int, default=4, help="channels the emulation's reference runs")
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
    layers = args.layers.split(",")
    print(f"threads {args.threads}, CPU")
    kernelscope_render(model, "conv1", [0, 1], 2)  # first-call costs of the ops out of the timings
    released_comparison(model, layers, args.released_steps)
    if args.emulation:
        emulation(model, layers, args.steps, args.reference_channels)


def emulation(model: nn.Module, layers: list[str], steps: int, reference_channels: int) -> None:
    """The earlier comparison: the reference's cost structure at the model's own input, same steps for both."""
    reference_render(model, INPUT_SPEC, "conv1", 0, 2)
    print(f"\nemulation: reference cost structure at the model's input ({steps} steps), measured")
    print(f"{'layer':6} {'channels':>8} {'canvas':>10} {'ref ch/s':>9} {'ours ch/s':>9} {'ratio':>7} {'ref act':>8} {'ours act':>8} {'ours act (all)':>14}")
    for layer in layers:
        full = LayerTarget(LoadedModel.from_module(model, INPUT_SPEC), layer, torch.device("cpu"))
        with torch.no_grad():
            count = int(full(torch.zeros((1, *INPUT_SPEC.shape))).shape[1])
        channels = list(range(count))
        subset = channels[:reference_channels]

        started = time.perf_counter()
        reference = torch.cat([reference_render(model, INPUT_SPEC, layer, c, steps) for c in subset])
        reference_rate = len(subset) / (time.perf_counter() - started)

        started = time.perf_counter()
        ours, offset = kernelscope_render(model, layer, channels, steps)
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
