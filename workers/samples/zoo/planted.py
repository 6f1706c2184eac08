"""Zoo models with answers planted in them, so that every analysis of every export has a fact to find.

- Stem (when its kernel spans several frames and at least 5 × 5 pixels): filter 0 becomes a drifting
  grating (GRATING_DIRECTION_DEG, GRATING_SPEED px/frame) under a Gaussian window, which kernel_viz must
  recover; every other filter becomes an inflated 2D kernel (one slice repeated over time, as I3D inflates
  ImageNet weights), which the 3T fit of tconv_stats must find to be the identity transform.
- Head: class c reads only its own 5 features (disjoint subsets, weights ±1 / the feature's mean magnitude, so
  each adds about as much), with biases that balance the classes on varied clips; the labelled set is clips the
  planted model itself classifies with a clear margin and on which each of the class's features carries at
  least MIN_SHARE of what its features add to the logit, so the full model is right on all of them and every
  planted feature is part of the answer: class_filters must return each class's subset. (Rectified features
  are 0 on many clips: S3D's are on 10-49 % of them, and with weights ±1 on the widest margins one planted
  feature added exactly 0 on every labelled clip of 3 of 4 classes, so the truthful subset had 4 features.)

BatchNorm statistics are re-measured after the stem changes, so the network downstream still sees
normalised activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workers.samples.motion import drifting_grating
from workers.samples.zoo import ZOO, build, calibrate_norms

GRATING_DIRECTION_DEG = 45.0
GRATING_SPEED = 1.0
SUBSET_SIZE = 5
POOL_CLIPS = 96  # varied clips the labelled set is drawn from
# Least share of |contribution| summed over a class's features that each of them carries on a labelled clip (1/5 even).
MIN_SHARE = 0.05
# A feature is present on a clip when it has its mean's sign and at least this share of its mean magnitude.
PRESENT = 0.1


@dataclass
class Planted:
    """The planted model and what the analyses should find in it."""

    name: str
    model: nn.Module
    grating_filter: int | None  # stem filter holding the drifting grating (None: the stem has no motion extent)
    inflated_filters: list[int]  # stem filters that are one 2D slice repeated over time
    subsets: list[list[int]]  # per class, the head's input features it reads
    x: np.ndarray  # labelled set, raw values in [0, 1], (N, C, T, H, W)
    y: np.ndarray  # the planted model's own decisions on x


def build_planted(name: str, num_classes: int = 4, per_class: int = 4, seed: int = 0) -> Planted:
    """zoo.build(name) with a planted stem and head, and a labelled set of `per_class` clips per class."""
    entry = ZOO[name]
    model = build(name, num_classes=num_classes, seed=seed)
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed + 1)
    grating, inflated = _plant_stem(modules[entry.stem], generator)
    if inflated:
        calibrate_norms(model, entry.input_spec, generator)
        model.eval()
    pool = varied_clips(entry.input_shape, POOL_CLIPS, seed + 2)
    subsets = _plant_head(model, modules[entry.head], pool, entry, num_classes, seed)
    x, y = _labelled(model, pool, entry, num_classes, per_class)
    return Planted(name, model, grating, inflated, subsets, x, y)


def grating_kernel(frames: int, size: int, direction_deg: float = GRATING_DIRECTION_DEG, speed: float = GRATING_SPEED) -> torch.Tensor:
    """(T, k, k) zero-mean grating drifting `speed` px/frame towards `direction_deg` under a Gaussian window,
    unit L1 norm. Convolution correlates, so the input that drives it most drifts the same way."""
    wave = drifting_grating(direction_deg, speed, frames, size, wavelength=max(4.0, size - 2.0), channels=1)[0] - 0.5
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    window = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (size / 3) ** 2))
    kernel = torch.from_numpy(np.ascontiguousarray(wave)) * window
    return kernel / kernel.abs().sum()


def varied_clips(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """n raw clips (n, *shape) in [0, 1] whose global statistics differ: drifting gratings of random direction,
    speed, wavelength, contrast, brightness and colour, plus a little noise."""
    channels, frames, height, width = shape
    rng = np.random.default_rng(seed)
    clips = np.empty((n, *shape), dtype=np.float32)
    for i in range(n):
        size = max(height, width)
        wave = drifting_grating(
            float(rng.uniform(0, 360)), float(rng.uniform(0.0, 2.0)), frames, size,
            wavelength=float(rng.uniform(3.0, size / 2)), phase=float(rng.uniform(0, 2 * math.pi)), channels=1,
        )[0, :, :height, :width]
        gains = rng.uniform(0.2, 1.0, size=(channels, 1, 1, 1))
        base = rng.uniform(0.2, 0.8, size=(channels, 1, 1, 1))
        noise = rng.normal(0.0, 0.05, size=(channels, frames, height, width))
        clips[i] = np.clip(base + gains * (wave[None] - 0.5) + noise, 0.0, 1.0)
    return clips


def _plant_stem(stem: nn.Module, generator: torch.Generator) -> tuple[int | None, list[int]]:
    weight = getattr(stem, "weight", None)
    if not isinstance(stem, nn.Conv3d) or weight is None or stem.groups != 1:
        return None, []
    out_channels, in_channels, frames, kh, kw = weight.shape
    if frames < 2 or min(kh, kw) < 5:
        return None, []
    with torch.no_grad():
        slices = torch.randn((out_channels, in_channels, 1, kh, kw), generator=generator) / math.sqrt(in_channels * kh * kw)
        weight.copy_(slices.expand(-1, -1, frames, -1, -1))
        weight[0] = grating_kernel(frames, min(kh, kw))[None].expand(in_channels, -1, -1, -1)
    return 0, list(range(1, out_channels))


def _plant_head(model: nn.Module, head: nn.Module, pool: np.ndarray, entry: object, num_classes: int, seed: int) -> list[list[int]]:
    """Class c reads only SUBSET_SIZE features, chosen among those present (PRESENT) on the most clips, with
    weight ±1 / mean |feature| matching the feature's sign (so each adds a positive share of about the same size to
    its class's logit wherever it is present); biases centre every logit on the pool's median."""
    weight = head.weight
    features = _head_inputs(model, head, pool, entry)
    mean, spread = features.mean(axis=0), features.std(axis=0)
    steady = np.abs(mean) / (spread + 1e-3 * (np.abs(features).mean() + 1e-12))
    present = _present(features, mean).mean(axis=0)
    candidates = np.lexsort((-steady, -present))[: num_classes * SUBSET_SIZE]
    norm = dict(model.named_modules()).get(entry.head_norm) if entry.head_norm else None  # type: ignore[attr-defined]
    if norm is not None:  # signed, LayerNorm-ed features: shift the chosen ones away from zero by 3 spreads
        with torch.no_grad():
            shift = 3.0 * np.sign(mean[candidates]) * spread[candidates]
            norm.bias[torch.from_numpy(candidates)] += torch.from_numpy(shift).to(norm.bias.dtype)
        features = _head_inputs(model, head, pool, entry)
        mean = features.mean(axis=0)
    scale = np.abs(features).mean(axis=0) + 1e-12
    order = np.random.default_rng(seed + 3).permutation(candidates)
    subsets = [sorted(int(i) for i in order[c * SUBSET_SIZE : (c + 1) * SUBSET_SIZE]) for c in range(num_classes)]
    with torch.no_grad():
        weight.zero_()
        for c, subset in enumerate(subsets):
            value = torch.from_numpy(np.sign(mean[subset]) / scale[subset]).to(weight.dtype)
            weight[c, subset] = value.reshape(weight[c, subset].shape)
        head.bias.zero_()
        logits = _logits(model, pool, entry, head)
        head.bias.copy_(-torch.from_numpy(np.median(logits, axis=0)).reshape(head.bias.shape))
    return subsets


def _present(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(N, D) bool: the feature is non-zero, has its mean's sign and at least PRESENT of its mean magnitude on the clip
    (a feature that is 0 on every clip is present on none)."""
    magnitude = np.abs(features)
    return (magnitude > 0) & (np.sign(features) == np.sign(mean)) & (magnitude >= PRESENT * magnitude.mean(axis=0))


