"""Stage 1: optimise, for every requested channel of a layer at once, the video that drives it most.

Why batched: the reference renders one kernel at a time through the whole network at full
size with weight gradients. Here the B channels of a chunk share every forward and backward
pass (sample b drives channel c_b; the objective is a sum and each video's gradient is
normalised on its own, so each video's trajectory is the one it would have alone), the weights
are frozen, the pass stops at the layer, and the canvas is the receptive field plus jitter room. Every channel draws its initial spectrum
and its jitter from its own generator seeded by (seed, channel), so a channel's result does not
depend on which other channels share its chunk.

Why normalised gradient ascent and not Adam: Adam normalises every Fourier coefficient on its
own, which flattens the spectrum of the update (tails of the kernel's spectrum grow as fast as
its peak): on a planted drifting-grating kernel it stalled at ~55 % of the reachable activation
with a wrong speed. Normalising each video's whole gradient keeps the preconditioned direction,
is independent of the network's activation scale and reached the exact optimum there; on
C3DSmall it reached about the same activations as Adam (higher on the trained model's conv3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from workers.kernel_viz import defaults, transforms
from workers.kernel_viz.objective import Objective, channel_activations
from workers.kernel_viz.parameterization import FourierVideo
from workers.kernel_viz.target import LayerTarget, Size3
from workers.kernel_viz.transforms import Jitter

ProgressFn = Callable[[float], None]
# Lucent's param_f: (channels, (T, H, W), value range, one generator per video, device) -> a module whose forward()
# gives the B videos and whose one parameter has the videos on its first axis (each video's gradient is
# normalised over its own slice). FourierVideo is the default; a pixel-space video is the obvious other.
Parameterization = Callable[[int, Sequence[int], tuple[float, float], Sequence[torch.Generator], torch.device], nn.Module]


@dataclass
class Rendering:
    """videos: (K, C, T, H, W) raw values on CPU, one per channel; activations: reached on the un-jittered video;
    max_gradient: largest |gradient| seen on each video's spectrum (0 means the channel never responded)."""

    channels: list[int]
    videos: torch.Tensor
    activations: list[float]
    max_gradient: list[float]
    seconds: float


def channel_generator(seed: int, channel: int) -> torch.Generator:
    """The CPU generator of one channel's initial spectrum and jitter: the same alone or in any batch."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(channel)) % (2**63))


def memory_budget(device: torch.device) -> int:
    """Bytes one chunk of stage 1 may hold in autograd's saved tensors on this device."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * defaults.CUDA_MEMORY_FRACTION)
    return defaults.MEMORY_BUDGET_BYTES


