"""ONNX files and ONNX bundles (the model and its external data in one zip): checked, run by the interpreter,
compared with onnxruntime."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from kernelscope import formats as content
from workers.archive import ArchiveListing, check_archive, is_zip
from workers.errors import BadOptions, ModelRejected, first_line
from workers.input_spec import InputSpec
from workers.loader.claim import _zip_kind
from workers.loader.header import _check_shape, _spec
from workers.model import LoadedModel


# ONNX check at load: max |interpreter - onnxruntime| must stay within ONNX_TOLERANCE * max(1, max |onnxruntime|),
# i.e. 1e-4 absolute for outputs of order one (logits), relative to the output scale beyond that.
ONNX_TOLERANCE = 1e-4
# Batch used for the onnxruntime comparison when the batch axis is dynamic.
ONNX_CHECK_BATCH = 2


def _load_onnx(path: Path, header: dict[str, Any], architecture: str) -> LoadedModel:
    import onnx

    from workers.onnx_interpreter import build_module

    data = _onnx_bytes(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError or RuntimeWarning-ish errors
        looks_onnx = data[:1] == b"\x08"
        raise ModelRejected(
            f"the file cannot be parsed as ONNX ({first_line(exc)})"
            + ("; it looks truncated, upload the complete file" if looks_onnx else "; is it really an .onnx file?"),
            reason="TRUNCATED" if looks_onnx else "WRONG_FORMAT",
        ) from exc
    if not model.graph.node and not model.graph.input:
        raise ModelRejected("the file parses as protobuf but holds no ONNX graph", reason="WRONG_FORMAT")
    _refuse_external_data(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError and friends
        raise ModelRejected(f"onnx.checker refused the model: {first_line(exc)}", reason="ONNX_INVALID") from exc
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelRejected(
            f"the ONNX graph takes {len(inputs)} inputs; kernelscope analyses models with one input", reason="MULTIPLE_INPUTS"
        )
    recorded, batch, dtype = _onnx_input(inputs[0])
    _check_shape(header, recorded, "ONNX graph")
    given = [int(s) for s in header.get("shape") or []]
    shape = tuple(given) if given else (tuple(recorded) if all(r is not None for r in recorded) else None)
    if shape is None:
        raise BadOptions(
            f"the ONNX input has symbolic non-batch dims {recorded}; give input_spec.shape in the upload",
            reason="INPUT_SPEC_INVALID",
        )
    spec = _spec(header, shape, dtype)  # type: ignore[arg-type]
    module = build_module(model).eval()
    state = {t.name: _onnx_tensor(t) for t in model.graph.initializer}
    diff, tolerance = _compare_with_onnxruntime(data, module, spec, batch, inputs[0].name)
    info = {
        "onnx_max_abs_diff": diff,
        "onnx_tolerance": tolerance,
        "onnx_opset": next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "fixed_batch": batch,
        "layer_kinds": {name: rec["kind"] for name, rec in module.layers.items()},
    }
    return LoadedModel(input_spec=spec, state_dict=state, module=module, info=info)


def _refuse_external_data(model: Any) -> None:
    """EXTERNAL_DATA for any tensor still kept in an external file: data is read only from inside the upload
    (an ONNX bundle's own entries, by _onnx_bytes), never from a path on the worker's disk."""
    for tensor in _external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise ModelRejected(
            f"ONNX tensor {tensor.name!r} keeps its data in an external file ({location!r}), which was not uploaded "
            "with the model: upload the data file with it (the kernelscope SDK and CLI do, given the .onnx path with "
            "its data file beside it: they send both as one ONNX bundle), or save the model with all weights inline "
            "(onnx.save(model, path, save_as_external_data=False), < 2 GB)",
            reason="EXTERNAL_DATA",
        )


def _external_tensors(message: Any) -> Iterator[Any]:
    """Every TensorProto inside `message` that keeps its data in an external file, wherever ONNX allows a tensor
    (initializers, sparse tensors, attributes whatever their declared type, subgraphs, functions, training info)."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        for item in value if field.is_repeated else (value,):
            if field.message_type.name != "TensorProto":
                yield from _external_tensors(item)
            elif item.external_data or item.data_location == item.EXTERNAL:
                yield item


def _onnx_bytes(path: Path) -> bytes:
    """The serialized ModelProto to load: the file itself, or an ONNX bundle's model with its data read in."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not is_zip(head):
        return path.read_bytes()
    return _inline_bundle(path, check_archive(path, "an ONNX bundle"))


def _inline_bundle(path: Path, listing: ArchiveListing) -> bytes:
    """An ONNX bundle's model (kernelscope.formats) with every external tensor's data read from the bundle's own entries.

    A location must be a plain relative name (no '..', no absolute path, no drive) that is a regular-file entry
    of the bundle, other than the model; a bundle holding a symbolic link is refused whole. Nothing is extracted
    and no path on disk is opened, so no reference reaches outside the upload (EXTERNAL_DATA_OUTSIDE_UPLOAD).
    """
    import onnx

    kind = _zip_kind(listing)
    if kind != "ONNX_BUNDLE":
        raise ModelRejected(
            f"uploaded as ONNX, but the file is {content.WORDS[kind]}; an ONNX bundle's first entry is its only "
            "top-level .onnx model, followed by its external data files",
            reason="WRONG_FORMAT",
        )
    model_entry = listing.names[0]
    with zipfile.ZipFile(path) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        links = sorted(name for name, info in infos.items() if stat.S_ISLNK(info.external_attr >> 16))
        if links:
            raise ModelRejected(
                f"the ONNX bundle holds symbolic links ({', '.join(links[:4])}), which may point outside the upload; "
                "external data must be regular files uploaded with the model",
                reason="EXTERNAL_DATA_OUTSIDE_UPLOAD",
            )
        raw = zf.read(model_entry)
        model = onnx.ModelProto()
        try:
            model.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - _load_onnx parses it again and says what is wrong
            return raw
        files = sorted(n for n in infos if n != model_entry and not n.endswith("/"))
        read: dict[str, bytes] = {}
        for tensor in list(_external_tensors(model)):
            entries = {e.key: e.value for e in tensor.external_data}
            location = entries.get("location", "")
            info = infos.get(location)
            if not content.is_plain_relative(location) or info is None or info.is_dir() or location == model_entry:
                raise ModelRejected(
                    f"ONNX tensor {tensor.name!r} keeps its data in {location!r}, which is not a file of this upload: "
                    f"external data is read only from the files uploaded with the model (this bundle holds "
                    f"{', '.join(files[:6]) or 'none'})",
                    reason="EXTERNAL_DATA_OUTSIDE_UPLOAD",
                )
            if location not in read:
                read[location] = zf.read(info)
            data = read[location]
            try:
                offset = int(entries.get("offset", "0"))
                end = len(data) if "length" not in entries else offset + int(entries["length"])
            except ValueError as exc:
                raise ModelRejected(
                    f"ONNX tensor {tensor.name!r} has a malformed external data offset or length", reason="ONNX_INVALID"
                ) from exc
            if not 0 <= offset <= end <= len(data):
                raise ModelRejected(
                    f"ONNX tensor {tensor.name!r} reads bytes {offset}..{end} of {location!r}, which has {len(data)}: "
                    "the data file is truncated",
                    reason="TRUNCATED",
                )
            tensor.raw_data = data[offset:end]
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    try:
        return model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages of 2 GB and more
        raise ModelRejected(
            f"the ONNX model is too large once its external data is read in ({first_line(exc)}); "
            "kernelscope loads ONNX models under 2 GB: export a torch.export .pt2 instead",
            reason="ARCHIVE_UNSAFE",
        ) from exc


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


def _onnx_input(value_info: Any) -> tuple[list[int | None], int | None, str]:
    tensor_type = value_info.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise ModelRejected(
            f"the ONNX input {value_info.name!r} has element type {tensor_type.elem_type}; a floating-point input is needed",
            reason="ONNX_INVALID",
        )
    dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
    if len(dims) < 2:
        raise ModelRejected(f"the ONNX input {value_info.name!r} has rank {len(dims)}; (N, C, ...) is needed", reason="ONNX_INVALID")
    return dims[1:], dims[0], dtype


def _onnx_tensor(proto: Any) -> torch.Tensor:
    from onnx import numpy_helper

    return torch.from_numpy(np.array(numpy_helper.to_array(proto), copy=True))


# Where the interpreter cannot run an ONNX file faithfully, the format kernelscope runs without translation.
_PT2_INSTEAD = (
    "; upload a torch.export program of the model instead (torch.export.save(torch.export.export(model.eval(), "
    "(example,)), 'model.pt2'), format TORCH_EXPORT)"
)


def _compare_with_onnxruntime(
    data: bytes, module: nn.Module, spec: InputSpec, batch: int | None, input_name: str
) -> tuple[float, float]:
    """Run both on one seeded random input; refuse (ONNX_MISMATCH) beyond ONNX_TOLERANCE of the output scale."""
    import onnxruntime as ort

    n = batch or ONNX_CHECK_BATCH
    generator = torch.Generator().manual_seed(0)
    x = spec.normalize(spec.random(n, generator=generator)).float()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        reference = session.run(None, {input_name: x.numpy()})
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own refusal
        raise ModelRejected(f"onnxruntime cannot run the model: {first_line(exc)}", reason="ONNX_INVALID") from exc
    try:
        with torch.no_grad():
            ours = module(x)
    except Exception as exc:  # noqa: BLE001 - an op the interpreter gets wrong is a refusal, not a crash
        raise ModelRejected(
            f"kernelscope's ONNX interpreter failed on the model: {first_line(exc)}{_PT2_INSTEAD}", reason="ONNX_MISMATCH"
        ) from exc
    ours_list = list(ours) if isinstance(ours, (tuple, list)) else [ours]
    worst, tolerance = 0.0, ONNX_TOLERANCE
    for index, (a, b) in enumerate(zip(ours_list, reference)):
        a_np = a.detach().cpu().numpy()
        b_np = np.asarray(b)
        if a_np.shape != b_np.shape:
            raise ModelRejected(
                f"output {index}: the interpreter gives shape {a_np.shape}, onnxruntime {b_np.shape}{_PT2_INSTEAD}", reason="ONNX_MISMATCH"
            )
        finite = np.isfinite(b_np)
        if not np.array_equal(finite, np.isfinite(a_np)):
            raise ModelRejected(f"output {index}: non-finite values differ from onnxruntime's{_PT2_INSTEAD}", reason="ONNX_MISMATCH")
        if not finite.any():
            continue
        scale = float(np.abs(b_np[finite]).max())
        diff = float(np.abs(a_np[finite].astype(np.float64) - b_np[finite].astype(np.float64)).max())
        tol = ONNX_TOLERANCE * max(1.0, scale)
        if diff > tol:
            raise ModelRejected(
                f"output {index}: kernelscope's interpreter and onnxruntime differ by up to {diff:.3g} "
                f"(tolerance {tol:.3g} = {ONNX_TOLERANCE:g} x max(1, output scale {scale:.3g})); the model is refused{_PT2_INSTEAD}",
                reason="ONNX_MISMATCH",
            )
        worst, tolerance = max(worst, diff), max(tolerance, tol)
    return worst, tolerance
