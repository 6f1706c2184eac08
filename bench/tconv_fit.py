"""Benchmark: 3T-fit every filter of a 64×64×3×3×3 Conv3d layer batched vs one filter at a time.

Both runs happen in this process on the same weights with the same options; the figure that matters
is the ratio (batched speed / one-at-a-time speed), not the absolute seconds. The weights are seeded
Gaussian noise, the hardest case for the fit (no filter is exactly 3T, so no row stops early), unless
--planted asks for kernels built by 3T.

    python bench/tconv_fit.py [--filters 64] [--in-channels 64] [--restarts 4] [--steps 200] [--gain] [--planted]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.tconv import build_kernel, fit_3t  # noqa: E402


def _weights(filters: int, in_channels: int, planted: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if not planted:
        return torch.randn((filters, in_channels, 3, 3, 3), generator=g)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((2, filters), generator=g)  # noqa: E731
    base = torch.randn((filters, in_channels, 1, 3, 3), generator=g)
    return build_kernel(base, u(0.9, 1.1), u(-0.2, 0.2), u(-0.4, 0.4), u(-0.4, 0.4))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--in-channels", type=int, default=64)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gain", action="store_true", help="fit the gain variant instead of plain 3T")
    parser.add_argument("--planted", action="store_true", help="kernels built by 3T instead of noise")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the cores are shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (bench/gpu.sh runs it on cuda)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weight = _weights(args.filters, args.in_channels, args.planted, args.seed).to(args.device)
    options = dict(gain=args.gain, restarts=args.restarts, steps=args.steps, seed=args.seed)
    fit_3t(weight[:2], **options)  # warm-up: first-call costs are not the fit's

    started = time.perf_counter()
    batched = fit_3t(weight, **options)
    t_batched = time.perf_counter() - started

    started = time.perf_counter()
    single = np.concatenate([fit_3t(weight[i : i + 1], **options).residual for i in range(args.filters)])
    t_single = time.perf_counter() - started

    n = args.filters
    kind = "3T+gain" if args.gain else "plain 3T"
    data = "planted 3T kernels" if args.planted else "Gaussian noise"
    print(f"layer {n}x{args.in_channels}x3x3x3 ({data}), {kind}, restarts={args.restarts}, steps<={args.steps}, threads={args.threads}, device={args.device}")
    print(f"batched        : {t_batched:8.2f} s  {n / t_batched:8.1f} filters/s  mean residual {np.nanmean(batched.residual):.4f}")
    print(f"one at a time  : {t_single:8.2f} s  {n / t_single:8.1f} filters/s  mean residual {np.nanmean(single):.4f}")
    print(f"ratio (batched speed / one-at-a-time speed): {t_single / t_batched:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