def _head_inputs(model: nn.Module, head: nn.Module, clips: np.ndarray, entry: object) -> np.ndarray:
    """(N, D): the head's input features, averaged over any time and space axes."""
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    try:
        _forward(model, clips, entry)
    finally:
        handle.remove()
    x = torch.cat(seen)
    depth = head.weight.shape[1]
    if x.dim() > 2:
        x = x.movedim(1, -1) if x.shape[1] == depth and x.shape[-1] != depth else x
        x = x.reshape(x.shape[0], -1, depth).mean(dim=1)
    return x.numpy()


def _forward(model: nn.Module, clips: np.ndarray, entry: object) -> None:
    spec = entry.input_spec  # type: ignore[attr-defined]
    with torch.no_grad():
        for start in range(0, len(clips), 16):
            model(spec.normalize(torch.from_numpy(clips[start : start + 16])))


def _logits(model: nn.Module, clips: np.ndarray, entry: object, head: nn.Module) -> np.ndarray:
    """The head's own output (before any Softmax that follows it) for raw clips."""
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        _forward(model, clips, entry)
    finally:
        handle.remove()
    out = torch.cat(seen)
    if out.dim() == 5:  # a 1 × 1 × 1 Conv3d head or a Linear on channels-last (N, T, H, W, C)
        out = out.mean(dim=(2, 3, 4)) if out.shape[1] == head.weight.shape[0] else out.mean(dim=(1, 2, 3))
    return out.numpy()


def _labelled(model: nn.Module, pool: np.ndarray, entry: object, num_classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """per_class clips per class, widest margin first, among those the model gives that class and on which each
    of the class's features carries at least MIN_SHARE of what they add to its logit."""
    modules = dict(model.named_modules())
    head = modules[entry.head]  # type: ignore[attr-defined]
    logits = _logits(model, pool, entry, head)
    shares = _shares(_head_inputs(model, head, pool, entry), head.weight.detach().reshape(head.weight.shape[0], -1).numpy())
    decision = logits.argmax(1)
    ranked = np.sort(logits, axis=1)
    margin = ranked[:, -1] - ranked[:, -2]
    picked = []
    for c in range(num_classes):
        mine = np.flatnonzero(decision == c)
        fair = mine[shares[mine, c] >= MIN_SHARE]
        if len(fair) < per_class:
            raise RuntimeError(
                f"{entry.name}: only {len(fair)} of {len(pool)} clips are class {c} with every feature of it "  # type: ignore[attr-defined]
                f"carrying {MIN_SHARE:.0%} of its logit ({len(mine)} are class {c})"
            )
        picked.extend(fair[np.argsort(-margin[fair])][:per_class].tolist())
    picked.sort()
    return pool[picked], decision[picked].astype(np.int64)


def _shares(features: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(N, C): the least share that one of class c's features (non-zero weights) carries of Σ |w·f| over them, taken
    with its sign (a feature working against its class counts as negative)."""
    contribution = features[:, None, :] * weight[None, :, :]
    total = np.abs(contribution).sum(axis=2, keepdims=True)
    share = contribution / np.maximum(total, 1e-12)
    return np.where(weight[None] != 0, share, np.inf).min(axis=2)
