"""A tiny CNN wired by hand so that each class is decided by a known subset of its filters.

conv → ReLU → global average pool → Linear, on two input channels: a scene (background, noise and
patterns) and a sensor-noise channel. Filter i's kernel is template i; an image of class k holds,
at random places, the templates of that class's filters S_k, and the head adds up S_k for class k.
So the answer to "which filters carry class k" is S_k by construction. Traps that make it a test:
- "loud" shared filters (constant kernels) respond strongly to the scene's background in every
  class and carry a small, equal weight for every class: they dominate activation-based
  rankings while deciding nothing;
- spare filters hold templates no class uses;
- one noise filter per class reads the sensor-noise channel (independent templates, so the
  classes' noise terms are independent and identically distributed): a small random term in
  every logit. With a class's evidence removed, its decision is then a fair draw among the
  classes, i.e. chance, instead of a tie that argmax would always break towards class 0.
Filter indices are shuffled, so a ranking that merely returns the first filters cannot pass.

Templates are orthonormal and zero-mean (aligned patterns do not excite each other's filters
and the constant kernels ignore them); the pattern filters' bias sits well above the background
noise and most of the cross-talk of shifted templates.
Works as a 2-D image model (kernel 5×5) or a 3-D video model (kernel 3×3×3).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from workers.input_spec import InputSpec

# The grid of cells a pattern may occupy (per spatial axis) and the margin around it inside a cell.
_GRID = 4
_MARGIN = 1
# Network-side (normalised) levels of the scene: background, pattern amplitude range, noise std,
# and the pattern filters' threshold (relative to a unit-norm template).
_BACKGROUND = 0.5
_AMPLITUDE = (1.0, 1.4)
_NOISE = 0.05
_THRESHOLD = 0.6
# Sensor-noise channel: std, and the noise filters' threshold in units of it (rare, Poisson-like events).
_SENSOR_NOISE = 1.0
_SENSOR_THRESHOLD = 2.5
# Raw values are half the normalised ones: the input spec's std of 0.5 doubles them.
_RAW_SCALE = 0.5
# Head weight of every class on the loud shared filters (equal: they cannot change the argmax).
_SHARED_WEIGHT = 0.01
# Mean logit a class's noise filter adds (small next to the ~1 each present pattern adds).
_NOISE_LOGIT = 0.1


class HandWiredCNN(nn.Module):
    """subsets[k]: the planted filter indices of class k; shared: the loud filters; spare: unused templates."""

    def __init__(self, num_classes: int = 4, per_class: int = 5, shared: int = 2, spare: int = 3, video: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.video = video
        self.kernel = 3 if video else 5
        dims = 3 if video else 2
        patterns = num_classes * per_class + spare
        if patterns > self.kernel**dims - 1:
            raise ValueError(f"{patterns} patterns do not fit {self.kernel ** dims - 1} orthogonal zero-mean templates")
        rng = np.random.default_rng(seed)
        width = patterns + shared + num_classes
        slots = rng.permutation(width)  # slot j of the planted layout becomes filter slots[j]
        self.subsets = [sorted(int(s) for s in slots[k * per_class : (k + 1) * per_class]) for k in range(num_classes)]
        self.spare = sorted(int(s) for s in slots[num_classes * per_class : patterns])
        self.shared = sorted(int(s) for s in slots[patterns : patterns + shared])
        self.noise = [int(s) for s in slots[patterns + shared :]]  # noise[k] feeds class k
        cell = self.kernel + 2 * _MARGIN
        spatial = (self.kernel + 1, _GRID * cell, _GRID * cell) if video else (_GRID * cell, _GRID * cell)
        bound = _RAW_SCALE * 5.0 * _SENSOR_NOISE
        self.input_spec = InputSpec(shape=(2, *spatial), value_min=-bound, value_max=bound, mean=(0.0, 0.0), std=(_RAW_SCALE, _RAW_SCALE))

        conv_type = nn.Conv3d if video else nn.Conv2d
        self.conv = conv_type(2, width, kernel_size=self.kernel)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1) if video else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

        kernel_shape = (self.kernel,) * dims
        templates = _orthonormal_zero_mean(patterns, int(np.prod(kernel_shape)), rng)
        self.templates = {int(slots[j]): templates[j].reshape(kernel_shape) for j in range(patterns)}
        out_positions = int(np.prod([s - self.kernel + 1 for s in spatial]))
        # Expected pooled activation of a filter whose pattern is present once: (A − threshold) / positions.
        own = (float(np.mean(_AMPLITUDE)) - _THRESHOLD) / out_positions
        # Pooled activation of a noise filter: E[relu(n − τ)] for n ~ N(0, σ), τ = _SENSOR_THRESHOLD σ.
        tau = _SENSOR_THRESHOLD
        noise_mean = _SENSOR_NOISE * (np.exp(-0.5 * tau**2) / np.sqrt(2 * np.pi) - tau * 0.5 * math.erfc(tau / math.sqrt(2)))
        sensor = np.linalg.qr(rng.standard_normal((int(np.prod(kernel_shape)), num_classes)))[0].T
        weight = torch.zeros(width, 2, *kernel_shape)
        bias = torch.zeros(width)
        head = torch.zeros(num_classes, width)
        for index, template in self.templates.items():
            weight[index, 0] = torch.as_tensor(template, dtype=torch.float32)
            bias[index] = -_THRESHOLD
        for j, index in enumerate(self.shared):
            weight[index, 0] = 1.0 - 0.2 * j  # constant kernels: loud on any background
            head[:, index] = _SHARED_WEIGHT
        for k, subset in enumerate(self.subsets):
            head[k, subset] = 1.0 / own  # each present pattern adds about 1 to its class logit
        for k, index in enumerate(self.noise):
            weight[index, 1] = torch.as_tensor(sensor[k].reshape(kernel_shape), dtype=torch.float32)
            bias[index] = -_SENSOR_THRESHOLD * _SENSOR_NOISE
            head[k, index] = _NOISE_LOGIT / noise_mean
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
            self.fc.weight.copy_(head)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))

    def images(self, n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Raw inputs (N, 2, *spatial) float32 and labels (N,) int64: class k holds each template of S_k once."""
        rng = np.random.default_rng(seed)
        num_classes = len(self.subsets)
        shape = self.input_spec.shape
        cell = self.kernel + 2 * _MARGIN
        x = np.empty((num_classes * n_per_class, *shape), dtype=np.float32)
        y = np.repeat(np.arange(num_classes), n_per_class).astype(np.int64)
        for n, k in enumerate(y):
            image = _BACKGROUND + _NOISE * rng.standard_normal(shape[1:])
            cells = rng.choice(_GRID * _GRID, size=len(self.subsets[k]), replace=False)
            for index, where in zip(self.subsets[k], cells):
                row, col = divmod(int(where), _GRID)
                top, left = row * cell + _MARGIN, col * cell + _MARGIN
                amplitude = rng.uniform(*_AMPLITUDE)
                patch = amplitude * self.templates[index]
                if self.video:
                    start = int(rng.integers(0, shape[1] - self.kernel + 1))
                    image[start : start + self.kernel, top : top + self.kernel, left : left + self.kernel] += patch
                else:
                    image[top : top + self.kernel, left : left + self.kernel] += patch
            x[n, 0] = _RAW_SCALE * image
            x[n, 1] = _RAW_SCALE * _SENSOR_NOISE * rng.standard_normal(shape[1:])
        return x, y


def _orthonormal_zero_mean(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(count, size) orthonormal rows, each orthogonal to the constant vector."""
    basis = np.concatenate([np.ones((size, 1)), rng.standard_normal((size, count))], axis=1)
    q, _ = np.linalg.qr(basis)
    return q[:, 1 : count + 1].T
