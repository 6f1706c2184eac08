"""The ONNX interpreter on a default-exporter (torch.export-based, dynamic batch) file: agreement and cost.

Exports C3DSmall with torch.onnx's default exporter (slow: ~10-20 s, which is why this is a bench and
not a test), loads it through workers.loader (onnx.checker, interpreter, onnxruntime check), checks
outputs against onnxruntime and input gradients against the original module at two batch sizes, and
times, in one process and thread count:
  baseline     onnxruntime's forward pass (CPU provider)
  interpreter  the interpreter's forward pass (no grad)
  torch        the original nn.Module's forward pass
The ratios interpreter/onnxruntime and interpreter/torch are the result.

With --zoo, every named model of workers.samples.zoo (reduced video architectures) is exported by both
ONNX exporters and, per file, the interpreter's build is timed against creating an onnxruntime session
(the load-time check creates one anyway, so a build within a small multiple of it keeps loading fast),
whole loads through workers.loader (build + check against onnxruntime), and forward passes.

    python bench/onnx_interpreter.py [--batch N] [--repeats R] [--threads T] [--zoo swin3d,mvit,... | --zoo all]
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
    parser.add_argument("--zoo", default="", help="comma-separated zoo model names, or 'all'")
    parser.add_argument("--device", default="cpu", help="where the interpreter runs in --zoo (cuda: outputs checked against onnxruntime on CPU)")
    parser.add_argument("--exporters", default="onnx_legacy,onnx_dynamo")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.zoo:
        zoo_bench(args.zoo, args.repeats, args.threads, args.device, args.exporters.split(","))
        return
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


def zoo_bench(names: str, repeats: int, threads: int, device: str = "cpu", exporters: list[str] | None = None) -> None:
    """Build time / onnxruntime session time, load time and forward ratio for zoo models, both exporters.

    On another device the interpreter's module is moved there: its outputs are checked against onnxruntime's
    (CPU), input gradients must be finite and non-zero, and the forward time is compared with onnxruntime's."""
    import onnx
    import onnxruntime as ort

    from workers.onnx_interpreter import build_module
    from workers.samples import zoo
    from workers.samples.zoo.export import export_zoo_model

    chosen = zoo.names() if names == "all" else names.split(",")
    print(f"device {device}")
    print(f"{'model':14s} {'exporter':12s} {'nodes':>6s} {'build s':>8s} {'ort s':>7s} {'build/ort':>9s} {'load s':>7s} "
          f"{'fwd/ort':>8s} {'max|diff|':>9s}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            for fmt in exporters or ["onnx_legacy", "onnx_dynamo"]:
                exported = export_zoo_model(name, fmt, tmp)
                proto = onnx.load(str(exported.path))  # reads the dynamo exporter's external data
                inline = Path(tmp) / f"{name}.{fmt}.inline.onnx"
                onnx.save(proto, str(inline))
                data = inline.read_bytes()
                t_build = _best(lambda: build_module(proto), repeats)
                t_session = _best(lambda: ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"]), repeats)
                start = time.perf_counter()
                loaded = load_model(inline, "ONNX", zoo.ZOO[name].header)
                t_load = time.perf_counter() - start
                session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
                x = zoo.example(name, 2)
                feed = {session.get_inputs()[0].name: x.numpy()}
                reference = session.run(None, feed)[0]
                t_ort = _best(lambda: session.run(None, feed), repeats)
                module = loaded.module.to(device)
                xd = x.to(device)

                def forward() -> None:
                    module(xd)
                    sync()

                with torch.no_grad():
                    t_ours = _best(forward, repeats)
                    diff = float(np.abs(module(xd).cpu().numpy() - reference).max())
                xg = xd.clone().requires_grad_(True)
                module(xg).square().sum().backward()
                assert xg.grad is not None and bool(torch.isfinite(xg.grad).all()) and float(xg.grad.abs().sum()) > 0
                assert diff <= 1e-3 * max(1.0, float(np.abs(reference).max())), diff
                print(f"{name:14s} {fmt:12s} {len(proto.graph.node):6d} {t_build:8.3f} {t_session:7.3f} {t_build / t_session:9.2f} "
                      f"{t_load:7.2f} {t_ours / t_ort:8.2f} {diff:9.1e}", flush=True)

if __name__ == "__main__":
    main()
