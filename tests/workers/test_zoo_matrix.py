"""The zoo matrix: every architecture users bring (workers.samples.zoo) × every way PyTorch exports it × every
task: each export goes through the SDK's upload preparation (format told from the content; an .onnx with its
external data becomes one ONNX bundle), is loaded with workers.loader.load_model as the worker loads the
upload, and every task runs in process through its entry point.

Each model carries planted answers (workers.samples.zoo.planted): a drifting grating in stem filter 0 and
inflated 2D kernels in the other stem filters (where the stem spans frames and pixels), and a head in which
each class reads its own 5 features. Each cell asserts a fact, not just that it ran:

- describe lists every conv layer and the head by their module paths (the same in every format);
- kernel_viz recovers the grating's direction in stem filter 0, reports no motion for one-frame kernels, and
  visualises a conv in the body;
- tconv_stats finds the inflated stem filters to be the identity transform, and does not call a kernel with
  1 × 1 spatial extent explainable;
- class_filters is right on every clip of the labelled set (the planted model's own decisions) and returns
  each class's planted features.

A refusal passes a cell only where it names the op it cannot run (an ONNX op of the graph, or an aten op) and
says which format to use instead. Exports run once per session in a worker process (pipelined with the
cells); with KERNELSCOPE_ZOO_STATUS=path the session writes every cell's status and time there as markdown.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import time
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from kernelscope.v1 import models_pb2
from sdk.model_source import prepare
from workers.context import TaskContext
from workers.dataset import Dataset
from workers.errors import TaskError
from workers.job import perform
from workers.loader import load_model
from workers.model import LoadedModel
from workers.samples.zoo import ZOO, names
from workers.samples.zoo.export import FORMATS, PlantedExports, export_planted
from workers.samples.zoo.planted import GRATING_DIRECTION_DEG


TASKS = ("describe", "kernel_viz", "tconv_stats", "class_filters")
# Architectures whose exports or tasks take longest; CI runs them in the slow set.
HEAVY = frozenset({"s3d", "swin3d", "mvit", "slowfast_r50"})
EXPORT_TIMEOUT_S = 900
KERNEL_VIZ = {"channels": [0, 1], "steps": 16, "seed": 0}
TCONV = {"restarts": 0, "fit_steps": 5, "seed": 0}
CLASS_FILTERS = {"bootstrap": 0, "seed": 0}
GRATING_TOLERANCE_DEG = 20.0
STATUS_ENV = "KERNELSCOPE_ZOO_STATUS"
# Where the tasks run: "cpu" here and in CI; bench/gpu.sh sets "cuda" to run the whole matrix on a GPU.
DEVICE_ENV = "KERNELSCOPE_TEST_DEVICE"

# Cells that do not give their planted answer yet, each with the first line of what it says today. Strict: a cell
# that starts passing fails the run until it is taken off this list, so the list only ever shrinks.
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {}


def _marks(arch: str, fmt: str, task: str) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow] if arch in HEAVY else []
    reason = KNOWN_FAILURES.get((arch, fmt, task))
    if reason:
        marks.append(pytest.mark.xfail(strict=True, reason=reason))
    return marks


CELLS = [
    pytest.param(arch, fmt, task, id=f"{arch}-{fmt}-{task}", marks=_marks(arch, fmt, task))
    for arch in names()
    for fmt in FORMATS
    for task in TASKS
]


# ---------------------------------------------------------------- exports and loads, once per session


class ZooSession:
    """Exports every architecture the selected cells need, in one worker process, in cell order (so the cells
    of the first architecture run while the next ones export), and loads each export once."""

    def __init__(self, root: Path, archs: list[str]) -> None:
        self.root = root
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.futures: dict[str, Future[PlantedExports]] = {a: self.pool.submit(export_planted, a, str(root / a)) for a in archs}
        self.loaded: dict[tuple[str, str], LoadedModel | BaseException] = {}
        self.load_seconds: dict[tuple[str, str], float] = {}

    def bundle(self, arch: str) -> PlantedExports:
        if arch not in self.futures:
            self.futures[arch] = self.pool.submit(export_planted, arch, str(self.root / arch))
        return self.futures[arch].result(timeout=EXPORT_TIMEOUT_S)

    def model(self, arch: str, fmt: str) -> LoadedModel:
        """The loaded export (cached); raises the export's or the loader's error, the same for every cell."""
        key = (arch, fmt)
        if key not in self.loaded:
            bundle = self.bundle(arch)
            started = time.perf_counter()
            try:
                if fmt not in bundle.exports:
                    raise RuntimeError(f"export failed: {bundle.errors.get(fmt, '?')}")
                path, declared = _uploaded(bundle.exports[fmt].path, ZOO[arch].header)
                self.loaded[key] = load_model(path, declared, ZOO[arch].header, name=arch, device=_device())
            except Exception as exc:  # noqa: BLE001 - every cell of this export reports it
                self.loaded[key] = exc
            self.load_seconds[key] = time.perf_counter() - started
        found = self.loaded[key]
        if isinstance(found, BaseException):
            raise found
        return found

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _device() -> torch.device:
    return torch.device(os.environ.get(DEVICE_ENV, "cpu"))


def _uploaded(path: Path, header: dict[str, Any]) -> tuple[Path, str]:
    """The file and format the worker receives when a user uploads `path` with the SDK: the SDK tells the format
    from the content and sends an .onnx with its external data files as one ONNX bundle."""
    source = prepare(path, input_spec=header)
    declared = models_pb2.ModelFormat.Name(source.format)
    if source.data is None:
        assert source.path is not None
        return source.path, declared
    upload = path.with_name(path.name + ".upload")
    upload.write_bytes(source.data)
    return upload, declared


@pytest.fixture(scope="session")
def zoo_session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooSession]:
    mine = [item for item in request.session.items if getattr(getattr(item, "module", None), "__name__", "") == __name__]
    selected = [item.callspec.params["arch"] for item in mine if hasattr(item, "callspec")]
    session = ZooSession(tmp_path_factory.mktemp("zoo"), list(dict.fromkeys(selected)))
    yield session
    _write_status(session)
    session.close()


# ---------------------------------------------------------------- the cells


@pytest.mark.parametrize(("arch", "fmt", "task"), CELLS)
def test_zoo_cell(arch: str, fmt: str, task: str, zoo_session: ZooSession, tmp_path: Path) -> None:
    with _recorded(arch, fmt, task):
        bundle = zoo_session.bundle(arch)
        try:
            model = zoo_session.model(arch, fmt)
            refusal = CHECKS[task](bundle, model, tmp_path)
        except TaskError as exc:
            if not _names_the_op(exc, bundle, fmt):
                raise
            refusal = exc.message
        if refusal:
            RESULTS[(arch, fmt, task)] = ("refused", refusal.splitlines()[0])


def _run(task: str, model: LoadedModel, out_dir: Path, options: dict[str, Any], dataset: Dataset | None = None) -> dict[str, Any]:
    device = _device()
    return perform(task, TaskContext(model=model, out_dir=out_dir, dataset=dataset, device=device), options)


def check_describe(bundle: PlantedExports, model: LoadedModel, out_dir: Path) -> str | None:
    entry = ZOO[bundle.name]
    layers = {layer["name"]: layer for layer in _run("describe", model, out_dir, {})["layers"]}
    expected = [name for name, shape in bundle.layers.items() if len(shape) >= 3] + [entry.head]
    missing = [name for name in expected if name not in layers]
    assert not missing, f"describe misses {len(missing)} of {len(expected)} layers, e.g. {missing[:3]}; it lists {sorted(layers)[:4]}..."
    assert layers[entry.stem]["kernel_shape"] == bundle.layers[entry.stem]
    assert layers[entry.head]["kernel_shape"] == bundle.layers[entry.head]
    return None


def check_kernel_viz(bundle: PlantedExports, model: LoadedModel, out_dir: Path) -> str | None:
    entry = ZOO[bundle.name]
    wanted = [entry.stem] + ([entry.middle] if len(bundle.layers.get(entry.middle, [])) == 5 else [])
    summary = _run("kernel_viz", model, out_dir, {"layers": wanted, **KERNEL_VIZ})
    layers = {layer["name"]: layer for layer in summary["layers"]}
    assert sorted(layers) == sorted(wanted)
    for layer in layers.values():
        assert [c["index"] for c in layer["channels"]] == KERNEL_VIZ["channels"]
        assert all(math.isfinite(c["activation"]) for c in layer["channels"]), layer["channels"]
    stem = layers[entry.stem]["channels"]
    if bundle.grating_filter is not None:
        found = stem[bundle.grating_filter]
        assert not found["dead"] and found["direction_deg"] is not None, found
        assert _angle_error(found["direction_deg"], GRATING_DIRECTION_DEG) <= GRATING_TOLERANCE_DEG, found
    elif bundle.layers[entry.stem][2] == 1:
        moving = [(c["index"], c["direction_deg"], c["speed_px_per_frame"]) for c in stem if c["direction_deg"] is not None]
        assert not moving, f"a one-frame kernel ({entry.stem}) cannot prefer a motion, yet (index, direction, speed) = {moving}"
    return None


def check_tconv_stats(bundle: PlantedExports, model: LoadedModel, out_dir: Path) -> str | None:
    layer = _tconv_layer(bundle)
    shape = bundle.layers[layer]
    flat = shape[3] == shape[4] == 1
    try:
        summary = _run("tconv_stats", model, out_dir, {"layers": [layer], **TCONV})
    except TaskError as exc:
        if flat and re.search(r"1\s*[×x]\s*1|spatial", exc.message):
            return exc.message  # the kernel's 1 × 1 spatial extent, stated: a fair refusal
        raise
    (found,) = summary["layers"]
    assert found["name"] == layer and found["kernel_shape"] == shape
    if bundle.inflated_filters and layer == ZOO[bundle.name].stem:
        inflated = len(bundle.inflated_filters)
        assert found["residual"]["plain"]["min"] < 1e-3, found["residual"]
        assert found["near_identity_share"] >= inflated / (inflated + 1) - 1e-6, found["near_identity_share"]
    elif flat:
        explained = {variant: share for variant, share in (found.get("explainable_share") or {}).items() if share}
        assert not explained, f"{layer} has 1 × 1 spatial kernels, where (s, r, tx, ty) cannot be determined, yet reports explainable shares {explained}"
    else:
        assert found["residual"]["plain"]["count"] == shape[0]
    return None


def check_class_filters(bundle: PlantedExports, model: LoadedModel, out_dir: Path) -> str | None:
    assert bundle.x is not None and bundle.y is not None
    classes = int(bundle.y.max()) + 1
    dataset = Dataset(bundle.x, bundle.y, [f"class{c}" for c in range(classes)])
    summary = _run("class_filters", model, out_dir, CLASS_FILTERS, dataset)
    assert summary["num_filters"] == bundle.layers[ZOO[bundle.name].head][1]
    assert summary["global"]["accuracy_full"] == 1.0
    found = [sorted(entry["subset_k"]) for entry in summary["classes"]]
    assert found == bundle.subsets, f"planted {bundle.subsets}, found {found}"
    return None


# Each check asserts its planted fact and returns None, or returns the message of a fair refusal.
CHECKS: dict[str, Callable[[PlantedExports, LoadedModel, Path], str | None]] = {
    "describe": check_describe,
    "kernel_viz": check_kernel_viz,
    "tconv_stats": check_tconv_stats,
    "class_filters": check_class_filters,
}


def _tconv_layer(bundle: PlantedExports) -> str:
    """The planted stem when it is inflated, else the first conv spanning several frames."""
    stem = ZOO[bundle.name].stem
    if bundle.inflated_filters:
        return stem
    return next(name for name, shape in bundle.layers.items() if len(shape) == 5 and shape[2] > 1)


def _angle_error(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _names_the_op(exc: TaskError, bundle: PlantedExports, fmt: str) -> bool:
    """An acceptable refusal: UNSUPPORTED_OP naming an op the export really holds, and the other format to use."""
    other = r"TORCH_EXPORT|\.pt2|torch\.export" if fmt.startswith("onnx") else r"\bONNX\b"
    if exc.reason != "UNSUPPORTED_OP" or not re.search(other, exc.message):
        return False
    export = bundle.exports.get(fmt)
    if export is None:
        return False
    if fmt.startswith("onnx"):
        import onnx

        graph = onnx.load(str(export.path), load_external_data=False)
        ops = {node.op_type for node in graph.graph.node} | {node.op_type for f in graph.functions for node in f.node}
        return any(re.search(rf"\b{re.escape(op)}\b", exc.message) for op in ops)
    return bool(re.search(r"\baten\.\w+", exc.message))


# ---------------------------------------------------------------- the status table

RESULTS: dict[tuple[str, str, str], tuple[str, str]] = {}
TIMES: dict[tuple[str, str, str], float] = {}


@contextmanager
def _recorded(arch: str, fmt: str, task: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        RESULTS[(arch, fmt, task)] = ("FAIL", f"{type(exc).__name__}: {_first_line(exc)}")
        raise
    else:
        RESULTS.setdefault((arch, fmt, task), ("ok", ""))
    finally:
        TIMES[(arch, fmt, task)] = time.perf_counter() - started


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:240] if text else ""


def _write_status(session: ZooSession) -> None:
    target = os.environ.get(STATUS_ENV)
    if not target or not RESULTS:
        return
    done = {a: f.result() for a, f in session.futures.items() if f.done() and not f.exception()}
    lines = ["# zoo matrix status", "", f"written {time.strftime('%Y-%m-%d %H:%M:%S')} by tests/workers/test_zoo_matrix.py", ""]
    lines += ["## exports (seconds; build = planted model)", "", "| arch | build | " + " | ".join(FORMATS) + " |", "|---" * (len(FORMATS) + 2) + "|"]
    for arch, bundle in done.items():
        cells = [f"{bundle.exports[f].seconds:.1f}" if f in bundle.exports else f"FAIL {bundle.errors.get(f, '')[:60]}" for f in FORMATS]
        lines.append(f"| {arch} | {bundle.build_seconds:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "## loads (seconds)", "", "| arch | " + " | ".join(FORMATS) + " |", "|---" * (len(FORMATS) + 1) + "|"]
    for arch in done:
        cells = [f"{session.load_seconds[(arch, f)]:.1f}" + ("" if not isinstance(session.loaded.get((arch, f)), BaseException) else " (failed)") if (arch, f) in session.load_seconds else "-" for f in FORMATS]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    lines += ["", "## cells (status, seconds incl. the first load of the export)", "", "| arch | format | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 2) + "|"]
    failures = []
    for arch in names():
        for fmt in FORMATS:
            if not any((arch, fmt, t) in RESULTS for t in TASKS):
                continue
            row = []
            for task in TASKS:
                status, detail = RESULTS.get((arch, fmt, task), ("-", ""))
                row.append(f"{status} {TIMES.get((arch, fmt, task), 0.0):.1f}s" if status != "-" else "-")
                if status != "ok" and status != "-":
                    failures.append(f"- `{arch}` × `{fmt}` × `{task}` ({status}): {detail}")
            lines.append(f"| {arch} | {fmt} | " + " | ".join(row) + " |")
    counted = [s for s, _ in RESULTS.values()]
    lines += ["", f"{counted.count('ok')} ok, {counted.count('refused')} refused naming the op, {counted.count('FAIL')} failing, of {len(counted)} cells run; total {sum(TIMES.values()):.0f} s in cells", ""]
    lines += ["## not ok, first line of the error", "", *failures, ""]
    Path(target).write_text("\n".join(lines))