def bytes_per_sample(target: LayerTarget, size: Size3) -> int:
    """What autograd keeps for one video of this canvas size through the target (measured, not guessed)."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    video = torch.zeros((1, target.channels, *size), device=target.device, requires_grad=True)
    with target.frozen(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = target(video)
    # The output and its gradient, the video's transforms and their gradients come on top.
    return 2 * (saved + out.numel() * out.element_size()) + 8 * video.numel() * video.element_size()


def chunk_size(target: LayerTarget, size: Size3, channels: int, budget: int | None = None) -> int:
    """How many channels fit in one batch under the memory budget (at least 1)."""
    budget = memory_budget(torch.device(target.device)) if budget is None else budget
    return max(1, min(channels, budget // max(1, bytes_per_sample(target, size))))


def render(
    target: LayerTarget,
    channels: Sequence[int],
    size: Size3,
    *,
    objective: Objective = Objective.NEURON,
    parameterization: Parameterization = FourierVideo,
    jitter: Jitter = Jitter(),
    steps: int = defaults.STEPS,
    seed: int = 0,
    learning_rate: float = defaults.LEARNING_RATE,
    jitter_share: float = defaults.JITTER_SHARE,
    chunk: int | None = None,
    progress: ProgressFn | None = None,
) -> Rendering:
    """The optimal video of each channel in `channels` on canvases of `size` (T, H, W), chunked to the memory budget.

    As Lucent's render_vis(objective_f, param_f, transforms): the objective (what a video should drive), the
    parameterization (how a video is made from its parameters) and the transforms (`jitter`, applied for the
    first `jitter_share` of the steps) are arguments.
    """
    started = time.perf_counter()
    channels = [int(c) for c in channels]
    chunk = chunk or chunk_size(target, size, len(channels))
    videos: list[torch.Tensor] = []
    activations: list[float] = []
    gradients: list[float] = []
    with target.frozen():
        for start in range(0, len(channels), chunk):
            part = channels[start : start + chunk]

            def report(fraction: float, done: int = start, width: int = len(part)) -> None:
                if progress is not None:
                    progress((done + fraction * width) / len(channels))

            video, reached, grad = _render_chunk(
                target, part, size, objective, parameterization, steps, seed, jitter, jitter_share, learning_rate, report
            )
            videos.append(video)
            activations += reached
            gradients += grad
    return Rendering(
        channels=channels,
        videos=torch.cat(videos) if videos else torch.zeros((0, target.channels, *size)),
        activations=activations,
        max_gradient=gradients,
        seconds=time.perf_counter() - started,
    )


def _render_chunk(
    target: LayerTarget,
    channels: list[int],
    size: Size3,
    objective: Objective,
    parameterization: Parameterization,
    steps: int,
    seed: int,
    jitter: Jitter,
    jitter_share: float,
    learning_rate: float,
    report: Callable[[float], None],
) -> tuple[torch.Tensor, list[float], list[float]]:
    device = torch.device(target.device)
    generators = [channel_generator(seed, c) for c in channels]
    video = parameterization(target.channels, size, target.value_range, generators, device)
    # Drawn after the initial spectrum, from the same per-channel generator: (B, steps, 4).
    schedule = torch.stack([jitter.draw(steps, g) for g in generators]).to(device)
    jittered = int(round(steps * jitter_share)) if not jitter.is_identity else 0
    index = torch.tensor(channels, device=device)
    [spectrum] = list(video.parameters())  # (B, ...): one slice per video
    velocity = torch.zeros_like(spectrum)
    max_grad = torch.zeros(len(channels), device=device)
    every = max(1, steps // 20)
    for step in range(steps):
        frames = video()
        if step < jittered:
            frames = transforms.apply(frames, schedule[:, step])
        reached = channel_activations(target(frames), index, objective)
        (grad,) = torch.autograd.grad(reached.sum(), spectrum)
        with torch.no_grad():
            flat = grad.flatten(1)
            max_grad = torch.maximum(max_grad, flat.abs().amax(dim=1))
            rms = flat.pow(2).mean(dim=1).sqrt().clamp_min(1e-30).view(-1, *([1] * (grad.dim() - 1)))
            velocity.mul_(defaults.MOMENTUM).add_(grad / rms)
            spectrum.add_(velocity, alpha=learning_rate)
        if step % every == 0:
            report(step / max(steps, 1))
    with torch.no_grad():
        final = video()
        reached = channel_activations(target(final), index, objective)
    report(1.0)
    return final.detach().cpu(), [float(a) for a in reached.cpu()], [float(g) for g in max_grad.cpu()]


def evaluate(
    target: LayerTarget,
    videos: torch.Tensor,
    channels: Sequence[int],
    objective: Objective = Objective.NEURON,
    chunk: int = 64,
) -> list[float]:
    """Activation of channel channels[k] for video k (K, C, T, H, W), without gradients."""
    out: list[float] = []
    with target.frozen(), torch.no_grad():
        for start in range(0, len(channels), chunk):
            part = torch.tensor([int(c) for c in channels[start : start + chunk]], device=target.device)
            batch = videos[start : start + chunk].to(target.device)
            out += [float(a) for a in channel_activations(target(batch), part, objective).cpu()]
    return out
