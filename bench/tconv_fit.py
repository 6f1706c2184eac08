"""Benchmark the 3T fit: batched vs one filter at a time, the R3D-18 stem, and tconv_stats on a whole R3D-18.

1. Ratio: 3T-fit every filter of a 64×64×3×3×3 Conv3d layer batched vs one filter at a time, both in this
   process on the same weights with the same options. The runs alternate `--repeats` times and each side
   keeps its fastest run (on a shared machine the slow runs measure the neighbours, not the fit); the figure
   is the ratio of those (batched speed / one-at-a-time speed), with the spread of the per-round ratios.
   Weights are seeded Gaussian noise, the hardest case for the fit (no filter is exactly 3T, so no row stops
   at an exact fit), unless --planted asks for kernels built by 3T.
2. --stem: the plain and the gain fit of a 64×3×3×7×7 layer (R3D-18's stem, kaiming-uniform init like an
   untrained model; fastest of --repeats).
3. --model: tconv_stats with its default options on a full-width R3D-18 (the zoo's torchvision-faithful
   builder; input 3×16×112×112), timed end to end and per layer.

    python bench/tconv_fit.py [--filters 64] [--in-channels 64] [--restarts 4] [--steps 200] [--gain] [--planted]
                              [--repeats 5] [--stem] [--model] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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


def _timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def ratio(args: argparse.Namespace) -> None:
    weight = _weights(args.filters, args.in_channels, args.planted, args.seed).to(args.device)
    options = dict(gain=args.gain, restarts=args.restarts, steps=args.steps, seed=args.seed)
    fit_3t(weight[:2], **options)  # warm-up: first-call costs are not the fit's
    n = args.filters
    batched_s, single_s, rounds = [], [], []
    for _ in range(args.repeats):
        batched, tb = _timed(lambda: fit_3t(weight, **options))
        single, ts = _timed(lambda: np.concatenate([fit_3t(weight[i : i + 1], **options).residual for i in range(n)]))
        batched_s.append(tb)
        single_s.append(ts)
        rounds.append(ts / tb)
    tb, ts = min(batched_s), min(single_s)
    kind = "3T+gain" if args.gain else "plain 3T"
    data = "planted 3T kernels" if args.planted else "Gaussian noise"
    print(f"layer {n}x{args.in_channels}x3x3x3 ({data}), {kind}, restarts={args.restarts}, steps<={args.steps}, "
          f"threads={args.threads}, device={args.device}, fastest of {args.repeats} alternating rounds")
    print(f"batched        : {tb:8.2f} s  {n / tb:8.1f} filters/s  mean residual {np.nanmean(batched.residual):.4f}")
    print(f"one at a time  : {ts:8.2f} s  {n / ts:8.1f} filters/s  mean residual {np.nanmean(single):.4f}")
    print(f"ratio (batched speed / one-at-a-time speed): {ts / tb:.1f}x  "
          f"(per round: median {statistics.median(rounds):.1f}x, min {min(rounds):.1f}x, max {max(rounds):.1f}x)")


def stem(args: argparse.Namespace) -> None:
    weight = torch.nn.init.kaiming_uniform_(torch.empty(64, 3, 3, 7, 7), a=5**0.5, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    options = dict(restarts=args.restarts, steps=args.steps, seed=args.seed)
    fit_3t(weight[:2], **options)
    plain_s, gain_s = [], []
    for _ in range(max(1, args.repeats // 2)):
        plain, t_plain = _timed(lambda: fit_3t(weight, **options))
        gained, t_gain = _timed(lambda: fit_3t(weight, gain=True, warm_start=plain, **options))
        plain_s.append(t_plain)
        gain_s.append(t_gain)
    print(f"stem 64x3x3x7x7 (kaiming-uniform), restarts={args.restarts}, steps<={args.steps}, threads={args.threads}")
    print(f"plain 3T fit   : {min(plain_s):8.2f} s  mean residual {plain.residual.mean():.4f}")
    print(f"gain variant   : {min(gain_s):8.2f} s  mean residual {gained.residual.mean():.4f} (warm-started from the plain fit)")


def model(args: argparse.Namespace) -> None:
    from workers.context import TaskContext
    from workers.input_spec import InputSpec
    from workers.job import perform
    from workers.model import LoadedModel
    from workers.samples.zoo import video_resnet

    torch.manual_seed(args.seed)
    net = video_resnet.r3d_18(400, width=64).eval().to(args.device)
    spec = InputSpec(shape=(3, 16, 112, 112))
    stages: list[tuple[str, float]] = []
    started = time.perf_counter()

    def progress(stage: str, _fraction: float) -> None:
        if not stages or stages[-1][0] != stage:
            stages.append((stage, time.perf_counter() - started))

    with tempfile.TemporaryDirectory() as out:
        ctx = TaskContext(model=LoadedModel.from_module(net, spec), out_dir=Path(out), progress=progress)
        summary, total = _timed(lambda: perform("tconv_stats", ctx, {}))
        json_bytes = (Path(out) / "tconv_stats" / "tconv_stats.json").stat().st_size
    fitted = [layer for layer in summary["layers"] if layer["kind"] == "Conv3d-fit"]
    filters = sum(layer["filters"] for layer in fitted)
    print(f"tconv_stats, default options, R3D-18 (full width, 3x16x112x112), torch threads={torch.get_num_threads()}")
    print(f"total          : {total:8.1f} s for {len(fitted)} fitted layers, {filters} filters (plain and gain fits)")
    print(f"summary JSON   : {json_bytes / 1e6:.2f} MB; explainable share {summary['model']['explainable_share']}")
    for (stage, at), nxt in zip(stages, stages[1:] + [("end", total)]):
        print(f"  {stage:32s} {nxt[1] - at:7.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--in-channels", type=int, default=64)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gain", action="store_true", help="fit the gain variant instead of plain 3T")
    parser.add_argument("--planted", action="store_true", help="kernels built by 3T instead of noise")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds; each side keeps its fastest")
    parser.add_argument("--stem", action="store_true", help="also time the fits of R3D-18's 64x3x3x7x7 stem")
    parser.add_argument("--model", action="store_true", help="also time tconv_stats on a whole R3D-18 (minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the cores are shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (bench/gpu.sh runs it on cuda)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ratio(args)
    if args.stem:
        stem(args)
    if args.model:
        model(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
