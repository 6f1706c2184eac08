"""The ONNX interpreter on a default-exporter (torch.export-based, dynamic batch) file: agreement and cost.

Exports C3DSmall with torch.onnx's default exporter (slow: ~10-20 s, which is why this is a bench and
not a test), loads it through workers.loader (onnx.checker, interpreter, onnxruntime check), checks
outputs against onnxruntime and input gradients against the original module at two batch sizes, and
times, in one process and thread count:
  baseline     onnxruntime's forward pass (CPU provider)
  interpreter  the interpreter's forward pass (no grad)
  torch        the original nn.Module's forward pass
The ratios interpreter/onnxruntime and interpreter/torch are the result.

    python bench/onnx_interpreter.py [--batch N] [--repeats R] [--threads T]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.loader import load_model  # noqa: E402
from workers.samples.models import C3DSmall, export_onnx  # noqa: E402


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = C3DSmall().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c3d.onnx"
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, path, dynamic_batch=True)
        print(f"default exporter: {time.perf_counter() - start:.1f} s")
        loaded = load_model(path, "ONNX", {})
        data = path.read_bytes()
    module = loaded.module
    print(f"load check vs onnxruntime: max |diff| {loaded.info['onnx_max_abs_diff']:.2e} (tolerance {loaded.info['onnx_tolerance']:.0e})")
    print(f"layers: {sorted(module.layers)}")

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    for batch in (1, args.batch):
        x = torch.randn(batch, 3, 8, 32, 32, generator=torch.Generator().manual_seed(batch))
        reference = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        xi = x.clone().requires_grad_(True)
        ours = module(xi)
        ours.square().sum().backward()
        xt = x.clone().requires_grad_(True)
        model(xt).square().sum().backward()
        out_diff = float(np.abs(ours.detach().numpy() - reference).max())
        grad_diff = float((xi.grad - xt.grad).abs().max() / xt.grad.abs().max())
        print(f"batch {batch}: max |out - onnxruntime| {out_diff:.2e}; max relative |grad - torch grad| {grad_diff:.2e}")
        assert out_diff <= 1e-4 * max(1.0, float(np.abs(reference).max()))
        assert grad_diff <= 1e-4

    x = torch.randn(args.batch, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    feed = {session.get_inputs()[0].name: x.numpy()}
    t_ort = _best(lambda: session.run(None, feed), args.repeats)
    with torch.no_grad():
        t_ours = _best(lambda: module(x), args.repeats)
        t_torch = _best(lambda: model(x), args.repeats)
    print(f"forward, batch {args.batch}, {args.threads} thread(s): interpreter / onnxruntime = {t_ours / t_ort:.2f}x, "
          f"interpreter / torch = {t_ours / t_torch:.2f}x")


if __name__ == "__main__":
    main()
