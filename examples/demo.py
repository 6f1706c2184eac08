"""The kernelscope demo: build sample video models, start the embedded stack, run all three analyses
through the SDK, and write an HTML report.

    python examples/demo.py [--out out/demo] [--quick]

Everything is made here: synthetic motion clips (gratings and textures drifting in four directions;
the class is the direction), a small C3D-like 3D CNN and a small 3TConv network trained on them for a
few seconds each. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_samples(out: Path, quick: bool) -> dict[str, Path]:
    """Train and export the sample models, and write the labelled clips the class_filters task reads."""
    import numpy as np
    import torch

    from workers.samples.models import INPUT_SPEC, export_pt2, train_c3d
    from workers.samples.motion import motion_clips
    from workers.samples.tconv_model import train_tconv

    torch.set_num_threads(2)
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    c3d, metrics = train_c3d(seed=0)
    print(f"  C3D-like model: eval accuracy {metrics['eval_accuracy']:.3f} in {metrics['seconds']:.1f}s")
    export_pt2(c3d, models / "c3d.pt2")
    tconv, tmetrics = train_tconv(seed=0)
    print(f"  3TConv model: eval accuracy {tmetrics['eval_accuracy']:.3f} in {tmetrics['seconds']:.1f}s")
    export_pt2(tconv, models / "tconv.pt2")
    x, y, names = motion_clips(n_per_class=40 if quick else 100, seed=123)
    np.savez_compressed(models / "clips.npz", x=x, y=y, class_names=np.asarray(names))
    print(f"  samples built in {time.monotonic() - t0:.1f}s; input spec {INPUT_SPEC.shape}")
    return {"c3d": models / "c3d.pt2", "tconv": models / "tconv.pt2", "clips": models / "clips.npz"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "out" / "demo"))
    parser.add_argument("--quick", action="store_true", help="fewer optimisation steps and samples")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out)
    started = time.monotonic()

    print("1/3 building sample models and data")
    paths = build_samples(out, args.quick)
    spec = {"mean": [0.5] * 3, "std": [0.25] * 3, "value_min": 0.0, "value_max": 1.0}
    steps = 64 if args.quick else 128

    import sdk

    print("2/3 starting the embedded stack (Redis, server, worker)")
    with sdk.Client.local(workers=args.workers) as client:
        print(f"  serving on {client.target}")
        print("3/3 analysing through the SDK")
        c3d = client.analyze(
            paths["c3d"],
            tasks=[
                {"kernel_viz": {"layers": ["conv1", "conv2"], "steps": steps, "seed": 0}},
                {"tconv_stats": {"seed": 0}},
                {"class_filters": {"seed": 0}},
                "describe",
            ],
            dataset=paths["clips"],
            input_spec=spec,
            name="c3d-small",
            raise_on_error=False,
        )
        tconv = client.analyze(paths["tconv"], tasks=[{"tconv_stats": {"seed": 0}}, "describe"], input_spec=spec, name="tconv-small", raise_on_error=False)
        reports = {}
        for label, result in (("c3d", c3d), ("tconv", tconv)):
            target = out / label
            result.download(target)
            reports[label] = result.save_report(target / "report.html")
            print(f"  {label}: job {result.id} {result.to_dict()['state']}")
            for task in result.tasks:
                status = "ok" if task.ok else f"{task.error['code']} {task.error['reason']}: {task.error['message']}"
                print(f"    {task.task:<14} {status}  ({task.duration_seconds:.1f}s, {len(task.artifacts)} artifacts)")
        _print_highlights(c3d, tconv)

    print(f"\ndone in {time.monotonic() - started:.0f}s")
    for label, report in reports.items():
        print(f"  report ({label}): {report}")
    print(f"  artifacts: {out}")
    return 0 if c3d.ok and tconv.ok else 1


def _print_highlights(c3d, tconv) -> None:  # noqa: ANN001 - sdk.Result
    """The findings a person would look for first, per model and task; the reports and job.json have the rest."""
    from sdk import findings

    print("\nfindings (full summaries in each job.json):")
    for label, result in (("c3d", c3d), ("tconv", tconv)):
        print(f" {label}:")
        print("\n".join(findings.lines(result)))


if __name__ == "__main__":
    sys.exit(main())
