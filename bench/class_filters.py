"""What class_filters costs beyond the forward pass, as a ratio to the forward pass itself.

Default size: 10 000 samples × 512 filters × 100 classes, a 3D CNN whose last conv has 512 filters
(global average pool, Linear 512 → 100). Timed in one process, same threads:
  baseline   the plain forward pass over every sample (no hooks, no grad), batch 64
  hooked     activations.collect: the same pass with the hook, reductions and copies
  analysis   analysis.analyse: rankings, MI + shuffled baseline (binned; kNN too when fit samples ×
             filters ≤ analysis.KNN_AUTO_VALUES or --mi-estimator knn), selectivity, Ψ, the three subset
             sizes, restricted model, ablations, bootstrap (20 resamples)
The ratios are the result; the model is deliberately small (~10 M multiply-adds per sample), so
for a real network the analysis is a smaller share still. --layer conv measures the gradient ×
activation path with mean ablation instead (its restriction re-runs the network per mask).

    python bench/class_filters.py [--samples N] [--filters D] [--classes C] [--threads T] [--layer conv]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# numpy's BLAS gets the same thread count as torch (before numpy loads): the comparison is then fair,
# and tiny matrix products do not stall on idle BLAS threads of a busy machine.
_THREADS = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.class_filters import Options, analyse, collect, restriction_for, stratified_split  # noqa: E402
from workers.class_filters.activations import BATCH_SIZE, model_batches  # noqa: E402
from workers.input_spec import InputSpec  # noqa: E402
from workers.model import LoadedModel  # noqa: E402


class BenchNet(nn.Module):
    def __init__(self, filters: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv = nn.Conv3d(32, filters, 3, padding=1, stride=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(filters, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(self.relu1(self.conv1(x))))), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--filters", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layer", default="", help="empty: the last Linear's input (exact split); e.g. conv: grad×act")
    parser.add_argument("--mi-estimator", default="binned", choices=["binned", "knn"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = InputSpec(shape=(3, 4, 8, 8), mean=(0.5,) * 3, std=(0.25,) * 3)
    model = LoadedModel.from_module(BenchNet(args.filters, args.classes), spec)
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, *spec.shape), dtype=np.float32)
    y = np.arange(args.samples) % args.classes
    options = Options(layer=args.layer, mi_estimator=args.mi_estimator)
    split = stratified_split(y, options.fit_fraction, options.seed)

    rows = np.arange(args.samples)
    with torch.no_grad():  # warm-up: first-call allocations are nobody's cost
        for _, xb in model_batches(model, x, rows[: 2 * BATCH_SIZE], torch.device("cpu"), BATCH_SIZE):
            model.module(xb)

    clock = _Clock()
    with torch.no_grad():
        for _, xb in model_batches(model, x, rows, torch.device("cpu"), BATCH_SIZE):
            model.module(xb)
    baseline = clock.lap()
    acts = collect(model, x, y, split.fit, layer=args.layer)
    hooked = clock.lap()
    stages: list[tuple[str, tuple[float, float]]] = []
    restriction = restriction_for(acts, split.eval, model, x)
    result = analyse(acts, y, split, options, restriction, on_stage=lambda stage, _f: stages.append((stage, clock.now())))
    analysis = clock.lap()
    end = clock.now()

    print(
        f"class_filters bench: {args.samples} samples × {acts.num_filters} filters × {acts.num_classes} classes, "
        f"layer {acts.layer} ({acts.attribution}), {args.threads} thread(s)"
    )
    print(f"  {'':<30} {'cpu s':>8} {'ratio':>6}   {'wall s':>8} {'ratio':>6}")
    _row("forward pass (baseline)", baseline, baseline)
    _row("hooked pass (collect)", hooked, baseline)
    _row("analysis beyond the pass", analysis, baseline)
    for (stage, at), (_, until) in zip(stages, stages[1:] + [("end", end)]):
        if stage == "done":
            continue
        _row(f"  {stage}", (until[0] - at[0], until[1] - at[1]), baseline)
    g = result.summary["global"]
    knn = f"kNN MIS {g['mis_knn_nats']:.4f} vs {g['mis_knn_nats_shuffled']:.4f} nats" if g["mis_knn_nats"] is not None else f"kNN MIS not computed: {g['mis_knn_skipped']}"
    print(f"  (sanity on random labels: binned MIS {g['mis_binned_bits']:.4f} vs shuffled {g['mis_binned_bits_shuffled']:.4f} bits; {knn}; accuracy {g['accuracy_full']:.3f})")


class _Clock:
    """Process CPU time (robust on a shared machine) and wall time, lap by lap."""

    def __init__(self) -> None:
        self._last = self.now()

    @staticmethod
    def now() -> tuple[float, float]:
        return time.process_time(), time.perf_counter()

    def lap(self) -> tuple[float, float]:
        now = self.now()
        spent = (now[0] - self._last[0], now[1] - self._last[1])
        self._last = now
        return spent


def _row(label: str, spent: tuple[float, float], baseline: tuple[float, float]) -> None:
    print(f"  {label:<30} {spent[0]:8.2f} {spent[0] / baseline[0]:6.2f}   {spent[1]:8.2f} {spent[1] / baseline[1]:6.2f}")


if __name__ == "__main__":
    main()
